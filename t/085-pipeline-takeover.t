# A pipeline whose nginx instance dies (kill -9 of its master and worker)
# is taken over by another instance sharing Redis, where a client follows
# it: after 15 s without a write the follower's instance claims the job in
# Redis (one instance only), and runs it on from its first unfinished
# step with the stored outputs, as the same job: its ids go on after a
# gap, so that a client of the dead instance resuming with the last id
# it had misses nothing and gets nothing twice.  A single prompt's job is
# still lost (job_lost).

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx nginx_pid free_port error_log
                       http_get sse_events start_redis stop_redis);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $rport = free_port();
my $redis_pid = eval { start_redis($rport) };

plan skip_all => 'redis-server cannot start' unless $redis_pid;

END { local $?; stop_redis($redis_pid) }

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $up = "http://127.0.0.1:$mock/v1/chat/completions";
my $run = "t$$";

# "long" streams 100 words at 20 a second: the instance dies during it
sub http {
    my ($port) = @_;
    return <<"HTTP";
    llm_store redis://127.0.0.1:$rport ttl=10m prefix=t085:;

    llm_pipeline three {
        step first {
            pass   "$up?tps=0&ttft=0&tag=${run}1&reply=one";
            prompt "one";
            stream on;
        }
        step long {
            pass   "$up?tokens=100&tps=20&ttft=0&tag=${run}2";
            prompt "two after \$llm_step_first";
            stream on;
        }
        step last {
            pass   "$up?tps=0&ttft=0&tag=${run}3&reply=three";
            prompt "three";
            stream on;
        }
    }

    server {
        listen 127.0.0.1:$port;

        location = /p {
            llm_model    m;
            llm_pipeline three;
        }
        location = /single {
            llm_pass   "$up?tokens=400&tps=20&ttft=0";
            llm_model  m;
            llm_prompt "hi";
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_model m;
            llm_job   \$id;
        }
    }
HTTP
}

sub calls {
    my ($tag) = @_;
    my (undef, undef, $b) = http_get($mock, 'GET', "/stats?tag=$run$tag");
    return (eval { decode_json($b) } || {})->{requests} // -1;
}

sub seq_of { ($_[0]{id} =~ /:(\d+)$/)[0] }

sub read_until {
    my ($s, $got, $re) = @_;
    while ($$got !~ $re) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select($rin, undef, undef, 10 * $slow);
        last unless sysread($s, my $buf, 65536);
        $$got .= $buf;
    }
}

sub kill_instance {
    my ($root) = @_;
    my $master = nginx_pid($root);
    my @pids = ($master, map { (split ' ')[0] }
                         grep { /\b$master\b/ }
                         `ps -eo pid=,ppid=`);
    kill 'KILL', grep { $_ } @pids;
    sleep 0.5;
}

my $main = "daemon on;\nmaster_process on;\nworker_processes 1;";
my ($pa, $pb) = (free_port(), free_port());
my $ra = start_nginx('takeover_a', $main, http($pa));
my $rb = start_nginx('takeover_b', $main, http($pb));


# 1. the stream on A, read into the long step; A dies

my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$pa") or die $!;
syswrite($s, "GET /p HTTP/1.0\r\nHost: localhost\r\n\r\n");
my $got = '';
read_until($s, \$got, qr/"step":"long"(?:.*?event: delta\n){5}/s);
my @seen = sse_events((split /\r\n\r\n/, $got, 2)[1] // '');
my ($job) = ($seen[0]{id} // '') =~ /^([\w-]+):/;
ok($job, 'a pipeline runs on A, in its long step');

kill_instance($ra);
close $s;
my $last = $seen[-1]{id};

# 2. the client comes back on B with the last id it had

my ($st, undef, $body) = http_get($pb, 'GET', '/p',
                                  headers => { 'Last-Event-ID' => $last },
                                  timeout => 60 * $slow);
my @rest = sse_events($body);

is($st, 200, 'the client resumes on B');
is($rest[-1]{event}, 'complete', 'the job completes on B');
my @seqs = map { seq_of($_) } @seen, @rest;
is(scalar(grep { $seqs[$_] <= $seqs[$_ - 1] } 1 .. $#seqs), 0,
   'every event once: the ids only grow')
    or diag(join ' ', @seqs);
my @starts = map { decode_json($_->{data})->{step} }
             grep { $_->{event} eq 'step_start' } @rest;
is_deeply(\@starts, ['long', 'last'],
          'the long step runs again from its start, then the last');
is(calls(1), 1, 'the finished first step is not asked again');
is(calls(3), 1, 'the last one once');

my (undef, undef, $j) = http_get($pb, 'GET', "/jobs/$job",
                                 headers => { Accept => 'application/json' });
$j = eval { decode_json($j) } || {};
is($j->{state}, 'completed', 'the job is completed in Redis');
is_deeply([map { $_->{state} } @{ $j->{steps} || [] }],
          [qw(done done done)], 'with its three steps done');
like(error_log($rb), qr/job \Q$job\E taken over/, 'B says it took it over');

# 3. a client replaying the job from its start gets every event once

(undef, undef, $body) = http_get($pb, 'GET', "/jobs/$job",
                                 headers => { Accept => 'text/event-stream' });
my @all = sse_events($body);
@seqs = map { seq_of($_) } @all;
is(scalar(grep { $seqs[$_] <= $seqs[$_ - 1] } 1 .. $#seqs), 0,
   'a replay: ids that only grow');
is(scalar(grep { $_->{event} eq 'complete' } @all), 1, 'one final event');
like($all[-1]{data}, qr/"text":"one.*three"/, 'with all the text');

# 4. a single prompt's job is lost, as before

$s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$pb") or die $!;
syswrite($s, "GET /single HTTP/1.0\r\nHost: localhost\r\n\r\n");
$got = '';
read_until($s, \$got, qr/event: delta/);
($last) = $got =~ /.*^id: (\S+)$/ms;
sleep 0.5;      # its first writes are in Redis: it is a job there
kill_instance($rb);
close $s;

my $rc = start_nginx('takeover_c', $main, http($pa));
($st, undef, $body) = http_get($pa, 'GET', '/single',
                               headers => { 'Last-Event-ID' => $last },
                               timeout => 60 * $slow);
@rest = sse_events($body);
like($rest[-1]{data} // '', qr/"code":"job_lost"/,
     'a single prompt\'s job is lost');

unlike(error_log($rb) . error_log($rc), qr/signal 11|\[alert\]/,
       'no worker crashed');

stop_nginx($rc);

done_testing();
