# What another nginx instance sharing Redis sees at once: a job looked up
# there right after it started (before a batched write could have reached
# Redis) is found, not 404; a stream's final event goes out when Redis has
# it, so that a GET there right after says the job is over, and a failed
# pipeline can be continued there at once.  An unknown id is still 404.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events start_redis stop_redis);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $rport = free_port();
my $redis_pid = eval { start_redis($rport) };

plan skip_all => 'redis-server cannot start' unless $redis_pid;

END { local $?; stop_redis($redis_pid) }

my $up = "http://127.0.0.1:$mock/v1/chat/completions?tps=0&ttft=0";
my $run = "w$$";

# flush=300ms: a batched write would leave a wide window
sub http {
    my ($port) = @_;
    return <<"HTTP";
    llm_store redis://127.0.0.1:$rport ttl=10m prefix=t063: flush=300ms;

    llm_pipeline two {
        step first {
            pass   "$up&reply=one";
            prompt "one";
            stream on;
        }
        step second {
            pass   "$up&tag=$run&status_1=500&reply=two";
            prompt "two";
            stream on;
        }
    }

    server {
        listen 127.0.0.1:$port;

        location = /generate {
            llm_pass   "$up&tokens=5";
            llm_model  m;
            llm_prompt "hi";
        }
        location = /two {
            llm_model    m;
            llm_pipeline two;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_model m;
            llm_job   \$id;
        }
        location = /mine {
            llm_pass      "$up&tokens=400&tps=20";
            llm_model     m;
            llm_prompt    "hi";
            llm_job_owner \$http_x_owner;
        }
        location ~ ^/myjobs/(?<id>[\\w-]+)\$ {
            llm_job_owner \$http_x_owner;
            llm_job       \$id;
        }
    }
HTTP
}

my $main = "daemon on;\nmaster_process on;\nworker_processes 1;";
my ($pa, $pb) = (free_port(), free_port());
my $ra = start_nginx('window_a', $main, http($pa));
my $rb = start_nginx('window_b', $main, http($pb));

my $json = { Accept => 'application/json' };

# looked up on B as soon as A answers 202

my @missing;
for (1 .. 30) {
    my (undef, undef, $b) = http_get($pa, 'POST', '/generate',
                                     headers => { Prefer => 'respond-async' });
    my $job = (eval { decode_json($b) } || {})->{job} // '';
    my ($s) = http_get($pb, 'GET', "/jobs/$job", headers => $json);
    push @missing, "$job: $s" unless $s == 200;
}
is("@missing", '', 'a job started on A is found on B at once (30 of 30)');

# the final event on A, then a GET on B

my @running;
for (1 .. 10) {
    my (undef, undef, $b) = http_get($pa, 'GET', '/generate');
    my @ev = sse_events($b);
    my ($job) = ($ev[0]{id} // '') =~ /^([\w-]+):/;
    my (undef, undef, $j) = http_get($pb, 'GET', "/jobs/$job",
                                     headers => $json);
    my $state = (eval { decode_json($j) } || {})->{state} // '';
    push @running, "$job: $state" unless $state eq 'completed'
                                         && $ev[-1]{event} eq 'complete';
}
is("@running", '', 'after the final event on A, B says completed (10 of 10)');

# a pipeline that failed on A, continued on B at once

my (undef, undef, $b) = http_get($pa, 'GET', '/two');
my @ev = sse_events($b);
my ($job) = ($ev[0]{id} // '') =~ /^([\w-]+):/;
is($ev[-1]{event}, 'error', 'a pipeline fails on A');

my ($s, undef, $c) = http_get($pb, 'POST', "/jobs/$job");
@ev = sse_events($c);
is($s, 200, 'B continues it at once');
is($ev[-1]{event}, 'complete', 'to the end');

# an unknown id: still not found

($s, undef, $c) = http_get($pb, 'GET', '/jobs/AAAAAAAAAAAAAAAAAAAAAA',
                           headers => $json);
is($s, 404, 'an unknown job is 404 on B');
like($c, qr/"code":"job_not_found"/, 'job_not_found');

# another's job is as unknown, and as late: asked of Redis twice, the
# second time after the window (the time of a 404 does not tell)

sub hgetall_calls {
    my ($out) = `redis-cli -p $rport INFO commandstats` =~ /^cmdstat_hgetall:calls=(\d+)/m;
    return $out // 0;
}

my (undef, undef, $mb) = http_get($pa, 'POST', '/mine',
                                  headers => { Prefer => 'respond-async',
                                               'X-Owner' => 'alice' });
my $mine = (eval { decode_json($mb) } || {})->{job} // '';
my ($ms) = http_get($pb, 'GET', "/myjobs/$mine",
                    headers => { %$json, 'X-Owner' => 'alice' });
is($ms, 200, 'its owner reads the job on B');

my $calls = hgetall_calls();
($ms, undef, $c) = http_get($pb, 'GET', "/myjobs/$mine",
                            headers => { %$json, 'X-Owner' => 'bob' });
is($ms, 404, 'another owner gets 404');
is(hgetall_calls() - $calls, 2, '  after asking Redis twice');

$calls = hgetall_calls();
($ms) = http_get($pb, 'GET', '/myjobs/AAAAAAAAAAAAAAAAAAAAAA',
                 headers => { %$json, 'X-Owner' => 'bob' });
is($ms, 404, 'an unknown job: 404');
is(hgetall_calls() - $calls, 2, '  after asking Redis twice too');
http_get($pa, 'DELETE', "/myjobs/$mine", headers => { 'X-Owner' => 'alice' });

unlike(error_log($ra) . error_log($rb), qr/\[(?:alert|crit|emerg)\]/,
       'no alerts');

stop_nginx($ra);
stop_nginx($rb);

done_testing();
