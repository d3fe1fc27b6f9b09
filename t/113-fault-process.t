# Fault matrix, processes: a worker SIGKILLed in the middle of a stream
# (memory store, two workers; Redis store, two instances), and a thread
# pool whose queue is full (for the engine, for the Redis store).  For
# each: what the client and a follower see, what the store keeps, and
# that nothing else crashed (the error log names only the worker killed
# here).  (Reload and graceful quit mid-stream: t/043-shutdown.t and
# t/060-redis-store.t; a full memory zone: t/051-jobs.t; a worker that
# dies while a reload is refused: t/045-failed-reload.t.)

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events start_redis stop_redis wait_for);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $run = $$;
my $up = "http://127.0.0.1:$mock/v1/chat/completions";
my $json = { Accept => 'application/json' };

my $rport = free_port();
my $redis_pid = eval { start_redis($rport) };

END { local $?; stop_redis($redis_pid) }

sub stream_open {
    my ($port, $uri, %hdr) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
    my $h = join '', map { "$_: $hdr{$_}\r\n" } keys %hdr;
    syswrite($s, "GET $uri HTTP/1.0\r\nHost: localhost\r\n$h\r\n");

    return { sock => $s, got => '' };
}

# reads until "until" matches, the server closes or "secs" pass
sub stream_read {
    my ($st, $until, $secs) = @_;
    my $end = time + $secs * $slow;

    while (!defined $until || $st->{got} !~ $until) {
        my $left = $end - time;
        last if $left <= 0;
        my $rin = '';
        vec($rin, fileno($st->{sock}), 1) = 1;
        last unless select($rin, undef, undef, $left);
        last unless sysread($st->{sock}, my $buf, 65536);
        $st->{got} .= $buf;
    }

    return defined $until && $st->{got} =~ $until;
}

