# The Redis store: every job is written to Redis (hash, text, stream of
# events) with its TTL, another nginx instance follows and cancels it
# through Redis, a job Redis lost is written again, and nginx carries on
# while Redis is down and writes what it missed once Redis is back.
#
# Two nginx instances (A runs the jobs, B follows them) share a private
# redis-server that this test starts, stops and restarts.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use File::Path qw(make_path remove_tree);
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx nginx_pid free_port error_log
                       http_get sse_events);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;
plan skip_all => 'redis-server and redis-cli are needed'
    unless grep { -x "$_/redis-server" && -x "$_/redis-cli" }
                split /:/, $ENV{PATH};

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $rport = free_port();
my $redis_pid;
my $pass = 'hunter2';

sub redis_start {
    $redis_pid = fork() // die "fork: $!";

    if ($redis_pid == 0) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        exec 'redis-server', '--port', $rport, '--bind', '127.0.0.1',
             '--save', '', '--appendonly', 'no', '--requirepass', $pass;
        exit 1;
    }

    for (1 .. 50) {
        return if IO::Socket::INET->new(PeerAddr => "127.0.0.1:$rport");
        sleep 0.1;
    }

    die "redis-server did not start\n";
}

sub redis_stop {
    return unless $redis_pid;
    kill 'KILL', $redis_pid;
    waitpid $redis_pid, 0;
    undef $redis_pid;
}

# waitpid() would make the child's status the test's
END { local $?; redis_stop() }

# redis-cli on database 2, values as they are, one per line
sub r {
    open my $fh, '-|', 'redis-cli', '-p', $rport, '-a', $pass,
         '--no-auth-warning', '-n', 2, '--raw', @_ or die $!;
    my $out = do { local $/; <$fh> } // '';
    close $fh;
    $out =~ s/\n\z//;
    return $out;
}

sub hash_of {
    my %h = split /\n/, r('HGETALL', "t060:{$_[0]}:job"), -1;
    return \%h;
}

sub wait_for {
    my ($cond, $secs) = @_;
    for (1 .. $secs * 20 * $slow) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return 0;
}

# a stream read up to a first match, then to its end
sub stream_open {
    my ($port, $uri, $until) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
    syswrite($s, "GET $uri HTTP/1.0\r\nHost: localhost\r\n\r\n");

    my $got = '';
    while ($got !~ $until) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select($rin, undef, undef, 10 * $slow);
        last unless sysread($s, my $buf, 65536);
        $got .= $buf;
    }

    my ($job) = $got =~ /^id: ([\w-]+):1$/m;
    return { sock => $s, got => $got, job => $job };
}

sub stream_rest {
    my ($st) = @_;
    my $s = $st->{sock};

    while (1) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select($rin, undef, undef, 20 * $slow);
        last unless sysread($s, my $buf, 65536);
        $st->{got} .= $buf;
    }

    close $s;
    my (undef, $body) = split /\r\n\r\n/, $st->{got}, 2;
    return sse_events($body // '');
}

sub final_text { decode_json($_[-1]{data})->{text} }

my $up = "http://127.0.0.1:$mock/v1/chat/completions";

sub http_conf {
    my ($port) = @_;
    return <<"HTTP";
    llm_store redis://:$pass\@127.0.0.1:$rport/2 ttl=10m prefix=t060:;
    server {
        listen 127.0.0.1:$port;
        location = /g {
            llm_pass      $up?tokens=\$arg_n&tps=\$arg_tps&ttft=0;
            llm_model     m;
            llm_prompt    "hi";
            llm_job_owner \$arg_owner;
        }
        location ~ "^/jobs/(?<job>[A-Za-z0-9_-]{22})\$" {
            llm_job       \$job;
            llm_job_owner \$arg_owner;
        }
    }
HTTP
}

my $main = "daemon on;\nmaster_process on;\nworker_processes 1;\n"
           . "worker_shutdown_timeout 10s;";


# 1. configuration errors name llm_store and never repeat a password

my $nginx = $ENV{TEST_NGINX_BINARY} || 'nginx';
my $mods = join '', map { "load_module $_;\n" }
                    split ' ', $ENV{TEST_NGINX_LOAD_MODULES} || '';
my $tdir = ($ENV{TEST_NGINX_SERVROOT} || 't/servroot') . '_redis_conf';

