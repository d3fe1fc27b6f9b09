# What the Redis store reads back is not trusted: records planted in Redis
# (ranges outside the text, wrapping lengths, huge stream ids, numbers
# that are not numbers) end the lookup or the followed job with an error,
# logged once, never with bytes from outside the job's text.  A write that
# Redis refuses for good fails that job's persistence once, visibly, and
# is not sent again.
#
# One nginx instance (a master and one worker) and a private redis-server
# that this test starts.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events start_redis stop_redis);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;
plan skip_all => 'redis-server and redis-cli are needed'
    unless grep { -x "$_/redis-server" && -x "$_/redis-cli" }
                split /:/, $ENV{PATH};

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $rport = free_port();
my $redis_pid;
my $pass = 'hunter3';

sub redis_start {
    $redis_pid = start_redis($rport, '--requirepass', $pass);
}

sub redis_stop {
    stop_redis($redis_pid);
    undef $redis_pid;
}

END { local $?; redis_stop() }

redis_start();

sub r {
    open my $fh, '-|', 'redis-cli', '-p', $rport, '-a', $pass,
         '--no-auth-warning', '-n', 3, '--raw', @_ or die $!;
    my $out = do { local $/; <$fh> } // '';
    close $fh;
    $out =~ s/\n\z//;
    return $out;
}

sub wait_for {
    my ($cond, $secs) = @_;
    for (1 .. $secs * 20 * $slow) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return 0;
}

my $n = 0;

