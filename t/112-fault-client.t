# Fault matrix, clients: a client that cuts while sending its request
# body, while its final event is written, and during the replay of a
# resume (of a finished job, and of a running one); a client that reads a
# replay slowly; 1,000 clients resuming the same running job at once.
# For each: what the client (and the next one) sees, what the store keeps,
# and that no worker crashed.  (Cuts before the first token and
# mid-stream: t/040-client.t, t/050-resume.t; a slow reader of a live
# stream: t/041-slow-client.t.)

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Poll qw(POLLIN);
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVBUF SO_LINGER pack_sockaddr_in inet_aton);
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events wait_for);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $run = $$;
my $up = "http://127.0.0.1:$mock/v1/chat/completions";
my $port = free_port();

my $root = start_nginx('fault_client',
                       "daemon on;\nmaster_process on;\nworker_processes 2;",
                       <<"HTTP", 'worker_connections 4096;');
    llm_model  m;
    llm_prompt "hi";

    server {
        listen 127.0.0.1:$port reuseport sndbuf=8k;

        location = /big {
            llm_pass $up?tokens=2000&tps=0&ttft=0&token_size=100&tag=\$arg_tag;
        }
        location = /slow {
            llm_pass $up?tokens=60&tps=10&ttft=0&tag=\$arg_tag;
        }
        location = /post {
            llm_pass $up?tokens=5&tps=0&ttft=0&tag=\$arg_tag;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_job \$id;
        }
        location = /health {
            llm_status;
        }
    }
HTTP

sub stats {
    my ($tag) = @_;
    my (undef, undef, $b) = http_get($mock, 'GET', "/stats?tag=$tag$run");
    return decode_json($b || '{}');
}

sub job_json {
    my ($job) = @_;
    my (undef, undef, $b) = http_get($port, 'GET', "/jobs/$job",
                                     headers => { Accept =>
                                                  'application/json' });
    return eval { decode_json($b) } || {};
}

sub text_of {
    return join '', map { decode_json($_->{data})->{text} }
                    grep { $_->{event} eq 'delta' } @_;
}

# a connection with a small receive window (set before connecting, so
# that it is advertised): the server's writes block soon
sub small_conn {
    my $s = IO::Socket::INET->new(Proto => 'tcp') or die $!;
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, pack('i', 4096));
    $s->connect(pack_sockaddr_in($port, inet_aton('127.0.0.1'))) or die $!;
    return $s;
}

# reads from a socket until "until" matches or it closes
sub read_until {
    my ($s, $until, $secs) = @_;
    my $got = '';
    my $end = time + $secs * $slow;

    while ((!defined $until || $got !~ $until) && time < $end) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select($rin, undef, undef, $end - time);
        last unless sysread($s, my $buf, 65536);
        $got .= $buf;
    }

    return $got;
}

my ($st, $h, $body, @ev, $s);


# a finished job of 200 KB of text in 2,000 deltas
($st, $h, $body) = http_get($port, 'GET', "/big?tag=big$run");
my @full = sse_events($body);
my ($big) = $full[0]{id} =~ /^([\w-]+):/;
is($full[-1]{event}, 'complete', 'a big job completes');


# 1. a client cuts during the replay of the finished job: the job is as
#    it was, the next replay is whole

for (1 .. 5) {
    my $s = small_conn();
    syswrite($s, "GET /jobs/$big HTTP/1.0\r\nHost: localhost\r\n"
                 . "Accept: text/event-stream\r\n\r\n");
    read_until($s, qr/event: delta/, 10);
    close $s;
}

($st, $h, $body) = http_get($port, 'GET', "/jobs/$big",
                            headers => { Accept => 'text/event-stream' });
@ev = sse_events($body);
is(text_of(@ev), text_of(@full), 'cut during a replay (5 times): the '
                                 . 'next replay has every delta\'s text');
is($ev[-1]{data}, $full[-1]{data}, '  the same final event');

my $j = job_json($big);
is($j->{state}, 'completed', '  the job is still completed');
is($j->{text}, decode_json($full[-1]{data})->{text}, '  with its text');


# 1b. a client that resets its connection as soon as it has sent its
#     request: the first write fails inside the handler (the job is in
#     this worker, or the memory store answers the health check's probe,
#     at once); the request must be closed once, not again when the
#     handler returns (that used freed memory: "http request count is
#     zero")

for my $uri ("/jobs/$big", "/slow?last_event_id=$big:1", '/health') {
    for (1 .. 20) {
        $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
        setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
        syswrite($s, "GET $uri HTTP/1.0\r\nHost: localhost\r\n"
                     . "Accept: text/event-stream\r\n\r\n");
        close $s;
    }
}

ok(wait_for(sub { (() = error_log($root) =~ /Connection reset by peer/g)
                  >= 60 }, 10),
   'clients reset right after their request (60 times)');
unlike(error_log($root), qr/request count is zero|\[alert\]/,
       '  each request is closed once');
is(job_json($big)->{state}, 'completed', '  the job is still completed');


# 2. a slow reader of the replay: everything, in order, deltas merged at
#    most

$s = small_conn();
syswrite($s, "GET /jobs/$big HTTP/1.0\r\nHost: localhost\r\n"
             . "Accept: text/event-stream\r\n\r\n");
