# The Redis store on a Redis Cluster of three primaries (each with a
# replica) started by this test: jobs go to the node of their slot (the
# job id is the hash tag), another instance follows them, a job's slot
# migrated to another node in the middle of a stream (ASK while it moves,
# MOVED after) loses nothing, nor does a failover of its node.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use File::Path qw(make_path remove_tree);
use Time::HiRes qw(sleep);
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
my $dir = ($ENV{TEST_NGINX_SERVROOT} || 't/servroot') . '_cluster';

my $nginx = $ENV{TEST_NGINX_BINARY} || 'nginx';
my $mods = join '', map { "load_module $_;\n" }
                    split ' ', $ENV{TEST_NGINX_LOAD_MODULES} || '';


# 1. configuration errors

remove_tree($dir);

for my $c (['redis-cluster://:secret1@127.0.0.1:x', qr/invalid server port/],
           ['redis-cluster://:secret1@127.0.0.1/2', qr/no database/],
           ['redis-cluster://127.0.0.1 db=2', qr/invalid parameter "db"/],
           ['redis-cluster://127.0.0.1 sentinel_password=secret1',
            qr/invalid parameter "sentinel_password"/])
{
    make_path("$dir/conf", "$dir/logs");
    open my $f, '>', "$dir/conf/nginx.conf" or die $!;
    print $f "${mods}events {}\nhttp {\n    llm_store $c->[0];\n}\n";
    close $f;

    my $out = `$nginx -t -p $dir -c conf/nginx.conf -e logs/error.log 2>&1`;
    like($out, qr/$c->[1].*llm_store/, "llm_store $c->[0]: refused");
    unlike($out, qr/secret1/, '  without the password');
}


# 2. three primaries

# a node's cluster bus listens on its port + 10000: both must be free
sub node_port {
    for (1 .. 100) {
        my $p = free_port();
        next if $p > 55000;
        my $bus = IO::Socket::INET->new(Listen => 1,
                                        LocalAddr => '127.0.0.1',
                                        LocalPort => $p + 10000,
                                        Proto => 'tcp', ReuseAddr => 1)
            or next;
        close $bus;
        return $p;
    }
    die "no free port for a cluster node\n";
}

my @ports;
while (@ports < 6) {
    my $p = node_port();
    push @ports, $p unless grep { abs($_ - $p) == 10000 || $_ == $p }
                                @ports;
}

my %pid;

END { local $?; stop_redis($_) for grep { $_ } values %pid }

for my $p (@ports) {
    $pid{$p} = start_redis($p, '--requirepass', $pass, '--masterauth', $pass,
                           '--dir', $dir, '--cluster-enabled', 'yes',
                           '--cluster-config-file', "nodes-$p.conf",
                           '--cluster-node-timeout', 2000,
                           '--cluster-require-full-coverage', 'no');
}

