# The Redis store behind Redis Sentinel: a primary, a replica and three
# sentinels (quorum 2) started by this test, two nginx instances finding
# the primary through the sentinels.  The primary is killed in the middle
# of a stream: the sentinels promote the replica, the stream goes on, and
# a resume on the other instance gets exactly the events it missed.
#
# Then, on the new primary: a write that finds the stored job behind its
# marks (as after a failover to a replica that lagged) writes the job
# again whole; and replicas=1 confirms a write only once a replica has it.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use File::Path qw(make_path remove_tree);
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
my $pass = 'hunter2';
my $spass = 'sentinel-secret';
my $dir = ($ENV{TEST_NGINX_SERVROOT} || 't/servroot') . '_sentinel';

my $nginx = $ENV{TEST_NGINX_BINARY} || 'nginx';
my $mods = join '', map { "load_module $_;\n" }
                    split ' ', $ENV{TEST_NGINX_LOAD_MODULES} || '';


# 1. configuration errors name llm_store and never repeat a password

remove_tree($dir);

for my $c (['redis-sentinel://:secret1@127.0.0.1:26379', qr/no master name/],
           ['redis-sentinel://:secret1@127.0.0.1:x/m',
            qr/invalid server port ":x"/],
           ['redis-sentinel://127.0.0.1,,127.0.0.2/m',
            qr/no server host/],
           ['redis-sentinel://127.0.0.1/m sentinel_password=secret1 '
            . 'bogus=secret1', qr/invalid parameter "bogus"/],
           ['redis://127.0.0.1 sentinel_password=secret1',
            qr/invalid parameter "sentinel_password"/],
           ['redis-sentinel://127.0.0.1/m sentinel_user=u',
            qr/sentinel_user without sentinel_password/],
           ['redis://127.0.0.1 replicas=x', qr/invalid replicas "x"/],
           ['redis-sentinel://127.0.0.1/m replicas_timeout=1h',
            qr/invalid replicas_timeout "1h"/])
{
    make_path("$dir/conf", "$dir/logs");
    open my $f, '>', "$dir/conf/nginx.conf" or die $!;
    print $f "${mods}events {}\nhttp {\n    llm_store $c->[0];\n}\n";
    close $f;

    my $out = `$nginx -t -p $dir -c conf/nginx.conf -e logs/error.log 2>&1`;
    like($out, qr/$c->[1].*llm_store/, "llm_store $c->[0]: refused");
    unlike($out, qr/secret1/, '  without the password');
}

make_path("$dir/conf", "$dir/logs");
open my $f, '>', "$dir/conf/nginx.conf" or die $!;
print $f "${mods}events {}\nhttp {\n    llm_store redis-sentinel://:p\@h1,"
         . "[::1]:26380,h3:26381/mymaster db=2 sentinel_password=s "
         . "replicas=1 replicas_timeout=50ms;\n}\n";
close $f;
like(`$nginx -t -p $dir -c conf/nginx.conf -e logs/error.log 2>&1`,
     qr/test is successful/, 'a valid sentinel URL, names not resolved');


# 2. a primary, its replica, three sentinels

my ($pport, $rport) = (free_port(), free_port());
my @sports = map { free_port() } 1 .. 3;
my (%pid, @spid);

END {
    local $?;
    stop_redis($_) for grep { $_ } values %pid, @spid;
}

# files of a full sync go with the test's, not in the working directory
my @auth = ('--requirepass', $pass, '--masterauth', $pass,
            '--dir', $dir);

$pid{primary} = start_redis($pport, @auth);
$pid{replica} = start_redis($rport, @auth,
                            '--replicaof', '127.0.0.1', $pport);