my $got = '';
while (1) {
    my $rin = '';
    vec($rin, fileno($s), 1) = 1;
    last unless select($rin, undef, undef, 10 * $slow);
    my $n = sysread($s, my $buf, 1024);
    last unless $n;
    $got .= $buf;
    sleep 0.002;
}
close $s;

@ev = sse_events((split /\r\n\r\n/, $got, 2)[1] // '');
is($ev[-1]{event}, 'complete', 'a slow reader of a replay gets to the end');
is(text_of(@ev), text_of(@full), '  with every delta\'s text');
my @ids = map { ($_->{id} =~ /:(\d+)$/)[0] } @ev;
is(scalar(grep { $ids[$_] <= $ids[$_ - 1] } 1 .. $#ids), 0,
   '  ids increasing');


# 3. a client cuts during the replay of a resume of a running job: the
#    job runs on (llm_on_disconnect continue), a later resume gets the rest

my $live = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
syswrite($live, "GET /slow?tag=cut$run HTTP/1.0\r\nHost: localhost\r\n\r\n");
$got = read_until($live, qr/(?:event: delta\n.*){20}/s, 10);
close $live;
my ($job) = $got =~ /^id: ([\w-]+):1$/m;
ok($job, 'a running job, its client gone after 20 deltas');

for (1 .. 5) {
    $s = small_conn();
    syswrite($s, "GET /slow HTTP/1.0\r\nHost: localhost\r\n"
                 . "Last-Event-ID: $job:1\r\n\r\n");
    read_until($s, qr/event: delta/, 10);
    close $s;
}

($st, $h, $body) = http_get($port, 'GET', '/slow', timeout => 20 * $slow,
                            headers => { 'Last-Event-ID' => "$job:1" });
@ev = sse_events($body);
is($ev[-1]{event}, 'complete', 'cut during a resume\'s replay (5 times): '
                               . 'a resume follows the job to its end');
is(text_of(@ev), decode_json($ev[-1]{data})->{text},
   '  with every delta after the first event');
is(stats('cut')->{streams_started}, 1, '  one upstream generation only');
is(job_json($job)->{state}, 'completed', '  the job: completed');


# 4. a client cuts while its final event is written (a final event of
#    200 KB through a 4 KB window)

$s = small_conn();
syswrite($s, "GET /big?tag=fin$run HTTP/1.0\r\nHost: localhost\r\n\r\n");
$got = read_until($s, qr/event: complete\n/, 20);
close $s;
like($got, qr/event: complete\n/, 'a client cuts inside its final event');
($job) = $got =~ /^id: ([\w-]+):1$/m;
$j = job_json($job);
is($j->{state}, 'completed', '  the job: completed');
is(length $j->{text}, 2000 * 100, '  with all its text');


# 5. a client cuts while it sends its request body

$s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
syswrite($s, "POST /post?tag=body$run HTTP/1.0\r\nHost: localhost\r\n"
             . "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
             . '{"prompt":"hel');
sleep 0.2;
close $s;
is(stats('body')->{requests}, 0, 'a client cuts in its request body: no '
                                 . 'generation');


# 6. 1,000 clients resume the same running job at once

my $n = 1000;
$live = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
syswrite($live, "GET /slow?tag=many$run HTTP/1.0\r\nHost: localhost\r\n\r\n");
$got = read_until($live, qr/event: delta\n/, 10);
($job) = $got =~ /^id: ([\w-]+):1$/m;

my $poll = IO::Poll->new;
my (%sock, %resp);
for my $i (1 .. $n) {
    my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or last;
    syswrite($c, "GET /jobs/$job HTTP/1.0\r\nHost: localhost\r\n"
                 . "Accept: text/event-stream\r\n\r\n");
    $sock{$i} = $c;
    $resp{$i} = '';
    $poll->mask($c => POLLIN);
}
is(scalar keys %sock, $n, "$n clients resume the job");

my %open = reverse map { ($_ => $sock{$_}) } keys %sock;
my $end = time + 60 * $slow;
while (%open && time < $end) {
    $poll->poll(1);
    for my $c ($poll->handles(POLLIN)) {
        my $i = $open{$c};
        my $r = sysread($c, my $buf, 65536);
        if ($r) {
            $resp{$i} .= $buf;
            next;
        }
        $poll->remove($c);
        close $c;
        delete $open{$c};
    }
}

$got .= read_until($live, undef, 30);
close $live;
my @orig = sse_events((split /\r\n\r\n/, $got, 2)[1] // '');
my $want = $orig[-1]{data};
is($orig[-1]{event}, 'complete', 'the job\'s own client gets to the end');

my @wrong = grep {
    my @e = sse_events((split /\r\n\r\n/, $resp{$_}, 2)[1] // '');
    !@e || $e[-1]{event} ne 'complete' || $e[-1]{data} ne $want
    || text_of(@e) ne decode_json($want)->{text}
} keys %resp;
is(scalar @wrong, 0, "all $n get every delta and the same final event");
is(stats('many')->{streams_started}, 1, '  one upstream generation');
is(job_json($job)->{state}, 'completed', '  the job: completed');


($st) = http_get($port, 'GET', '/jobs/AAAAAAAAAAAAAAAAAAAAAA');
is($st, 404, 'nginx still answers');

stop_nginx($root);

unlike(error_log($root), qr/exited on signal|\[(?:alert|crit|emerg)\]/,
       'no worker crashed, no alerts');

done_testing();