# redis-cli, quiet about what it says on its error output
sub cli {
    my ($port, @cmd) = @_;
    open my $err, '>&', \*STDERR or die $!;
    open STDERR, '>', '/dev/null' or die $!;
    open my $fh, '-|', 'redis-cli', '-p', $port, '-a', $pass,
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

cli($ports[0], '--cluster', 'create', map({ "127.0.0.1:$_" } @ports),
    '--cluster-replicas', 1, '--cluster-yes');

sub alive { grep { $pid{$_} } @ports }

ok(wait_for(sub { !grep { cli($_, 'CLUSTER', 'INFO')
                          !~ /cluster_state:ok/ } alive() }, 20),
   'a cluster of three primaries and three replicas');

my %id_of = map { $_ => cli($_, 'CLUSTER', 'MYID') } @ports;

# the primaries, as a live node sees them
sub primaries {
    return map { /:(\d+)\@/ ? $1 : () }
           grep { /\bmaster\b/ && !/\bfail\b/ }
           split /\n/, cli((alive())[0], 'CLUSTER', 'NODES');
}

# the port of the node that has a key
sub node_of {
    my ($key) = @_;
    my $slot = cli((alive())[0], 'CLUSTER', 'KEYSLOT', $key);
    for my $line (split /\n/, cli((alive())[0], 'CLUSTER', 'NODES')) {
        my ($id, $addr, undef, undef, undef, undef, undef, undef, @ranges)
            = split ' ', $line;
        my ($port) = $addr =~ /:(\d+)/;
        for (@ranges) {
            my ($s, $e) = /^(\d+)(?:-(\d+))?$/ or next;
            return $port if $slot >= $s && $slot <= ($e // $s);
        }
    }
    return 0;
}

my $up = "http://127.0.0.1:$mock/v1/chat/completions";

sub http_conf {
    my ($port) = @_;
    return <<"HTTP";
    llm_store redis-cluster://:$pass\@127.0.0.1:$ports[0] ttl=10m
              prefix=t065: flush=100ms;
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

my ($pa, $pb) = (free_port(), free_port());
my $ra = start_nginx('cluster_a', $main, http_conf($pa));
my $rb = start_nginx('cluster_b', $main, http_conf($pb));

my $json = { Accept => 'application/json' };

sub job_json {
    my ($port, $job) = @_;
    my ($s, undef, $b) = http_get($port, 'GET', "/jobs/$job",
                                  headers => $json);
    return $s == 200 ? (eval { decode_json($b) } || {}) : {};
}

sub text_of {
    return join '', map { (eval { decode_json($_->{data}) } || {})->{text}
                          // '' }
                    grep { $_->{event} eq 'delta' } @_;
}

sub final_text { (eval { decode_json($_[-1]{data}) } || {})->{text} // '' }


# 3. jobs on the nodes of their slots

my (%nodes, @wrong, @unseen);

for (1 .. 12) {
    my (undef, undef, $body) = http_get($pa, 'GET', '/g?n=3&tps=0');
    my @ev = sse_events($body);
    my ($job) = ($ev[0]{id} // '') =~ /^([\w-]+):1$/;
    my $node = node_of("t065:{$job}:job");

    $nodes{$node}++;

    push @wrong, $job
        unless ($ev[-1]{event} // '') eq 'complete'
               && cli($node, 'HGET', "t065:{$job}:job", 'state')
                  eq 'completed';
    push @unseen, $job
        unless (job_json($pb, $job)->{state} // '') eq 'completed';
}

is("@wrong", '', '12 jobs stored completed on the nodes of their slots');
cmp_ok(scalar(keys %nodes), '>=', 2, '  on more than one node');
is("@unseen", '', '  and seen completed on B');

# a redirection counts on the node that sends it
sub redirections {
    my ($type) = @_;
    my $n = 0;
    for my $p (alive()) {
        $n += (cli($p, 'INFO', 'errorstats')
               =~ /errorstat_$type:count=(\d+)/)[0] // 0;
    }
    return $n;
}

is(redirections('MOVED'), 0, '  each to its node at once (no MOVED)');

my @maps = error_log($ra) =~ /(redis store: [^\n]*slot map of 3 nodes)/g;
is(scalar @maps, 1, 'the slot map asked for once');
unlike(error_log($ra), qr/\Q$pass\E/, '  the password not logged');


# 4. the slot of a running job moves to another node: ASK while its keys
#    are on the new node and the slot is not yet, MOVED after

my $st_sock = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$pa") or die $!;
syswrite($st_sock, "GET /g?n=120&tps=15 HTTP/1.0\r\nHost: localhost\r\n\r\n");

my $got = '';
sub read_until {
    my ($until, $secs) = @_;
    while (!defined $until || $got !~ $until) {
        my $rin = '';
        vec($rin, fileno($st_sock), 1) = 1;
        last unless select($rin, undef, undef, $secs * $slow);
        last unless sysread($st_sock, my $buf, 65536);
        $got .= $buf;
    }
}

read_until(qr/^id: [\w-]+:10$/m, 10);
my ($job) = $got =~ /^id: ([\w-]+):1$/m;
ok($job, 'a stream on A');

ok(wait_for(sub { (job_json($pb, $job)->{state} // '') eq 'running' }, 3),
   '  B sees it running');

my $key = "t065:{$job}:job";
my $slot = cli($ports[0], 'CLUSTER', 'KEYSLOT', $key);
my $from = node_of($key);
my ($to) = grep { $_ != $from } primaries();

my $asking = sub {
    (cli($to, 'INFO', 'commandstats') =~ /cmdstat_asking:calls=(\d+)/)[0]
    // 0;
};
my $asked = $asking->();

cli($to, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $id_of{$from});
cli($from, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $id_of{$to});

my @keys = split /\n/, cli($from, 'CLUSTER', 'GETKEYSINSLOT', $slot, 100);
cli($from, 'MIGRATE', '127.0.0.1', $to, '', 0, 5000, 'AUTH', $pass,
    'KEYS', @keys);

ok(wait_for(sub { $asking->() > $asked }, 5),
   'the keys moved: writes follow ASK to the new node');
cmp_ok(redirections('ASK'), '>', 0, '  after an ASK');
cmp_ok(cli($to, 'CLUSTER', 'COUNTKEYSINSLOT', $slot), '>=', 3,
       '  the job is there');

cli($_, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $id_of{$to}) for primaries();

ok(wait_for(sub { my @m = error_log($ra) =~ /(slot map of 3 nodes)/g;
                 @m == 2 }, 10),
   'the slot moved: after MOVED, A asks for the map again');
cmp_ok(redirections('MOVED'), '>', 0, '  a MOVED');

read_until(undef, 30);
close $st_sock;
my (undef, $body) = split /\r\n\r\n/, $got, 2;
my @ev_a = sse_events($body // '');

is($ev_a[-1]{event}, 'complete', 'the stream on A goes on to its end');

ok(wait_for(sub { cli($to, 'HGET', $key, 'state') eq 'completed' }, 5),
   'the job completed on its new node');
is(cli($to, 'GET', "t065:{$job}:text"), final_text(@ev_a),
   '  with the whole text');
is(cli($to, 'XLEN', "t065:{$job}:events"), scalar(@ev_a),
   '  and all the events');

my ($rs, undef, $rb_body) = http_get($pb, 'GET', "/jobs/$job",
                                     headers => {
                                         Accept => 'text/event-stream',
                                         'Last-Event-ID' => "$job:10" });
my @ev_b = sse_events($rb_body);
is($rs, 200, 'B resumes it from the tenth event');
is(text_of(@ev_b), text_of(grep { ($_->{id} =~ /:(\d+)$/)[0] > 10 } @ev_a),
   '  with exactly the text it missed');



# 5. the primary of a running job dies: its replica takes over

$st_sock = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$pa") or die $!;
syswrite($st_sock, "GET /g?n=150&tps=15 HTTP/1.0\r\nHost: localhost\r\n\r\n");
$got = '';

read_until(qr/^id: [\w-]+:10$/m, 10);
($job) = $got =~ /^id: ([\w-]+):1$/m;
ok($job, 'a stream on A');

$key = "t065:{$job}:job";
$from = node_of($key);

ok(wait_for(sub { cli($from, 'HGET', $key, 'state') eq 'running' }, 3),
   '  stored running on its node');

stop_redis(delete $pid{$from});

ok(wait_for(sub { my $n = node_of($key); $n && $n != $from }, 20),
   'its replica is the primary of its slot');
$to = node_of($key);

read_until(undef, 30);
close $st_sock;
(undef, $body) = split /\r\n\r\n/, $got, 2;
@ev_a = sse_events($body // '');

is($ev_a[-1]{event}, 'complete', 'the stream on A goes on to its end');

ok(wait_for(sub { cli($to, 'HGET', $key, 'state') eq 'completed' }, 10),
   'the job completed on the new primary');
is(cli($to, 'GET', "t065:{$job}:text"), final_text(@ev_a),
   '  with the whole text');

($rs, undef, $rb_body) = http_get($pb, 'GET', "/jobs/$job",
                                  headers => {
                                      Accept => 'text/event-stream',
                                      'Last-Event-ID' => "$job:10" });
@ev_b = sse_events($rb_body);
is(text_of(@ev_b), text_of(grep { ($_->{id} =~ /:(\d+)$/)[0] > 10 } @ev_a),
   'B resumes it with exactly the text it missed');
like(error_log($ra), qr/cannot connect: 127\.0\.0\.1:$from: |connection lost/,
     'A logged the lost node');

unlike(error_log($ra) . error_log($rb), qr/\[(?:alert|crit|emerg)\]/,
       'no alerts');
unlike(error_log($ra) . error_log($rb), qr/redis store: .*(MOVED|ASK) /,
       'redirections are not errors');

stop_nginx($_) for $ra, $rb;

done_testing();
