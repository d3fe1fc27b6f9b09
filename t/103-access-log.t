# The $llm_* variables in a JSON access log (log_format escape=json): a
# stream completed, one failed, a pipeline with a retried step, a
# background job, a client that leaves, a resume, a cancelled stream, a
# model whose name needs escaping, and a request outside the module.  Each
# line is read back from the log file and decoded as JSON.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep);
use IO::Socket::INET;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port http_get sse_events);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $port = free_port();
my $up = "http://127.0.0.1:$mock/v1/chat/completions";
my $run = $$;

my $judge = "$up?tps=0&ttft=0&tag=alog$run"
            . '&reply_1=%7B%22ok%22%3Afalse%7D&reply=%7B%22ok%22%3Atrue%7D';

my $root = start_nginx('alog', "daemon on;\nmaster_process off;", <<"HTTP");
    log_format llm escape=json '{"uri":"\$request_uri","status":"\$status",'
        '"job":"\$llm_job_id","model":"\$llm_model",'
        '"provider":"\$llm_provider","outcome":"\$llm_outcome",'
        '"tokens_in":"\$llm_tokens_in","tokens_out":"\$llm_tokens_out",'
        '"ttft":"\$llm_ttft","time":"\$llm_generation_time",'
        '"upstream_status":"\$llm_upstream_status",'
        '"attempts":"\$llm_attempts","steps":"\$llm_steps",'
        '"resumed":"\$llm_resumed"}';

    llm_prompt "hi";

    llm_pipeline judge {
        step j {
            pass   "$judge";
            prompt "judge";
            output json;
            check  ok = true attempts=3;
        }
    }

    llm_pipeline two {
        step a {
            pass   "$up?tps=0&ttft=0&reply=%7B%22ok%22%3Atrue%7D";
            prompt "a";
            output json;
        }
        step b {
            pass   "$up?status=503";
            prompt "b";
        }
    }

    server {
        listen 127.0.0.1:$port;
        access_log logs/llm.log llm;

        location = /g {
            llm_model m1;
            llm_pass  $up?tokens=5&tps=0&ttft=0;
        }
        location = /q {
            llm_model 'say "hi"\\\\';
            llm_provider anthropic;
            llm_pass  http://127.0.0.1:$mock/v1/messages?tokens=2&tps=0&ttft=0;
        }
        location = /fail {
            llm_model m3;
            llm_pass  $up?status=503;
        }
        location = /p {
            llm_model    m4;
            llm_pipeline judge;
        }
        location = /two {
            llm_model    m5;
            llm_pipeline two;
        }
        location = /slow {
            llm_model m2;
            llm_pass  $up?tokens=400&tps=20&ttft=0;
        }
        location = /cancel {
            llm_model         m2;
            llm_on_disconnect cancel;
            llm_pass          $up?tokens=400&tps=20&ttft=0;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_job \$id;
        }
        location = /plain {
            return 204;
        }
    }
HTTP

END { stop_nginx($root) if $root }

# the log's line for a request, once written
sub line_for {
    my ($uri) = @_;
    for (1 .. 100 * $slow) {
        if (open my $f, '<', "$root/logs/llm.log") {
            my @l = grep { /"uri":"\Q$uri\E"/ } <$f>;
            return decode_json($l[-1]) if @l;
        }
        sleep 0.05;
    }
    return {};
}