sub head_of { (split /\r\n\r\n/, $_[0]{got}, 2)[0] // '' }
sub body_of { (split /\r\n\r\n/, $_[0]{got}, 2)[1] // '' }
sub worker_of { (head_of($_[0]) =~ /^X-Worker: (\d+)/mi)[0] // '' }

sub job_json {
    my ($port, $job) = @_;
    my ($s, undef, $b) = http_get($port, 'GET', "/jobs/$job",
                                  headers => $json);
    return ($s, eval { decode_json($b) } || {});
}

sub hget {
    my ($key, $field) = @_;
    my $v = `redis-cli -p $rport --raw HGET '$key' $field`;
    chomp $v;
    return $v;
}

my $final = qr/event: (?:complete|error)\ndata: [^\n]*\n\n/;

# "N exited on signal" lines other than the worker killed here, and alerts
sub crashes {
    my ($log, $killed) = @_;
    return grep { !/ $killed exited on signal 9\b/ }
           $log =~ /^.*(?:exited on signal|\[(?:alert|crit|emerg)\]).*$/mg;
}


# 1. memory store: the worker running a stream is killed, a follower on
#    the other worker

my $port = free_port();
my $root = start_nginx('fault_kill',
                       "daemon on;\nmaster_process on;\nworker_processes 2;",
                       <<"HTTP");
    llm_model  m;
    llm_prompt "hi";

    server {
        listen 127.0.0.1:$port reuseport;
        add_header X-Worker \$pid always;

        location = /g {
            llm_pass $up?tokens=400&tps=10&ttft=0&tag=\$arg_tag;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_job \$id;
        }
    }
HTTP

my $st = stream_open($port, "/g?tag=kill$run");
ok(stream_read($st, qr/(?:event: delta\n.*){3}/s, 10),
   'memory store: a stream runs');
my $victim = worker_of($st);
my ($job) = body_of($st) =~ /^id: ([\w-]+):1$/m;

# a follower on the other worker
my $f;
for (1 .. 50) {
    $f = stream_open($port, "/jobs/$job", Accept => 'text/event-stream');
    stream_read($f, qr/event: delta/, 10);
    last if worker_of($f) ne $victim;
    close $f->{sock};
    undef $f;
}
ok($f, '  a follower on the other worker');

kill 'KILL', $victim;

stream_read($st, undef, 10);
unlike(body_of($st), $final, '  killed: its client\'s stream ends without '
                            . 'a final event');

ok(stream_read($f, $final, 40), '  the follower gets a final event');
my @fev = sse_events(body_of($f));
is($fev[-1]{event}, 'error', '    an error');
like($fev[-1]{data}, qr/"code":"job_lost","message":"[^"]+","text":"\S/,
     '    job_lost, with the text so far');

# a lookup reads the record: unwritten for 15 s, the job is lost
my ($s, $j) = job_json($port, $job);
is($s, 200, '  the job is still in the zone');
is($j->{state}, 'failed', '  a lookup says it failed');
is($j->{error}{code}, 'job_lost', '  with job_lost');

my $again = stream_open($port, "/g?tag=kill$run");
ok(stream_read($again, $final, 60), 'the workers serve new streams');
is((sse_events(body_of($again)))[-1]{event}, 'complete', '  to the end');

stop_nginx($root);
is(join('', crashes(error_log($root), $victim)), '',
   'only the worker killed here died, no alerts');


# 2. Redis store: the worker running a stream is killed, a follower on
#    another instance

SKIP: {
    skip 'redis-server cannot start', 9 unless $redis_pid;

    my $http = sub {
        my ($p) = @_;
        return <<"HTTP";
    llm_store  redis://127.0.0.1:$rport ttl=10m prefix=t113: flush=100ms;
    llm_model  m;
    llm_prompt "hi";

    server {
        listen 127.0.0.1:$p;
        add_header X-Worker \$pid always;

        location = /g {
            llm_pass $up?tokens=400&tps=10&ttft=0&tag=\$arg_tag;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_job \$id;
        }
    }
HTTP
    };

    my $main = "daemon on;\nmaster_process on;\nworker_processes 1;";
    my ($pa, $pb) = (free_port(), free_port());
    my $ra = start_nginx('fault_kill_a', $main, $http->($pa));
    my $rb = start_nginx('fault_kill_b', $main, $http->($pb));

    $st = stream_open($pa, "/g?tag=rkill$run");
    ok(stream_read($st, qr/(?:event: delta\n.*){3}/s, 10),
       'Redis store: a stream runs on A');
    $victim = worker_of($st);
    ($job) = body_of($st) =~ /^id: ([\w-]+):1$/m;

    $f = stream_open($pb, "/jobs/$job", Accept => 'text/event-stream');
    ok(stream_read($f, qr/event: delta/, 10), '  B follows it');

    kill 'KILL', $victim;

    stream_read($st, undef, 10);
    unlike(body_of($st), $final, '  killed: its client\'s stream ends '
                                 . 'without a final event');

    ok(stream_read($f, $final, 40), '  the follower on B gets a final event');
    @fev = sse_events(body_of($f));
    like($fev[-1]{data}, qr/"code":"job_lost","message":"[^"]+","text":"\S/,
         '    job_lost, with the text so far');

    is(hget("t113:{$job}:job", 'state'), 'running',
       '  Redis keeps the job as it was (running, until its ttl)');

    ($s, $j) = job_json($pb, $job);
    is($j->{state}, 'failed', '  read on B now: failed, job_lost');

    $again = stream_open($pa, "/g?tag=rkill$run");
    ok(stream_read($again, $final, 60), 'A serves new streams');

    stop_nginx($ra);
    stop_nginx($rb);
    is(join('', crashes(error_log($ra) . error_log($rb), $victim)), '',
       'only the worker killed here died, no alerts');
}


# 3. a thread pool whose queue is full: one thread and no queue (nginx
#    counts an idle thread as room for one task), shared by the engine
#    and the Redis store, which the documentation advises against: the
#    engine's task holds the thread while streams run, the Redis store's
#    until it has been idle for 2 s

SKIP: {
    skip 'redis-server cannot start', 13 unless $redis_pid;

    $port = free_port();
    $root = start_nginx('fault_queue',
                        "daemon on;\nmaster_process on;\nworker_processes 1;\n"
                        . "thread_pool tight threads=1 max_queue=0;",
                        <<"HTTP");
    llm_model       m;
    llm_prompt      "hi";
    llm_thread_pool tight;
    llm_store       redis://127.0.0.1:$rport prefix=t113q: flush=100ms
                    thread_pool=tight;

    server {
        listen 127.0.0.1:$port;

        location = /g {
            llm_pass $up?tokens=30&tps=10&ttft=0;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_job \$id;
        }
    }
HTTP

    my $unknown = '/jobs/AAAAAAAAAAAAAAAAAAAAAA';

    # the engine holds the thread while a stream runs: the Redis store
    # cannot post its task.  A stream may fail to start while the pool's
    # thread is starting, or while the Redis store has it (writing the
    # job of a stream that failed, then idle for 2 s): tried again after
    # 3 s

    my ($held, @ev);
    for (1 .. 5) {
        $st = stream_open($port, '/g');
        last if $held = stream_read($st, qr/event: delta/, 10);
        close $st->{sock};
        sleep 3;
    }
    ok($held, 'a stream holds the only thread');
    ($job) = body_of($st) =~ /^id: ([\w-]+):1$/m;

    ($s) = http_get($port, 'GET', $unknown, headers => $json);
    is($s, 503, '  the Redis store\'s queue is full: a lookup in Redis '
                . 'fails, 503');
    ($s, $j) = job_json($port, $job);
    is($j->{state}, 'running', '  the running job is read from the worker');

    ok(stream_read($st, $final, 20), '  the stream goes on');
    @ev = sse_events(body_of($st));
    is($ev[-1]{event}, 'complete', '    to "complete"');
    like(error_log($root),
         qr/thread pool "tight" queue is full: writes are delayed, reads fail/,
         '  the error log says why');
    ok(wait_for(sub { hget("t113q:{$job}:job", 'state') eq 'completed' },
                10),
       '  once the thread is free, Redis gets the job, completed');

    # the Redis store holds the thread: the engine cannot post its task

    ok(wait_for(sub { (http_get($port, 'GET', $unknown,
                                headers => $json))[0] == 404 }, 10),
       'a lookup in Redis: the store\'s task holds the thread');

    my ($h, $b);
    ($s, $h, $b) = http_get($port, 'GET', '/g');
    @ev = sse_events($b);
    is($ev[-1]{event}, 'error', '  the engine\'s queue is full: a stream '
                                . 'ends with an error');
    like($ev[-1]{data},
         qr/"code":"internal","message":"the thread pool is overloaded"/,
         '    internal: the thread pool is overloaded');
    like(error_log($root),
         qr/cannot start the engine: thread pool queue is full/,
         '    the error log says why');
    ($job) = ($ev[0]{id} // '') =~ /^([\w-]+):/;
    ok(wait_for(sub { hget("t113q:{$job}:job", 'state') eq 'failed' }, 10),
       '    Redis gets the job, failed');

    stop_nginx($root);
    is(join('', crashes(error_log($root), 0)), '',
       'no worker crashed, no alerts');
}

done_testing();
