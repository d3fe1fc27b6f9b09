# llm_metrics: a scripted workload whose counts are known exactly, on two
# workers, then the exposition read by the Prometheus client's own parser
# (python3-prometheus-client): it must accept the whole text, every
# worker must answer the same totals, and each count must be the
# workload's.  Streams completed and failed, a pipeline step retried after
# a failed check, a cancel, a resume, a client that leaves under
# llm_on_disconnect cancel, and more models than the table has labels for.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep);
use File::Temp qw(tempfile);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx nginx_pid free_port http_get
                       sse_events);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;
# Debian's python3 has the package; a python3 earlier in PATH may not
my ($python) = grep {
    system("$_ -c 'import prometheus_client' 2>/dev/null") == 0
} 'python3', '/usr/bin/python3';

plan skip_all => 'python3-prometheus-client is needed' unless $python;

my $port = free_port();
my $up = "http://127.0.0.1:$mock/v1/chat/completions";
my $run = $$;

# the first answer of the judge fails its check, the second passes
my $judge = "$up?tps=0&ttft=0&tag=judge$run"
            . '&reply_1=%7B%22ok%22%3Afalse%7D&reply=%7B%22ok%22%3Atrue%7D';

# reuseport: the kernel spreads the connections over both workers
my $root = start_nginx('metrics',
                       "daemon on;\nmaster_process on;\nworker_processes 2;",
                       <<"HTTP");
    llm_prompt "hi";

    llm_limit_jobs_zone \$arg_u zone=lim:1m;

    llm_pipeline judge {
        step j {
            pass   "$judge";
            prompt "judge";
            output json;
            check  ok = true attempts=3;
        }
    }

    server {
        listen 127.0.0.1:$port reuseport;
        add_header X-Worker \$pid always;

        location = /g {
            llm_model m1;
            llm_pass  $up?tokens=5&tps=0&ttft=0;
        }
        location = /fail {
            llm_model m3;
            llm_pass  $up?status=503;
        }
        location = /cut {
            llm_model m3;
            llm_pass  $up?mode=cut&after=2&tps=0&ttft=0;
        }
        location = /p {
            llm_model    m4;
            llm_pipeline judge;
        }
        location = /slow {
            llm_model         m2;
            llm_metrics_label "slow \\"one\\"";
            llm_pass          $up?tokens=400&tps=20&ttft=0;
        }
        location = /lim {
            llm_model      m2;
            llm_limit_jobs lim 1;
            llm_pass       $up?tokens=400&tps=20&ttft=0;
        }
        location = /cancel {
            llm_model         m2;
            llm_on_disconnect cancel;
            llm_pass          $up?tokens=400&tps=20&ttft=0;
        }
        location = /any {
            llm_model \$arg_m;
            llm_pass  $up?tokens=3&tps=0&ttft=0;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_metrics_label jobs;
            llm_job \$id;
        }
        location = /metrics {
            llm_metrics;
        }
    }
HTTP

END { stop_nginx($root) if $root }

sub complete_usage {
    my ($body) = @_;
    my @ev = sse_events($body);
    return undef unless @ev && $ev[-1]{event} eq 'complete';
    return decode_json($ev[-1]{data})->{usage};
}

sub worker_of {
    my ($head) = @_;
    my ($w) = $head =~ /^X-Worker: (\d+)/mi;
    return $w // 0;
}

# samples as "name{k="v",...}" => value, through the real parser
sub parse_metrics {
    my ($text) = @_;
    my ($fh, $file) = tempfile(UNLINK => 1);
    print $fh $text;
    close $fh;

    my $py = <<'PY';
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"families": {}, "samples": []}
for f in text_string_to_metric_families(open(sys.argv[1]).read()):
    out["families"][f.name] = f.type
    for s in f.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