sub usage_of {
    my ($body) = @_;
    my @ev = sse_events($body);
    return (decode_json($ev[-1]{data})->{usage} // {}, @ev);
}

my $ms = qr/^\d+\.\d{3}$/;

# 1. a completed stream

my ($st, $h, $body) = http_get($port, 'GET', '/g?n=1');
my ($u, @ev) = usage_of($body);
my ($job) = $ev[0]{id} =~ /^([\w-]+):1$/;
my $l = line_for('/g?n=1');

is($l->{job}, $job, 'completed: the job id');
is($l->{outcome}, 'completed', 'completed: outcome');
is($l->{model}, 'm1', 'completed: model');
is($l->{provider}, 'openai', 'completed: provider');
is($l->{tokens_in}, "$u->{input_tokens}", 'completed: tokens in');
is($l->{tokens_out}, "$u->{output_tokens}", 'completed: tokens out');
like($l->{ttft}, $ms, 'completed: ttft in seconds, ms resolution');
like($l->{time}, $ms, 'completed: generation time');
cmp_ok($l->{ttft}, '<=', $l->{time}, 'the first token before the end');
is($l->{upstream_status}, '200', 'completed: upstream status');
is($l->{attempts}, '1', 'completed: one attempt');
is($l->{steps}, '', 'completed: no steps (not a pipeline)');
is($l->{resumed}, '0', 'completed: not resumed');

# 2. a model name that needs escaping, another provider

($st, $h, $body) = http_get($port, 'GET', '/q');
$l = line_for('/q');
is($l->{model}, 'say "hi"\\', 'escape=json: the model name comes back whole');
is($l->{provider}, 'anthropic', 'the anthropic provider');
is($l->{outcome}, 'completed', 'and it completed');

# 3. a failed stream

($st, $h, $body) = http_get($port, 'GET', '/fail');
$l = line_for('/fail');
is($l->{outcome}, 'failed:upstream_status', 'failed: outcome with its code');
is($l->{upstream_status}, '503', 'failed: upstream status');
is($l->{tokens_out}, '', 'failed: no token count');
is($l->{ttft}, '', 'failed: no first token');

# 4. a pipeline whose step passed its check at the second attempt

($st, $h, $body) = http_get($port, 'GET', '/p');
$l = line_for('/p');
is($l->{outcome}, 'completed', 'pipeline: completed');
is($l->{attempts}, '2', 'pipeline: two upstream requests');
is($l->{steps}, '1', 'pipeline: one step');
is($l->{model}, 'm4', 'pipeline: the location\'s model');

# a pipeline that fails in its second step

($st, $h, $body) = http_get($port, 'GET', '/two');
$l = line_for('/two');
like($l->{outcome}, qr/^failed:\w+$/, 'pipeline failed: failed:CODE');
is($l->{steps}, '2', 'pipeline failed: in its second step');
is($l->{attempts}, '2', 'pipeline failed: two upstream requests');

# 5. a background job: accepted, its id

($st, $h, $body) = http_get($port, 'POST', '/slow?bg=1',
                            headers => { Prefer => 'respond-async' });
my $bg = decode_json($body)->{job};
$l = line_for('/slow?bg=1');
is($l->{status}, '202', 'background: 202');
is($l->{outcome}, 'accepted', 'background: accepted');
is($l->{job}, $bg, 'background: the job id');
is($l->{tokens_out}, '', 'background: no tokens yet');
http_get($port, 'DELETE', "/jobs/$bg");
$l = line_for("/jobs/$bg");
is($l->{job}, $bg, 'DELETE: the job id');
is($l->{outcome}, '', 'DELETE: no outcome of its own');
is($l->{provider}, '', 'DELETE: no provider');

# 6. a client that leaves a running stream

($st, $h, $body) = http_get($port, 'GET', '/cancel?left=1',
                            until => qr/event: delta\n/);
$l = line_for('/cancel?left=1');
is($l->{outcome}, 'disconnected', 'the client left: disconnected');
like($l->{ttft}, $ms, 'it had its first token');
is($l->{attempts}, '1', 'its upstream request');
like($l->{time}, $ms, 'and a time so far');

# 7. a resumed stream

($st, $h, $body) = http_get($port, 'GET', '/g?resume=1',
                            headers => { 'Last-Event-ID' => "$job:1" });
$l = line_for('/g?resume=1');
is($l->{resumed}, '1', 'resume: resumed');
is($l->{job}, $job, 'resume: the job followed');
is($l->{outcome}, 'completed', 'resume: the job\'s outcome');

# 8. a stream cancelled while it runs: read, DELETE, read to the end

my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
syswrite($c, "GET /slow?c=1 HTTP/1.0\r\nHost: localhost\r\n\r\n");

my $got = '';
while ($got !~ /event: delta\n/) {
    sysread($c, my $buf, 65536) or last;
    $got .= $buf;
}

my ($cjob) = $got =~ /^id: ([\w-]+):1$/m;
http_get($port, 'DELETE', "/jobs/$cjob");

while (sysread($c, my $buf, 65536)) {
    $got .= $buf;
}
close $c;

like($got, qr/"code":"cancelled"/, 'the stream ends cancelled');
$l = line_for('/slow?c=1');
is($l->{outcome}, 'cancelled', 'cancelled: outcome');

# 9. a request outside the module

http_get($port, 'GET', '/plain');
$l = line_for('/plain');
is($l->{job}, '', 'outside the module: no job');
is($l->{outcome}, '', 'outside the module: no outcome');
is($l->{model}, '', 'outside the module: no model');

done_testing();
