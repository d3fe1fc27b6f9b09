# Jobs outlive their connection: resume with Last-Event-ID (header or
# argument) exactly once and in order, from the same or another worker;
# unknown ids; the disconnect policies.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $port = free_port();
my $up = "http://127.0.0.1:$mock/v1/chat/completions";

my $root = start_nginx('resume',
                       "daemon on;\nmaster_process on;\nworker_processes 2;\n"
                       . "worker_shutdown_timeout 1s;",
                       <<"HTTP");
    server {
        listen 127.0.0.1:$port;
        add_header X-Worker \$pid always;

        location = /g {
            llm_pass   $up?tokens=20&tps=20&ttft=0&tag=\$arg_tag;
            llm_model  m;
            llm_prompt "hi";
        }
        location = /cancel {
            llm_on_disconnect cancel;
            llm_pass   $up?tokens=40&tps=20&ttft=0&tag=\$arg_tag;
            llm_model  m;
            llm_prompt "hi";
        }
        location = /grace {
            llm_on_disconnect continue 1s;
            llm_pass   $up?tokens=100&tps=20&ttft=0&tag=\$arg_tag;
            llm_model  m;
            llm_prompt "hi";
        }
    }
HTTP

sub text_of {
    my @ev = @_;
    return join '', map { decode_json($_->{data})->{text} }
                    grep { $_->{event} eq 'delta' } @ev;
}

my $run = $$;

sub stats {
    my ($tag) = @_;
    $tag .= $run;
    return decode_json(`curl -s 'http://127.0.0.1:$mock/stats?tag=$tag'`);
}

# 1. cut after the third event, resume with the header

my ($st, $h, $body) = http_get($port, 'GET', "/g?tag=r1$run",
                               until => qr/:3\nevent: delta\n.*\n\n/);
my @first = sse_events($body);
my ($job) = $first[0]{id} =~ /^([\w-]+):1$/;

ok($job, 'a job id in the first event');
is(scalar @first, 3, 'three events before the cut');

($st, $h, $body) = http_get($port, 'GET', '/g',
                            headers => { 'Last-Event-ID' => "$job:3" });
my @rest = sse_events($body);

is($st, 200, 'resume: 200');
my ($first_seq) = $rest[0]{id} =~ /^\Q$job\E:(\d+)$/;
cmp_ok($first_seq // 0, '>', 3, 'resume starts after the last event seen');
is($rest[-1]{event}, 'complete', 'and follows the job to its end');

my %seen;
my $dups = grep { $seen{$_->{id}}++ } @first, @rest;
is($dups, 0, 'no event twice');

my @seq = map { (split /:/, $_->{id})[1] } @first, @rest;
my $ordered = 1;
for (1 .. $#seq) { $ordered = 0 if $seq[$_] <= $seq[$_ - 1] }
ok($ordered, 'events in order (missed deltas may come merged)');

my $complete = decode_json($rest[-1]{data});
is(text_of(@first, @rest), $complete->{text},
   'the deltas of both connections make the full text');

is(stats('r1')->{streams_started}, 1, 'one upstream generation only');

# 2. the same with the argument, for clients that cannot set headers

($st, $h, $body) = http_get($port, 'GET', "/g?last_event_id=$job%3A2");
@rest = sse_events($body);
is(text_of(@first[0 .. 1], @rest), $complete->{text},
   'last_event_id argument: exactly the text after event 2');

# 3. a finished job replays from anywhere, on any worker

my %workers;
for (1 .. 20) {
    ($st, $h, $body) = http_get($port, 'GET', "/g?last_event_id=$job:0");
    my ($w) = $h =~ /^X-Worker: (\d+)/mi;
    $workers{$w}++ if $w;
    my @all = sse_events($body);
    fail("replay $_") unless @all && $all[-1]{event} eq 'complete'
                          && $all[0]{id} eq "$job:1";
}
ok(keys %workers >= 1, 'replays served (workers: '
                       . join(',', keys %workers) . ')');

# 4. a running job followed live from the other worker

($st, $h, $body) = http_get($port, 'GET', "/g?tag=r4$run",
                            until => qr/:2\nevent: delta\n.*\n\n/);
my ($job4) = (sse_events($body))[0]{id} =~ /^([\w-]+):/;
my ($origin) = $h =~ /^X-Worker: (\d+)/mi;

my ($other, @live);
for (1 .. 40) {
    my ($s2, $h2, $b2) = http_get($port, 'GET', '/g',
                                  headers => { 'Last-Event-ID' => "$job4:2" });
    my ($w) = $h2 =~ /^X-Worker: (\d+)/mi;
    if ($w && $w ne $origin) {
        $other = $w;
        @live = sse_events($b2);
        last;
    }
}

SKIP: {
    skip 'no connection reached the other worker', 3 unless $other;

    is($live[-1]{event}, 'complete', 'the other worker follows the job');
    my @head = sse_events($body);
    is(text_of(@head[0 .. 1], @live), decode_json($live[-1]{data})->{text},
       'exactly the text after the resumed event');
    unlike($live[0]{id}, qr/:[12]$/, 'nothing seen before is sent again');
}

# 5. unknown and malformed ids are refused before any stream

($st, $h, $body) = http_get($port, 'GET', '/g',
                    headers => { 'Last-Event-ID' => 'AAAAAAAAAAAAAAAAAAAAAA:3' });
is($st, 404, 'unknown job: 404');
like($body, qr/"code":"job_not_found"/, 'job_not_found');
like($h, qr{^Content-Type: application/json}mi, 'as JSON');

($st, $h, $body) = http_get($port, 'GET', '/g',
                            headers => { 'Last-Event-ID' => 'nonsense' });
is($st, 400, 'malformed Last-Event-ID: 400');

# 6. llm_on_disconnect cancel: the upstream goes at once

http_get($port, 'GET', "/cancel?tag=d1$run", until => qr/event: delta/);
sleep 0.5;
is(stats('d1')->{streams_aborted}, 1, 'cancel: upstream dropped at once');

# 7. continue 1s: the job outlives the client, a resume within the grace
#    period picks it up, and nobody coming back cancels it

($st, $h, $body) = http_get($port, 'GET', "/grace?tag=d2$run",
                            until => qr/:2\nevent: delta\n.*\n\n/);
my ($job7) = (sse_events($body))[0]{id} =~ /^([\w-]+):/;
sleep 0.3;
is(stats('d2')->{active}, 1, 'continue: the upstream keeps going');

my ($s7, $h7, $b7) = http_get($port, 'GET', '/grace',
                              headers => { 'Last-Event-ID' => "$job7:2" },
                              until => qr/(?:event: delta\n.*?){2}/s);
my @ev7 = sse_events($b7);
like($ev7[0]{id} // '', qr/^\Q$job7\E:([3-9]|\d\d)$/,
     'resumed within the grace period');

# it would run for 5 s: wait until it is over one way or the other
for (1 .. 80) {
    last if stats('d2')->{active} == 0;
    sleep 0.1;
}
is(stats('d2')->{streams_aborted}, 1,
   'nobody came back: cancelled after the grace period');
is(stats('d2')->{streams_started}, 1, 'never generated twice');

stop_nginx($root);

unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();