PY

    my $json = `$python -c '$py' '$file' 2>&1`;
    return undef if $?;

    my $r = decode_json($json);
    my %v;

    for my $s (@{ $r->{samples} }) {
        my ($name, $labels, $value) = @$s;
        my $l = join ',', map { "$_=\"$labels->{$_}\"" } sort keys %$labels;
        $v{$l ? "$name\{$l}" : $name} = $value;
    }

    return { families => $r->{families}, v => \%v };
}

sub scrape {
    my ($st, $h, $body) = http_get($port, 'GET', '/metrics');
    return ($st, $h, $body, worker_of($h));
}

# 1. streams completed, on both workers

my (%workers, $n_ok, $out_m1, $in_m1);
$n_ok = 0;
$out_m1 = 0;
$in_m1 = 0;

while ($n_ok < 6 || (keys %workers < 2 && $n_ok < 60)) {
    my ($st, $h, $body) = http_get($port, 'GET', '/g');
    my $u = complete_usage($body);
    fail("stream $n_ok completes") unless $u;
    $workers{ worker_of($h) }++;
    $n_ok++;
    $out_m1 += $u->{output_tokens} // 0;
    $in_m1 += $u->{input_tokens} // 0;
}

is(scalar keys %workers, 2, "the streams ran on both workers ($n_ok)");

# 2. streams that fail with upstream_status

my ($st, $h, $body, @ev);

for (1 .. 3) {
    ($st, $h, $body) = http_get($port, 'GET', '/fail');
    @ev = sse_events($body);
    like($ev[-1]{data} // '', qr/"code":"upstream_status"/,
         "failed stream $_: upstream_status");
}

# and one that the upstream cuts short

($st, $h, $body) = http_get($port, 'GET', '/cut');
@ev = sse_events($body);
like($ev[-1]{data} // '', qr/"code":"upstream_truncated"/,
     'a stream cut short: upstream_truncated');

# 3. a pipeline whose step passes its check at the second attempt

($st, $h, $body) = http_get($port, 'GET', '/p');
my $u_p = complete_usage($body);
ok($u_p, 'the pipeline completes');

# 4. a background job cancelled with DELETE

($st, $h, $body) = http_get($port, 'POST', '/slow',
                            headers => { Prefer => 'respond-async' });
is($st, 202, 'a background job');
my $bg = decode_json($body)->{job};

($st) = http_get($port, 'DELETE', "/jobs/$bg");
like($st, qr/^20[02]$/, 'DELETE accepted');

my $state = '';
for (1 .. 100) {
    ($st, $h, $body) = http_get($port, 'GET', "/jobs/$bg");
    $state = decode_json($body)->{state};
    last if $state ne 'running';
    sleep 0.1;
}
is($state, 'cancelled', 'the background job is cancelled');

# a second job over llm_limit_jobs: refused, then the first cancelled

($st, $h, $body) = http_get($port, 'POST', "/lim?u=a$run",
                            headers => { Prefer => 'respond-async' });
is($st, 202, 'a job that holds the limit');
my $held = decode_json($body)->{job};

($st) = http_get($port, 'GET', "/lim?u=a$run");
is($st, 429, 'the next one is refused');

http_get($port, 'DELETE', "/jobs/$held");

for (1 .. 100) {
    ($st, $h, $body) = http_get($port, 'GET', "/jobs/$held");
    last if decode_json($body)->{state} ne 'running';
    sleep 0.1;
}

# 5. a resume: a stream that follows a finished job from its first event

($st, $h, $body) = http_get($port, 'GET', '/g');
@ev = sse_events($body);
my ($job) = $ev[0]{id} =~ /^([\w-]+):1$/;
$out_m1 += complete_usage($body)->{output_tokens};
$in_m1 += complete_usage($body)->{input_tokens};
$n_ok++;

($st, $h, $body) = http_get($port, 'GET', '/g',
                            headers => { 'Last-Event-ID' => "$job:1" });