for my $c (['redis://:secret1@127.0.0.1:x', qr/invalid port ":x"/],
           ['redis://127.0.0.1 bogus=secret1', qr/invalid parameter "bogus"/],
           ['redis://127.0.0.1 flush=0', qr/invalid flush "0"/],
           ['redis://127.0.0.1/db', qr/invalid database "db"/],
           ['redis://', qr/no host/],
           ['unix:', qr/no socket path/])
{
    remove_tree($tdir);
    make_path("$tdir/conf", "$tdir/logs");
    open my $f, '>', "$tdir/conf/nginx.conf" or die $!;
    print $f "${mods}events {}\nhttp {\n    llm_store $c->[0];\n}\n";
    close $f;

    my $out = `$nginx -t -p $tdir -c conf/nginx.conf -e logs/error.log 2>&1`;
    like($out, qr/$c->[1] in "llm_store"|$c->[1].*llm_store/,
         "llm_store $c->[0]: refused");
    unlike($out, qr/secret1/, '  without the password');
}

remove_tree($tdir);


redis_start();

my ($pa, $pb) = (free_port(), free_port());
my $ra = start_nginx('redis_a', $main, http_conf($pa));
my $rb = start_nginx('redis_b', $main, http_conf($pb));


# 2. a job in Redis: the hash, the text, one stream entry per event