# a job id of our own, and its hash, text and events as given
sub plant {
    my (%o) = @_;
    my $id = sprintf 'plant%017d', ++$n;
    my $now = int(time * 1000);

    my %h = (state => 'completed', created => $now, updated => $now,
             finished => $now, owner => '', background => 0, cancel => 0,
             watched => 0, finish => 'stop', in => 3, out => 2, code => '',
             message => '', nevents => 3, textlen => 5,
             %{ $o{hash} || {} });

    r('HSET', "t061:{$id}:job", %h);
    r('SET', "t061:{$id}:text", $o{text} // 'hello');

    for my $e (@{ $o{events} || [['1-0', 0, 0, 0], ['2-0', 1, 0, 5],
                                 ['3-0', 2, 0, 0]] })
    {
        r('XADD', "t061:{$id}:events", $e->[0],
          t => $e->[1], o => $e->[2], l => $e->[3]);
    }

    return $id;
}

my $up = "http://127.0.0.1:$mock/v1/chat/completions";
my $port = free_port();

my $ng = start_nginx('redis_rec',
    "daemon on;\nmaster_process on;\nworker_processes 1;\n"
    . "worker_shutdown_timeout 10s;", <<"HTTP");
    llm_store redis://:$pass\@127.0.0.1:$rport/3 ttl=10m prefix=t061:;
    server {
        listen 127.0.0.1:$port;
        location = /g {
            llm_pass   $up?tokens=\$arg_n&tps=20&ttft=0;
            llm_model  m;
            llm_prompt "\$arg_p";
        }
        location = /u {
            llm_store  redis://:$pass\@127.0.0.1:$rport/3 ttl=10m
                       prefix=t061u: unsaved=1m;
            llm_pass   $up?tokens=20&tps=0&ttft=0&token_size=20000;
            llm_model  m;
            llm_prompt "u";
        }
        location = /big {
            llm_pass   $up?tokens=70&tps=50&ttft=0&token_size=20000;
            llm_model  m;
            llm_prompt "big";
        }
        location ~ "^/jobs/(?<job>[A-Za-z0-9_-]{22})\$" {
            llm_job \$job;
        }
    }
HTTP

my $sse = { Accept => 'text/event-stream' };

sub log_since {
    my ($from) = @_;
    return substr(error_log($ng), $from);
}


# 1. a well-formed planted job is read as any other

my $ok = plant();
my ($s, $h, $body) = http_get($port, 'GET', "/jobs/$ok", headers => $sse);
my @ev = sse_events($body);

is($s, 200, 'a planted job that holds together is read');
is($ev[-1]{event}, 'complete', '  to its end');
is(decode_json($ev[-1]{data})->{text}, 'hello', '  with its text');


# 2. records that do not hold together: an error, never the heap

my @bad = (
    ['a delta beyond the text',
     { events => [['1-0', 0, 0, 0], ['2-0', 1, 4000, 5], ['3-0', 2, 0, 0]] },
     qr/corrupt record in the store \(event outside the text\)/],
    ['a length past the end of the text',
     { events => [['1-0', 0, 0, 0], ['2-0', 1, 0, 65536], ['3-0', 2, 0, 0]] },
     qr/corrupt record in the store \(event outside the text\)/],
    ['an offset and length that wrap',
     { events => [['1-0', 0, 0, 0], ['2-0', 1, 2, 4294967295],
                  ['3-0', 2, 0, 0]] },
     qr/corrupt record in the store \(event outside the text\)/],
    ['an offset beyond 64 bits',
     { events => [['1-0', 0, 0, 0], ['2-0', 1, '18446744073709551615', 5],
                  ['3-0', 2, 0, 0]] },
     qr/corrupt record \(event fields\)/],
    ['deltas that go back in the text',
     { events => [['1-0', 0, 0, 0], ['2-0', 1, 0, 5], ['3-0', 1, 1, 3],
                  ['4-0', 2, 0, 0]] },
     qr/corrupt record in the store \(event offset\)/],
    ['a huge first stream id',
     { events => [['9223372036854775800-0', 1, 0, 5]] },
     qr/corrupt record in the store \(first event\)/],
    ['an unknown event type',
     { events => [['1-0', 0, 0, 0], ['2-0', 10, 0, 5]] },
     qr/corrupt record \(event fields\)/],
    ['a non-numeric time',
     { hash => { created => '12abc' } }, qr/corrupt record \(created\)/],
    ['a non-numeric token count',
     { hash => { in => 'many' } }, qr/corrupt record \(token count\)/],
    ['a token count that would overflow',
     { hash => { out => '9223372036854775807' } },
     qr/corrupt record \(token count\)/],
    ['a garbled owner',
     { hash => { owner => 'zz' x 20 } }, qr/corrupt record \(owner\)/],
    ['an unknown state',
     { hash => { state => 'exploded' } }, qr/corrupt record \(state\)/],
);

for my $b (@bad) {
    my ($what, $rec, $logged) = @$b;
    my $from = length error_log($ng);
    my $id = plant(%$rec);

    ($s, $h, $body) = http_get($port, 'GET', "/jobs/$id", headers => $sse);

    is($s, 503, "$what: refused");
    like($body, qr/"code":"store_unavailable"/, '  with an error');
    unlike($body, qr/hello/, '  and nothing of the text');

    my $l = log_since($from);
    like($l, $logged, '  logged');
    my @lines = $l =~ /corrupt record/g;
    is(scalar @lines, 1, '  once');
}


# 3. a followed job whose record goes bad: its stream ends with an error

my $now = int(time * 1000);
my $run = plant(hash => { state => 'running', finished => 0 },
                events => [['1-0', 0, 0, 0], ['2-0', 1, 0, 5]]);

my $st = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
syswrite($st, "GET /jobs/$run HTTP/1.0\r\nHost: localhost\r\n"
              . "Accept: text/event-stream\r\n\r\n");

my $got = '';
while ($got !~ /event: delta/) {
    my $rin = '';
    vec($rin, fileno($st), 1) = 1;
    last unless select($rin, undef, undef, 10 * $slow);
    last unless sysread($st, my $buf, 65536);
    $got .= $buf;
}

like($got, qr/event: delta/, 'a running planted job is followed');

my $from = length error_log($ng);

r('APPEND', "t061:{$run}:text", ' world');
r('XADD', "t061:{$run}:events", '3-0', t => 1, o => 100, l => 6);
r('HSET', "t061:{$run}:job", updated => int(time * 1000));

while (1) {
    my $rin = '';
    vec($rin, fileno($st), 1) = 1;
    last unless select($rin, undef, undef, 10 * $slow);
    last unless sysread($st, my $buf, 65536);
    $got .= $buf;
}

close $st;

my (undef, $rest) = split /\r\n\r\n/, $got, 2;
@ev = sse_events($rest // '');

is($ev[-1]{event}, 'error', 'the stream ends when the record goes bad');
like($ev[-1]{data}, qr/"code":"store_corrupt"/, '  with store_corrupt');
unlike($rest, qr/world/, '  and nothing past the text it trusted');
my @lines = log_since($from) =~ /corrupt record/g;
is(scalar @lines, 1, '  logged once');



# 4. a write Redis refuses for good: logged once, not sent again, and the
#    other jobs are saved as before

sub setrange_failed {
    my ($f) = r('INFO', 'commandstats') =~ /cmdstat_setrange:.*failed_calls=(\d+)/;
    return $f // 0;
}

r('CONFIG', 'SET', 'proto-max-bulk-len', 1024 * 1024);
$from = length error_log($ng);

my $other = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
syswrite($other, "GET /g?n=30&p=small HTTP/1.0\r\nHost: localhost\r\n\r\n");

# about 1.4 MB in 1.4 s: each flush's SETRANGE is small, the string is not
($s, $h, $body) = http_get($port, 'GET', '/big', timeout => 20 * $slow);
@ev = sse_events($body);
my ($big) = ($ev[0]{id} // '') =~ /^([\w-]+):1$/;

is($ev[-1]{event}, 'complete', 'a job Redis refuses still streams');

my $got_other = '';
while (1) {
    my $rin = '';
    vec($rin, fileno($other), 1) = 1;
    last unless select($rin, undef, undef, 10 * $slow);
    last unless sysread($other, my $buf, 65536);
    $got_other .= $buf;
}
close $other;

my ($small) = $got_other =~ /^id: ([\w-]+):1$/m;

ok(wait_for(sub { r('HGET', "t061:{$small}:job", 'state') eq 'completed' },
            3), 'the other job is saved');

my $failed = setrange_failed();
cmp_ok($failed, '>', 0, 'Redis refused the big job\'s text');

# ten flushes, and the worker's once-a-second save of running jobs
sleep 1.5;

is(setrange_failed(), $failed, '  and it was not sent again');

my @refused = log_since($from) =~ /(refused a write of job \S+.*)/g;
is(scalar @refused, 1, '  one error line');
like($refused[0] // '', qr/\Q$big\E, the job is not saved any more: .*string exceeds maximum allowed size/,
     '  naming the job and the reply');

r('CONFIG', 'SET', 'proto-max-bulk-len', 512 * 1024 * 1024);


# 5. Redis down: what a worker keeps of finished jobs not written yet is
#    bounded (unsaved=1m: two jobs of 400 KB, not three)

redis_stop();
$from = length error_log($ng);

my @u;

for (1 .. 3) {
    ($s, $h, $body) = http_get($port, 'GET', '/u', timeout => 10 * $slow);
    @ev = sse_events($body);
    push @u, ($ev[0]{id} // '') =~ /^([\w-]+):1$/;
    is($ev[-1]{event}, 'complete', "Redis down: job $_ runs");
}

my $l = log_since($from);
unlike($l, qr/job \Q$u[0]\E not saved/, 'the first job is kept');
unlike($l, qr/job \Q$u[1]\E not saved/, 'the second too');
like($l, qr/job \Q$u[2]\E not saved: the copies of jobs not written yet to \S+ would exceed unsaved=1048576/,
     'the third is not, and the log says so');

redis_start();

ok(wait_for(sub { r('HGET', "t061u:{$u[1]}:job", 'state') eq 'completed' },
            8 * $slow), 'the jobs kept are written when Redis is back');
is(r('HGET', "t061u:{$u[0]}:job", 'state'), 'completed', '  both');
is(r('EXISTS', "t061u:{$u[2]}:job"), 0, '  not the third');

stop_nginx($ng);

unlike(error_log($ng), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();