@ev = sse_events($body);
my ($seq) = ($ev[0]{id} // '') =~ /^\Q$job\E:(\d+)$/;
cmp_ok($seq // 0, '>', 1, 'the resumed stream goes on after event 1');
is($ev[-1]{event}, 'complete', 'to the end of the job');

# 6. a client that leaves a running stream: llm_on_disconnect cancel

($st, $h, $body) = http_get($port, 'GET', '/cancel',
                            until => qr/event: delta\n/);
like($body, qr/event: delta/, 'the stream has started when the client goes');

# 7. more models than slots: the first 31 named, the rest "other"

my (%out_x, $out_other);

# a model named "other" is counted as "other", not as a second series
($st, $h, $body) = http_get($port, 'GET', '/any?m=other');
$out_other = complete_usage($body)->{output_tokens};

for my $i (1 .. 33) {
    ($st, $h, $body) = http_get($port, 'GET', "/any?m=x$i");
    my $u = complete_usage($body);
    fail("model x$i completes") unless $u;
    $out_x{"x$i"} = $u->{output_tokens};
}

# m1, m3, m4 and m2 came first: x1 .. x27 get the other 27 named slots
$out_other += $out_x{"x$_"} for 28 .. 33;

# the job of step 6 ends when its worker sees the client gone

my $m;
for (1 .. 100) {
    my ($s, $hh, $text) = scrape();
    $m = parse_metrics($text);
    last if $m && $m->{v}{'llm_jobs_running{location="/cancel"}'} == 0
            && $m->{v}{'llm_streams_open'} == 0;
    sleep 0.1;
}

# every worker answers, the same totals, in a text the parser accepts

my (%by_worker, $ctype, $accepted);
$accepted = 1;

for (1 .. 60) {
    my ($s, $hh, $text, $w) = scrape();
    ($ctype) = $hh =~ /^Content-Type: (.*?)\r?$/mi;
    my $p = parse_metrics($text);
    $accepted = 0 unless $p;
    $by_worker{$w} //= $p;
    last if keys %by_worker >= 2;
}

ok($accepted, 'the Prometheus parser accepts every scrape');
is($ctype, 'text/plain; version=0.0.4', 'Content-Type of format 0.0.4');
is(scalar keys %by_worker, 2, 'both workers answered /metrics');

my @w = values %by_worker;
is_deeply($w[0]{v}, $w[1]{v}, 'both workers give the same totals');

$m = $w[0];
my $v = $m->{v};

my %types = (
    llm_streams_open => 'gauge',
    llm_jobs_running => 'gauge',
    llm_jobs => 'counter',
    llm_time_to_first_token_seconds => 'histogram',
    llm_job_duration_seconds => 'histogram',
    llm_input_tokens => 'counter',
    llm_output_tokens => 'counter',
    llm_upstream_failures => 'counter',
    llm_pipeline_step_attempts => 'counter',
    llm_pipeline_retries => 'counter',
    llm_pipeline_check_failures => 'counter',
    llm_resumes => 'counter',
    llm_cancels => 'counter',
    llm_client_disconnects => 'counter',
    llm_disconnect_cancels => 'counter',
    llm_store_writes => 'counter',
    llm_store_write_failures => 'counter',
    llm_store_flushes => 'counter',
    llm_store_flush_seconds => 'histogram',
    llm_store_orphans => 'counter',
    llm_limit_refusals => 'counter',
);

for my $f (sort keys %types) {
    is($m->{families}{$f}, $types{$f}, "family $f is a $types{$f}");
}

my %want = (
    'llm_streams_open' => 0,
    'llm_jobs_total{location="/g",state="completed"}' => $n_ok,
    'llm_jobs_total{location="/g",state="failed"}' => 0,
    'llm_jobs_total{location="/fail",state="failed"}' => 3,
    'llm_jobs_total{location="/fail",state="completed"}' => 0,
    'llm_jobs_total{location="judge",state="completed"}' => 1,
    'llm_jobs_total{location="slow "one"",state="cancelled"}' => 1,
    'llm_jobs_total{location="/cancel",state="cancelled"}' => 1,
    'llm_jobs_total{location="/any",state="completed"}' => 34,
    'llm_jobs_running{location="/g"}' => 0,
    'llm_jobs_running{location="slow "one""}' => 0,
    'llm_jobs_running{location="/cancel"}' => 0,
    'llm_time_to_first_token_seconds_count{location="/g"}' => $n_ok,
    'llm_time_to_first_token_seconds_bucket{le="+Inf",location="/g"}' => $n_ok,
    'llm_time_to_first_token_seconds_count{location="/fail"}' => 0,
    'llm_job_duration_seconds_count{location="/g"}' => $n_ok,
    'llm_job_duration_seconds_count{location="/fail"}' => 3,
    'llm_job_duration_seconds_count{location="judge"}' => 1,
    'llm_upstream_failures_total{code="upstream_status"}' => 3,
    'llm_upstream_failures_total{code="upstream_truncated"}' => 1,
    'llm_jobs_total{location="/cut",state="failed"}' => 1,
    'llm_upstream_failures_total{code="other"}' => 0,
    'llm_pipeline_step_attempts_total{location="judge"}' => 2,
    'llm_pipeline_retries_total{location="judge"}' => 1,
    'llm_pipeline_check_failures_total{location="judge"}' => 1,
    'llm_pipeline_step_attempts_total{location="/g"}' => 0,
    'llm_resumes_total' => 1,
    'llm_cancels_total' => 2,
    'llm_client_disconnects_total' => 1,
    'llm_disconnect_cancels_total' => 1,
    'llm_output_tokens_total{model="m1"}' => $out_m1,
    'llm_input_tokens_total{model="m1"}' => $in_m1,
    'llm_output_tokens_total{model="m4"}' => $u_p->{output_tokens},
    'llm_output_tokens_total{model="x1"}' => $out_x{x1},
    'llm_output_tokens_total{model="x27"}' => $out_x{x27},
    'llm_output_tokens_total{model="other"}' => $out_other,
    'llm_store_write_failures_total{store="memory"}' => 0,
    'llm_store_writes_total{store="redis"}' => 0,
    'llm_store_orphans_total' => 0,
    'llm_limit_refusals_total{location="/g"}' => 0,
    'llm_limit_refusals_total{location="/lim"}' => 1,
    'llm_jobs_total{location="/lim",state="cancelled"}' => 1,
);

for my $k (sort keys %want) {
    is($v->{$k}, $want{$k}, $k);
}

my @models = grep { /^llm_output_tokens_total\{/ } keys %$v;
is(scalar @models, 32, '31 models named, the rest as "other"');
ok(!exists $v->{'llm_output_tokens_total{model="x28"}'},
   'no label past the bound');
cmp_ok($v->{'llm_store_writes_total{store="memory"}'}, '>', 0,
       'the memory store counted its writes');

# a histogram's buckets are cumulative and end with the count

my @b = map { $v->{"llm_job_duration_seconds_bucket{le=\"$_\",location=\"/g\"}"} }
        qw(0.1 0.5 1 2.5 5 10 30 60 120 300 600 1800 +Inf);
my $mono = 1;
for (1 .. $#b) { $mono = 0 unless defined $b[$_] && $b[$_] >= $b[$_ - 1] }
ok($mono, 'duration buckets are cumulative');

# 8. a reload with the same configuration keeps the zone and its counts

my %old = %by_worker;
kill 'HUP', nginx_pid($root);

my $after;
for (1 .. 100) {
    my ($s, $hh, $text, $w) = scrape();
    if ($w && !exists $old{$w}) {
        $after = parse_metrics($text);
        last;
    }
    sleep 0.1;
}

ok($after, 'a new worker answers after the reload');
is($after->{v}{'llm_jobs_total{location="/g",state="completed"}'}, $n_ok,
   'the counts are kept over the reload');
is($after->{v}{'llm_output_tokens_total{model="m1"}'}, $out_m1,
   'and the models keep their slots');

done_testing();
