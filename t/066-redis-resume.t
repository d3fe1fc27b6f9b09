# A client resuming a job through Redis (on another instance, which reads
# it into a mirror) gets exactly the events after its Last-Event-ID, once
# each, with the text they carry, and the read starts at its last event
# rather than at the first: XRANGE from that event (Redis's slow log,
# which lists every command with its arguments, says so).  From its last
# event: only the final one; from the final event or past the end: 204.
# A resume from the middle of a running job follows it to its end, and a
# client from the start on the same instance meanwhile gets every event.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port http_get sse_events
                       start_redis stop_redis wait_for error_log);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $rport = free_port();
my $redis_pid = eval { start_redis($rport) };

plan skip_all => 'redis-server cannot start' unless $redis_pid;

END { local $?; stop_redis($redis_pid) }

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $up = "http://127.0.0.1:$mock/v1/chat/completions";

sub http {
    my ($port) = @_;
    return <<"HTTP";
    llm_store redis://127.0.0.1:$rport ttl=10m prefix=t066:;

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

sub r {
    open my $fh, '-|', 'redis-cli', '-p', $rport, '--raw', @_ or die $!;
    my $out = do { local $/; <$fh> } // '';
    close $fh;
    return $out;
}

sub seq_of { ($_[0]{id} // '') =~ /:(\d+)$/ ? $1 : -1 }

sub deltas { join '', map { decode_json($_->{data})->{text} }
                      grep { $_->{event} eq 'delta' } @_ }

# the text the events after "after" carry, as Redis has the job
sub text_after {
    my ($job, $after) = @_;
    my $text = r('GET', "t066:{$job}:text");
    my @x = split /\n/, r('XRANGE', "t066:{$job}:events", '-', '+');
    my $out = '';

    # --raw: id, then field and value lines (t, o, l)
    while (@x) {
        my ($id, undef, $t, undef, $o, undef, $l) = splice @x, 0, 7;
        my ($seq) = $id =~ /^(\d+)-/;
        $out .= substr($text, $o, $l) if $seq > $after && $t == 1;
    }

    return $out;
}

# the XRANGE commands Redis ran since the last call: their first id
sub xrange_starts {
    my @x = split /\n/, r('SLOWLOG', 'GET', 1000);
    r('SLOWLOG', 'RESET');
    my @starts;
    for my $i (0 .. $#x - 2) {
        push @starts, $x[$i + 2] if $x[$i] eq 'XRANGE';
    }
    return @starts;
}

my $main = "daemon on;\nmaster_process on;\nworker_processes 1;";
my ($pa, $pb) = (free_port(), free_port());
my $ra = start_nginx('resume_a', $main, http($pa));
my $rb = start_nginx('resume_b', $main, http($pb));

r('CONFIG', 'SET', 'slowlog-log-slower-than', 0);
r('CONFIG', 'SET', 'slowlog-max-len', 10000);


# 1. a job run on A to its end, resumed on B

# 10 ms between tokens: each is a delta of its own, even under valgrind
my (undef, undef, $body) = http_get($pa, 'GET', '/g?n=300&tps=100',
                                    timeout => 10 * $slow);
my @all = sse_events($body);
my ($job) = ($all[0]{id} // '') =~ /^([\w-]+):/;
is($all[-1]{event}, 'complete', 'a job completes on A');

my (undef, undef, $j) = http_get($pb, 'GET', "/jobs/$job",
                                 headers => { Accept => 'application/json' });
my $n = (eval { decode_json($j) } || {})->{events} // 0;
cmp_ok($n, '>', 100, "B reads it from Redis: $n events");

my $mid = int($n / 2);
xrange_starts();

for my $k (1, $mid, $n - 2, $n - 1) {
    my ($st, undef, $b) = http_get($pb, 'GET', '/g',
                                   headers => { 'Last-Event-ID' => "$job:$k" },
                                   timeout => 10 * $slow);
    my @starts = xrange_starts();
    my @ev = sse_events($b);
    my @seqs = map { seq_of($_) } @ev;

    is($st, 200, "from event $k: 200");
    is(scalar(grep { $_ <= $k } @seqs), 0, '  only later events');
    is(scalar(grep { $seqs[$_] <= $seqs[$_ - 1] } 1 .. $#seqs), 0,
       '  each once') or diag("@seqs");
    is($ev[-1]{event}, 'complete', '  to the final event');
    is($ev[-1]{data}, $all[-1]{data}, '  which is the one A sent');
    is(seq_of($ev[-1]), $n, '  with the last id');
    is(deltas(@ev), text_after($job, $k), '  the text after the event');
    is(scalar(@ev), 1, '  the final event alone') if $k == $n - 1;
    is("@starts", "$k-0", "  Redis read the events from $k on");
    xrange_starts();
}

for my $k ($n, $n + 1000) {
    my ($st) = http_get($pb, 'GET', '/g',
                        headers => { 'Last-Event-ID' => "$job:$k" });
    is($st, 204, "from event $k: 204, nothing more");
}


# 2. a running job resumed on B from its middle, and followed from its
# start on B meanwhile

sub open_stream {
    my ($port, $uri, $hdrs) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
    syswrite($s, "GET $uri HTTP/1.0\r\nHost: localhost\r\n$hdrs\r\n");
    return $s;
}

# what a stream sends until "until" matches, or until it ends
sub read_stream {
    my ($s, $until) = @_;
    my $got = '';

    while (!$until || $got !~ $until) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select($rin, undef, undef, 20 * $slow);
        last unless sysread($s, my $buf, 65536);
        $got .= $buf;
    }

    return $got;
}

my $sa = open_stream($pa, '/g?n=200&tps=50', '');
($job) = read_stream($sa, qr/^id: [\w-]+:1$/m) =~ /^id: ([\w-]+):1$/m;

ok(wait_for(sub { r('XLEN', "t066:{$job}:events") >= 60 }, 10 * $slow),
   'a running job with 60 events in Redis');

my $sm = open_stream($pb, '/g', "Last-Event-ID: $job:40\r\n");
sleep 0.3;

(undef, undef, $body) = http_get($pb, 'GET', "/jobs/$job",
                                 headers => { Accept => 'text/event-stream' },
                                 timeout => 20 * $slow);
my @start = sse_events($body);
my $mb = read_stream($sm);
close $sm;
close $sa;

my @ev = sse_events((split /\r\n\r\n/, $mb, 2)[1] // '');
my @seqs = map { seq_of($_) } @ev;

is($ev[-1]{event}, 'complete', 'from the middle of a running job: its end');
is(scalar(grep { $_ <= 40 } @seqs), 0, '  only events after 40');
is(scalar(grep { $seqs[$_] <= $seqs[$_ - 1] } 1 .. $#seqs), 0, '  once');
is(deltas(@ev), text_after($job, 40), '  the text after event 40');

is($start[0]{event}, 'start', 'from the start meanwhile: the start event');
is(seq_of($start[0]), 1, '  with the first id');
is($start[-1]{event}, 'complete', '  to the end');
is(deltas(@start), decode_json($start[-1]{data})->{text}, '  all the text');

unlike(error_log($ra) . error_log($rb), qr/corrupt|signal 11|\[alert\]/,
       'no corrupt record, no crash');

stop_nginx($ra);
stop_nginx($rb);

done_testing();