# redis-cli, quiet about a server not up yet (the sentinels at first)
sub cli {
    my ($port, $pw, @cmd) = @_;
    open my $err, '>&', \*STDERR or die $!;
    open STDERR, '>', '/dev/null' or die $!;
    open my $fh, '-|', 'redis-cli', '-p', $port, '-a', $pw,
         '--no-auth-warning', '--raw', @cmd or die $!;
    open STDERR, '>&', $err or die $!;
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

ok(wait_for(sub { cli($rport, $pass, 'INFO', 'replication')
                  =~ /master_link_status:up/ }, 10),
   'the replica follows the primary');

for my $i (0 .. 2) {
    my $conf = "$dir/sentinel$i.conf";
    open my $s, '>', $conf or die $!;
    print $s <<"CONF";
port $sports[$i]
bind 127.0.0.1
dir $dir
requirepass $spass
sentinel sentinel-pass $spass
sentinel monitor m 127.0.0.1 $pport 2
sentinel auth-pass m $pass
sentinel down-after-milliseconds m 1000
sentinel failover-timeout m 5000
sentinel parallel-syncs m 1
CONF
    close $s;

    $spid[$i] = fork() // die "fork: $!";

    if ($spid[$i] == 0) {
        open STDOUT, '>', "$dir/sentinel$i.log";
        open STDERR, '>&', \*STDOUT;
        exec 'redis-server', $conf, '--sentinel';
        exit 1;
    }
}

sub sentinel_master {
    my ($port) = @_;
    my %m = split /\n/, cli($port, $spass, 'SENTINEL', 'master', 'm'), -1;
    return \%m;
}

# each sentinel knows the replica and the two others

ok(wait_for(sub {
       for my $p (@sports) {
           my $m = sentinel_master($p);
           return 0 unless ($m->{'num-slaves'} // 0) == 1
                           && ($m->{'num-other-sentinels'} // 0) == 2;
       }
       return 1;
   }, 30), 'three sentinels watch the primary and its replica');

my $url = "redis-sentinel://:$pass\@"
          . join(',', map { "127.0.0.1:$_" } @sports) . '/m';
my $up = "http://127.0.0.1:$mock/v1/chat/completions";

sub http_conf {
    my ($port, $store) = @_;
    return <<"HTTP";
    llm_store $store ttl=10m prefix=t064: flush=100ms;
    server {
        listen 127.0.0.1:$port;
        location = /g {
            llm_pass   $up?tokens=\$arg_n&tps=\$arg_tps&ttft=0;
            llm_model  m;
            llm_prompt "hi";
        }
        location ~ "^/jobs/(?<job>[A-Za-z0-9_-]{22})\$" {
            llm_job \$job;
        }
    }
HTTP
}

my $main = "daemon on;\nmaster_process on;\nworker_processes 1;\n"
           . "worker_shutdown_timeout 10s;";
my $store = "$url db=3 sentinel_password=$spass";

my ($pa, $pb) = (free_port(), free_port());
my $ra = start_nginx('sentinel_a', $main, http_conf($pa, $store));
my $rb = start_nginx('sentinel_b', $main, http_conf($pb, $store));

my $json = { Accept => 'application/json' };

sub job_json {
    my ($port, $job) = @_;
    my ($s, undef, $b) = http_get($port, 'GET', "/jobs/$job",
                                  headers => $json);
    return $s == 200 ? (eval { decode_json($b) } || {}) : {};
}

sub stream_open {
    my ($port, $uri, $until) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
    syswrite($s, "GET $uri HTTP/1.0\r\nHost: localhost\r\n\r\n");

    my $st = { sock => $s, got => '' };
    stream_read($st, $until, 10);

    ($st->{job}) = $st->{got} =~ /^id: ([\w-]+):1$/m;
    return $st;
}

sub stream_read {
    my ($st, $until, $secs) = @_;
    my $s = $st->{sock};

    while (!defined $until || $st->{got} !~ $until) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select($rin, undef, undef, $secs * $slow);
        last unless sysread($s, my $buf, 65536);
        $st->{got} .= $buf;
    }
}

sub stream_rest {
    my ($st) = @_;
    stream_read($st, undef, 30);
    close $st->{sock};
    my (undef, $body) = split /\r\n\r\n/, $st->{got}, 2;
    return sse_events($body // '');
}

sub text_of {
    return join '', map { (eval { decode_json($_->{data}) } || {})->{text}
                          // '' }
                    grep { $_->{event} eq 'delta' } @_;
}

sub final_text { (eval { decode_json($_[-1]{data}) } || {})->{text} // '' }


# 3. a job through the sentinels' primary

my ($s, undef, $body) = http_get($pa, 'GET', '/g?n=5&tps=0');
my @ev = sse_events($body);
my ($job) = ($ev[0]{id} // '') =~ /^([\w-]+):1$/;

is($ev[-1]{event}, 'complete', 'a job on A');
is(job_json($pb, $job)->{state}, 'completed', '  completed on B');
is(cli($pport, $pass, '-n', 3, 'HGET', "t064:{$job}:job", 'state'),
   'completed', '  stored on the primary');

my $logged = "redis-sentinel://"
             . join(',', map { "127.0.0.1:$_" } @sports) . '/m';
my $msg = "redis store: $logged: the primary is 127.0.0.1:$pport";
like(error_log($ra), qr/\[notice\].*\Q$msg\E/,
     'the primary is logged, the password is not');
unlike(error_log($ra), qr/\Q$pass\E|\Q$spass\E/, '  nor the sentinels\'');


# 4. the primary dies in the middle of a stream

my $st = stream_open($pa, '/g?n=150&tps=10', qr/^id: [\w-]+:10$/m);
$job = $st->{job};
ok($job, 'a stream runs on A');

# the last event the other client had before the failover
my $k = 10;

ok(wait_for(sub { (job_json($pb, $job)->{state} // '') eq 'running' }, 3),
   '  B sees it running');

stop_redis(delete $pid{primary});

ok(wait_for(sub { cli($sports[0], $spass, 'SENTINEL',
                      'get-master-addr-by-name', 'm')
                  eq "127.0.0.1\n$rport" }, 30),
   'the sentinels promote the replica');

ok(wait_for(sub { error_log($ra) =~ /the primary is 127\.0\.0\.1:$rport/ },
            15),
   'A follows the failover');

# a resume on B, after the failover, while the stream goes on on A

my ($rs, undef, $rb_body) = http_get($pb, 'GET', "/jobs/$job",
                                     headers => {
                                         Accept => 'text/event-stream',
                                         'Last-Event-ID' => "$job:$k" },
                                     timeout => 30 * $slow);
my @ev_b = sse_events($rb_body);
my @ev_a = stream_rest($st);

is($ev_a[-1]{event}, 'complete', 'the stream on A goes on to its end');
is($rs, 200, 'B resumes the job after the failover');
is($ev_b[-1]{event}, 'complete', '  to its end');
# missed deltas may come merged (docs/jobs.md): their text is what counts

my @seq = map { ($_->{id} =~ /^\Q$job\E:(\d+)$/)[0] // 0 } @ev_b;
my $ordered = @seq && $seq[0] > $k;
for (1 .. $#seq) { $ordered = 0 if $seq[$_] <= $seq[$_ - 1] }
ok($ordered, '  from the first event it missed, in order, none twice');
is(text_of(@ev_b),
   text_of(grep { ($_->{id} =~ /:(\d+)$/)[0] > $k } @ev_a),
   '  with exactly the text it missed');
is($seq[-1], ($ev_a[-1]{id} =~ /:(\d+)$/)[0], '  up to the last event');
is(final_text(@ev_b), final_text(@ev_a), '  and the same text');

my $j = job_json($pb, $job);
is($j->{state}, 'completed', 'GET on B: completed');
is($j->{text}, final_text(@ev_a), '  with the whole text');

like(error_log($ra), qr/redis store: .*: (connection lost|cannot connect)/,
     'A logged the lost primary');


# 5. the new primary holds less of a job than its last confirmed write (a
#    replica that lagged): the job's keys go back to an earlier copy in the
#    middle of a stream; A's next write finds them behind its marks and
#    writes the job again whole

sub r { cli($rport, $pass, '-n', 3, @_) }

sub nevents { (split /\n/, r('HGET', "t064:{$_[0]}:job", 'nevents'))[0] // 0 }

my $copy = "for i = 1, #KEYS, 2 do "
           . "redis.call('copy', KEYS[i], KEYS[i + 1], 'replace') end";

$st = stream_open($pa, '/g?n=60&tps=20', qr/^id: [\w-]+:2$/m);
$job = $st->{job};

my @keys = map { ("t064:{$job}:$_", "t064:{$job}:old-$_") }
               qw(job text events);

ok(wait_for(sub { nevents($job) >= 10 }, 5), 'a job on the new primary');
r('EVAL', $copy, 6, @keys);

ok(wait_for(sub { nevents($job) >= 30 }, 5), '  goes on');
r('EVAL', $copy, 6, reverse @keys);
cmp_ok(nevents($job), '<', 30, '  and goes back in Redis');

@ev_a = stream_rest($st);
is($ev_a[-1]{event}, 'complete', 'the stream on A goes on to its end');

ok(wait_for(sub { r('GET', "t064:{$job}:text") eq final_text(@ev_a) }, 5),
   'Redis has the whole text again');
is(r('XLEN', "t064:{$job}:events"), nevents($job), '  and all the events');

($rs, undef, $rb_body) = http_get($pb, 'GET', "/jobs/$job",
                                  headers => {
                                      Accept => 'text/event-stream',
                                      'Last-Event-ID' => "$job:1" });
@ev_b = sse_events($rb_body);
is(text_of(@ev_b), text_of(@ev_a[1 .. $#ev_a]),
   'a resume on B from the first event gets the rest');
like(error_log($ra), qr/lost job \Q$job\E, writing it again/,
     'the rewrite is logged');


# 6. replicas=1: a write is confirmed once a replica has it

$pid{replica2} = start_redis($pport, @auth, '--replicaof', '127.0.0.1',
                             $rport);

ok(wait_for(sub { cli($pport, $pass, 'INFO', 'replication')
                  =~ /master_link_status:up/ }, 10),
   'a replica of the new primary');

my $pc = free_port();
my $rc = start_nginx('sentinel_c', $main,
                     http_conf($pc, "$store replicas=1 "
                                    . "replicas_timeout=200ms"));

($s, undef, $body) = http_get($pc, 'GET', '/g?n=5&tps=0');
@ev = sse_events($body);
($job) = ($ev[0]{id} // '') =~ /^([\w-]+):1$/;
is($ev[-1]{event}, 'complete', 'a job with replicas=1');
is(cli($pport, $pass, '-n', 3, 'HGET', "t064:{$job}:job", 'state'),
   'completed', '  on the replica');
unlike(error_log($rc), qr/not confirmed/, '  confirmed');

kill 'STOP', $pid{replica2};

my $t0 = time;
($s, undef, $body) = http_get($pc, 'GET', '/g?n=5&tps=0');
my $took = time - $t0;
@ev = sse_events($body);
($job) = ($ev[0]{id} // '') =~ /^([\w-]+):1$/;

is($ev[-1]{event}, 'complete', 'the replica stopped: a job ends');
cmp_ok($took, '>=', 0.9, '  its final event held (not confirmed)');
like(error_log($rc),
     qr/\[error\].*: writes reached 0 of 1 replicas in 200 ms, not confirmed/,
     '  logged');

kill 'CONT', $pid{replica2};

ok(wait_for(sub { error_log($rc) =~ /writes reach 1 replicas again/ }, 10),
   'the replica back: confirmed again');
is(cli($pport, $pass, '-n', 3, 'HGET', "t064:{$job}:job", 'state'),
   'completed', '  the job on the replica');


# 7. a sentinel down: the next one is asked

sub connections {
    return (cli($_[0], $spass, 'INFO', 'stats')
            =~ /total_connections_received:(\d+)/)[0] // 0;
}

stop_redis($spid[0]);
$spid[0] = 0;

my $asked = connections($sports[1]);
cli($rport, $pass, 'CLIENT', 'KILL', 'TYPE', 'normal');

($s, undef, $body) = http_get($pa, 'GET', '/g?n=5&tps=0');
@ev = sse_events($body);
($job) = ($ev[0]{id} // '') =~ /^([\w-]+):1$/;
is($ev[-1]{event}, 'complete', 'the first sentinel down: a job on A');
ok(wait_for(sub { (job_json($pb, $job)->{state} // '') eq 'completed' }, 5),
   '  completed on B');
# the test's own INFO is one of them
cmp_ok(connections($sports[1]) - $asked, '>', 1,
       '  the second sentinel asked');
unlike(error_log($ra), qr/no sentinel gives the primary/,
       '  no failure logged');

unlike(join('', map { error_log($_) } $ra, $rb, $rc),
       qr/\[(?:alert|crit|emerg)\]/, 'no alerts');

stop_nginx($_) for $ra, $rb, $rc;

done_testing();