my ($s, $h, $body) = http_get($pa, 'GET', '/g?n=20&tps=0');
my @ev = sse_events($body);
my ($job) = ($ev[0]{id} // '') =~ /^([\w-]+):1$/;
my $done = decode_json($ev[-1]{data} // '{}');

ok($job, 'a job ran on A');
is($ev[-1]{event}, 'complete', '  to its end');

ok(wait_for(sub { (hash_of($job)->{state} // '') eq 'completed' }, 3),
   'the job is in Redis, completed');

my $jh = hash_of($job);
is($jh->{nevents}, scalar @ev, 'nevents: every event');
is($jh->{textlen}, length $done->{text}, 'textlen');
is($jh->{finish}, 'stop', 'finish reason');
is($jh->{out}, $done->{usage}{output_tokens}, 'output tokens');
is($jh->{cancel}, 0, 'no cancel asked');
cmp_ok($jh->{finished}, '>=', $jh->{created}, 'finished after created');

is(r('GET', "t060:{$job}:text"), $done->{text}, 'the text');
is(r('XLEN', "t060:{$job}:events"), scalar @ev, 'a stream entry per event');

my @first = split /\n/, r('XRANGE', "t060:{$job}:events", '-', '+',
                          'COUNT', 1);
is_deeply(\@first, ['1-0', 't', 0, 'o', 0, 'l', 0],
          'entry 1-0: the start event');

my @last = split /\n/, r('XREVRANGE', "t060:{$job}:events", '+', '-',
                         'COUNT', 1);
is($last[0], scalar(@ev) . '-0', 'the last entry is the last event');
is($last[2], 2, '  a complete event');

for my $k (qw(job text events)) {
    my $ttl = r('PTTL', "t060:{$job}:$k");
    ok($ttl > 0 && $ttl <= 600000, "$k expires within the ttl ($ttl ms)");
}


# 3. another instance follows a running job through Redis

my $st = stream_open($pa, '/g?n=40&tps=20', qr/event: delta/);
my $job3 = $st->{job};

# Redis has it with the next flush (100 ms)
ok(wait_for(sub { (hash_of($job3)->{state} // '') eq 'running' }, 2),
   'a running job in Redis');

($s, $h, $body) = http_get($pb, 'GET', '/g',
                           headers => { 'Last-Event-ID' => "$job3:1" },
                           timeout => 10 * $slow);
my @ev_b = sse_events($body);
my @ev_a = stream_rest($st);

is($ev_b[-1]{event}, 'complete', 'B follows the job of A to its end');
is(final_text(@ev_b), final_text(@ev_a), '  with the same text');
cmp_ok(hash_of($job3)->{watched}, '>=', hash_of($job3)->{created},
       'the follower marked the job as watched');


# 4. a cancel made on B reaches A through Redis

$st = stream_open($pa, '/g?n=200&tps=20', qr/event: delta/);
my $job4 = $st->{job};

wait_for(sub { (hash_of($job4)->{state} // '') eq 'running' }, 2);

($s, $h, $body) = http_get($pb, 'DELETE', "/jobs/$job4");
like($s, qr/^20[02]$/, 'DELETE on B');

@ev_a = stream_rest($st);
is($ev_a[-1]{event}, 'error', 'the stream on A ends');
like($ev_a[-1]{data}, qr/"code":"cancelled"/, '  cancelled');
ok(wait_for(sub { (hash_of($job4)->{state} // '') eq 'cancelled' }, 3),
   'cancelled in Redis');


# 5. the owner goes through Redis as the hex of its SHA-1

($s, $h, $body) = http_get($pa, 'GET', '/g?n=3&tps=0&owner=alice');
my ($job5) = ((sse_events($body))[0]{id} // '') =~ /^([\w-]+):1$/;

ok(wait_for(sub { (hash_of($job5)->{state} // '') eq 'completed' }, 3),
   'a job with an owner in Redis');
is(hash_of($job5)->{owner}, '522b276a356bdf39013dfabea2cd43e141ecc9e8',
   '  the SHA-1 of the owner, in hex');

($s) = http_get($pb, 'GET', "/jobs/$job5?owner=alice",
                headers => { Accept => 'application/json' });
is($s, 200, 'B gives the job to its owner');
($s) = http_get($pb, 'GET', "/jobs/$job5?owner=bob",
                headers => { Accept => 'application/json' });
is($s, 404, '  and to nobody else');


# 6. an unknown job is not created by reading it

($s) = http_get($pb, 'GET', '/jobs/AAAAAAAAAAAAAAAAAAAAAA');
is($s, 404, 'unknown job: 404');
is(r('EXISTS', 't060:{AAAAAAAAAAAAAAAAAAAAAA}:job'), 0,
   '  and no key for it');


# 7. Redis restarts empty while a job runs: A carries on, then writes the
#    whole job again

$st = stream_open($pa, '/g?n=60&tps=20', qr/event: delta/);
my $job6 = $st->{job};

ok(wait_for(sub { (hash_of($job6)->{state} // '') eq 'running' }, 2),
   'a running job in Redis');

redis_stop();
sleep 1;

($s) = http_get($pb, 'GET', '/jobs/AAAAAAAAAAAAAAAAAAAAAA');
is($s, 503, 'Redis down: a lookup is refused with 503');

redis_start();

@ev_a = stream_rest($st);
is($ev_a[-1]{event}, 'complete', 'the stream on A was not disturbed');

# the write that finds the job lost may carry its final state; the whole
# job follows with the next flush
ok(wait_for(sub { (hash_of($job6)->{state} // '') eq 'completed'
                  && r('GET', "t060:{$job6}:text") eq final_text(@ev_a) }, 5),
   'the job is in the new Redis, completed');
is(r('GET', "t060:{$job6}:text"), final_text(@ev_a), '  all its text');
is(r('XLEN', "t060:{$job6}:events"), hash_of($job6)->{nevents},
   '  all its events');
like(r('XRANGE', "t060:{$job6}:events", '-', '+', 'COUNT', 1), qr/^1-0\n/,
     '  from the first');

my $log = error_log($ra);
my $name = "127\\.0\\.0\\.1:$rport";
like($log, qr/llm: redis store: $name: (connection lost|cannot connect)/,
     'the outage is logged');
like($log, qr/\[notice\].*llm: redis store: connected to $name/,
     'and the reconnection');
like($log, qr/lost job \Q$job6\E, writing it again/, 'and the rewrite');


# 8. Redis down when a job starts and ends: written once Redis is back

redis_stop();

($s, $h, $body) = http_get($pa, 'GET', '/g?n=10&tps=0');
@ev = sse_events($body);
my ($job7) = ($ev[0]{id} // '') =~ /^([\w-]+):1$/;
is($ev[-1]{event}, 'complete', 'Redis down: jobs still run');

sleep 0.5;
redis_start();

ok(wait_for(sub { (hash_of($job7)->{state} // '') eq 'completed' }, 8),
   'and are written when Redis is back');
is(r('GET', "t060:{$job7}:text"), final_text(@ev), '  with their text');


# 9. a graceful stop writes the final state of the jobs it ends

$st = stream_open($pa, '/g?n=200&tps=20', qr/event: delta/);
my $job8 = $st->{job};

my $pid = nginx_pid($ra);
kill 'QUIT', $pid;
@ev_a = stream_rest($st);

ok(wait_for(sub { !kill 0, $pid }, 10), 'A stops');
like($ev_a[-1]{data} // '', qr/"code":"shutdown"/,
     'its stream ends with "shutdown"');

my $jh8 = hash_of($job8);
is($jh8->{state}, 'failed', 'the final state is in Redis');
is($jh8->{code}, 'shutdown', '  with its code');
is(r('XLEN', "t060:{$job8}:events"), $jh8->{nevents}, '  and every event');

stop_nginx($rb);

for my $root ($ra, $rb) {
    my $l = error_log($root);
    unlike($l, qr/\[(alert|crit|emerg)\]/, "$root: no alerts");
    unlike($l, qr/\Q$pass\E/, "$root: the password is never logged");
}

done_testing();
