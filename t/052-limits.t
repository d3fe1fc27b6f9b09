# Caps on jobs.  llm_limit_jobs: running jobs per key (a location with limits of its own
# does not inherit the server's, as with limit_conn), counted by every worker of the
# instance, from the job's start to its end (a background job, a stream
# whose client left during the grace period), refused before any stream
# with 429, Retry-After and a JSON error; slots come back when a job
# completes or is cancelled; an empty key is not counted; a continued
# pipeline counts like a new job.  llm_max_duration: a job that runs
# longer fails with max_duration, keeping its text.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events wait_for request_on);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $up = "http://127.0.0.1:$mock/v1/chat/completions";
my $port = free_port();

my $root = start_nginx('limits',
                       "daemon on;\nmaster_process on;\nworker_processes 2;",
                       <<"HTTP");
    llm_limit_jobs_zone \$arg_user zone=peruser:1m;
    llm_limit_jobs_zone \$arg_team zone=perteam:1m;

    llm_pipeline once {
        step only {
            pass   "$up?tps=0&ttft=0&status_1=500&reply=ok&tag=lim$$";
            prompt "hi";
        }
    }

    server {
        listen 127.0.0.1:$port reuseport;
        add_header X-Worker \$pid always;

        llm_limit_jobs peruser 2;

        location = /whoami {
            return 200 "\$pid\\n";
        }
        location = /slow {
            llm_pass          "$up?tokens=400&tps=20&ttft=0";
            llm_model         m;
            llm_prompt        "hi";
            llm_on_disconnect continue 1s;
            llm_limit_jobs    peruser 2;
            llm_limit_jobs    perteam 3 retry_after=2s;
        }
        location = /fast {
            llm_pass   "$up?tps=0&ttft=0&reply=done";
            llm_model  m;
            llm_prompt "hi";
        }
        location = /capped {
            llm_pass         "$up?tokens=400&tps=20&ttft=0";
            llm_model        m;
            llm_prompt       "hi";
            llm_max_duration 1s;
        }
        location = /once {
            llm_model    m;
            llm_pipeline once;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_model m;
            llm_job   \$id;
        }
    }
HTTP

sub async {
    my ($uri) = @_;
    my ($s, $h, $b) = http_get($port, 'POST', $uri,
                               headers => { Prefer => 'respond-async' });
    my ($w) = $h =~ /^X-Worker: (\d+)/mi;
    return ($s, (eval { decode_json($b) } || {})->{job}, $w, $h, $b);
}

sub state_of {
    my ($job) = @_;
    my (undef, undef, $b) = http_get($port, 'GET', "/jobs/$job",
                                     headers => { Accept => 'application/json' });
    return (eval { decode_json($b) } || {})->{state} // '';
}

# two running jobs for user a; the third is refused on the other worker

my ($s1, $j1, $w1) = async('/slow?user=a');
my ($s2, $j2) = async('/slow?user=a');
is("$s1 $s2", '202 202', 'two background jobs of user a run');

my ($s3, $h3, $b3) = request_on($port, 'POST', '/slow?user=a',
                                sub { $_[0] != $w1 },
                                { Prefer => 'respond-async' });
is($s3, 429, 'a third, on the other worker: 429');
like($h3, qr/^Retry-After: 5\r?$/mi, 'with Retry-After (5 s by default)');
like($b3, qr/"code":"too_many_jobs"/, 'and the JSON error too_many_jobs');

my ($s, $jb) = async('/slow?user=b');
is($s, 202, 'user b is not limited by user a');

($s, my $je) = async('/slow');
is($s, 202, 'an empty key is not counted');

# a slot comes back when a job is cancelled, or completes

http_get($port, 'DELETE', "/jobs/$j1");
ok(wait_for(sub { state_of($j1) eq 'cancelled' }, 5), 'one is cancelled');
($s, my $j4) = async('/slow?user=a');
is($s, 202, 'its slot is free again');
($s) = async('/slow?user=a');
is($s, 429, 'and only that one');

http_get($port, 'DELETE', "/jobs/$_") for $j2, $j4, $jb, $je;
ok(wait_for(sub { state_of($j4) eq 'cancelled' }, 5), 'all cancelled');

my @done;
for (1 .. 4) {
    my ($st, $job) = async('/fast?user=c');
    push @done, $st;
    wait_for(sub { state_of($job) eq 'completed' }, 5);
}
is("@done", '202 202 202 202', 'jobs that complete give their slots back');

# the second limit of a location (per team, retry_after=2s)

my @team = map { [async("/slow?team=t&user=u$_")] } 1 .. 3;
is(join(' ', map { $_->[0] } @team), '202 202 202', 'three jobs of team t');
my ($st, $jt, undef, $ht) = async('/slow?team=t&user=u9');
is($st, 429, 'a fourth: 429');
like($ht, qr/^Retry-After: 2\r?$/mi, 'with its own Retry-After');
http_get($port, 'DELETE', "/jobs/$_->[1]") for @team;

# a stream whose client left still counts during its grace period

my (undef, undef, $b) = http_get($port, 'GET', '/slow?user=d',
                                 until => qr/event: delta/);
my ($jd) = $b =~ /^id: ([\w-]+):/m;
($s) = async('/slow?user=d');
is($s, 202, 'the stream\'s client left: one more for user d');
($s) = async('/slow?user=d');
is($s, 429, 'the left stream still counts');
# (a lookup would count as a follower and extend the grace period)
sleep 2 * $slow;
is(state_of($jd), 'cancelled', 'until its grace period ends');
($s, my $j5) = async('/slow?user=d');
is($s, 202, 'then its slot is free');

# a continued pipeline counts like a new job

(undef, undef, $b) = http_get($port, 'GET', '/once?user=e');
my ($jp) = $b =~ /^id: ([\w-]+):/m;
my ($sa, $ja) = async('/slow?user=e');
my ($sb, $jbb) = async('/slow?user=e');
($s, undef, $b) = http_get($port, 'POST', "/jobs/$jp?user=e");
is($s, 429, 'continuing a pipeline over the limit: 429');
http_get($port, 'DELETE', "/jobs/$ja");
ok(wait_for(sub { state_of($ja) eq 'cancelled' }, 5), 'a slot freed');
($s, undef, $b) = http_get($port, 'POST', "/jobs/$jp?user=e");
is($s, 200, 'then it continues');
like($b, qr/event: complete/, 'to the end');

# llm_max_duration: the job fails when it has run that long

(undef, undef, $b) = http_get($port, 'GET', '/capped', timeout => 10 * $slow);
my @ev = sse_events($b);
is($ev[-1]{event}, 'error', 'a job longer than llm_max_duration fails');
like($ev[-1]{data}, qr/"code":"max_duration"/, 'with max_duration');
like($ev[-1]{data}, qr/"text":"\w/, 'keeping its text');

unlike(error_log($root), qr/\[(?:alert|crit|emerg)\]|signal \d+/,
       'no worker crashed');

stop_nginx($root);

done_testing();
