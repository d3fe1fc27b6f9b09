# Fault matrix, Redis: the Redis store killed (and restarted empty),
# paused (SIGSTOP) and cut off by a network partition, at each phase of a
# job: before it starts, in the middle of its stream, between two
# pipeline steps, at its final write, and while a client resumes it.
# For each: what the client sees (the whole stream, ending with
# "complete"), what Redis keeps once the fault is over (the completed
# job, all its text and events), what another instance sees, and that no
# worker crashed.
#
# Instance A reaches Redis through a small TCP proxy in this test: a
# partition is the proxy stopped (SIGSTOP: connections open, nothing
# passes, as when packets are dropped), while the test and instance B
# still reach Redis directly.  Every fault lasts $hold seconds, or until
# the client's stream is over.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events start_redis stop_redis wait_for);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $hold = 2 * $slow;

my $rport = free_port();
my $redis_pid = eval { start_redis($rport) };

plan skip_all => 'redis-server cannot start' unless $redis_pid;

my $pport = free_port();
my $proxy_pid = start_proxy($pport, $rport);

# a stopped process is killed as well as a running one
END {
    local $?;
    if ($proxy_pid) {
        kill 'KILL', $proxy_pid;
        waitpid $proxy_pid, 0;
    }
    stop_redis($redis_pid);
}


# the proxy: one process relaying every connection both ways

sub start_proxy {
    my ($port, $to) = @_;

    my $l = IO::Socket::INET->new(Listen => 64, LocalAddr => '127.0.0.1',
                                  LocalPort => $port, ReuseAddr => 1)
        or die "proxy: $!";

    my $pid = fork() // die "fork: $!";

    if ($pid) {
        close $l;
        return $pid;
    }

    my $sel = IO::Select->new($l);
    my %peer;

    while (1) {
        for my $s ($sel->can_read) {
            if ($s == $l) {
                my $c = $l->accept or next;
                my $u = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$to");

                if (!$u) {
                    close $c;
                    next;
                }

                $peer{$c} = $u;
                $peer{$u} = $c;
                $sel->add($c, $u);
                next;
            }

            my $o = $peer{$s} or next;
            my $n = sysread($s, my $buf, 65536);

            if (!$n) {
                $sel->remove($s, $o);
                delete @peer{$s, $o};
                close $s;
                close $o;
                next;
            }

            while (length $buf) {
                my $w = syswrite($o, $buf) or last;
                substr($buf, 0, $w) = '';
            }
        }
    }

    POSIX::_exit(0);
}


# the faults: on, off

my %fault = (
    kill      => [sub { stop_redis($redis_pid); $redis_pid = 0 },
                  sub { $redis_pid = start_redis($rport) }],
    pause     => [sub { kill 'STOP', $redis_pid },
                  sub { kill 'CONT', $redis_pid }],
    partition => [sub { kill 'STOP', $proxy_pid },
                  sub { kill 'CONT', $proxy_pid }],
);


my $up = "http://127.0.0.1:$mock/v1/chat/completions?ttft=0";
my @words = map { "w$_" } 1 .. 20;
my $reply = join '+', @words;
my $text = join ' ', @words;
my $short = 'e1+e2+e3+e4+e5+e6';
my $long = join '+', map { "l$_" } 1 .. 40;

sub http {
    my ($port, $store) = @_;

    return <<"HTTP";
    llm_store redis://127.0.0.1:$store ttl=10m prefix=t110: flush=100ms;
    llm_model m;

    llm_pipeline two {
        step one {
            pass   "$up&tps=0&reply=first";
            prompt "one";
        }
        step two {
            pass   "$up&tps=10&reply=$reply";
            prompt "two \$llm_step_one";
            stream on;
        }
    }

    server {
        listen 127.0.0.1:$port;

        location = /gen {
            llm_pass   "$up&tps=10&reply=$reply";
            llm_prompt "hi";
        }
        location = /end {
            llm_pass   "$up&tps=4&reply=$short";
            llm_prompt "hi";
        }
        location = /long {
            llm_pass   "$up&tps=2&reply=$long";
            llm_prompt "hi";
        }
        location = /pipe {
            llm_pipeline two;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_job \$id;
        }
    }
HTTP
}

my $main = "daemon on;\nmaster_process on;\nworker_processes 1;\n"
           . "worker_shutdown_timeout 5s;";
my ($pa, $pb) = (free_port(), free_port());
my $ra = start_nginx('fault_redis_a', $main, http($pa, $pport));
my $rb = start_nginx('fault_redis_b', $main, http($pb, $rport));


sub r {
    my $cmd = join ' ', map { "'$_'" } @_;
    my $out = `redis-cli -p $rport --raw $cmd 2>/dev/null`;
    chomp $out;
    return $out;
}


# a stream read in steps

sub stream_open {
    my ($port, $uri, %hdr) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
    my $h = join '', map { "$_: $hdr{$_}\r\n" } keys %hdr;
    syswrite($s, "GET $uri HTTP/1.0\r\nHost: localhost\r\n$h\r\n");

    return { sock => $s, got => '' };
}

# reads until "until" matches, the server closes or "secs" have passed
sub stream_read {
    my ($st, $until, $secs) = @_;
    my $end = time + $secs;

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

sub body_of { (split /\r\n\r\n/, $_[0]{got}, 2)[1] // '' }
sub status_of { ($_[0]{got} =~ m{^HTTP/1\.\d (\d+)})[0] // 0 }

my $final = qr/event: (?:complete|error)\ndata: [^\n]*\n\n/;

sub events_text {
    my $t = '';
    for (@_) {
        $t .= decode_json($_->{data})->{text} if $_->{event} eq 'delta';
    }
    return $t;
}

sub deltas { qr/(?:event: delta\n[^\n]*\n\n.*){$_[0]}/s }


# One scenario: the client's stream with the fault on from "phase" for
# $hold seconds; returns what the client got: (job id, its events), and
# for a resume what the resumed streams got.

sub scenario {
    my ($kind, $phase) = @_;
    my ($on, $off) = @{ $fault{$kind} };
    my ($st, @extra);

    if ($phase eq 'start') {
        $on->();
        $st = stream_open($pa, '/gen');
        stream_read($st, $final, $hold);

    } elsif ($phase eq 'mid-stream') {
        $st = stream_open($pa, '/gen');
        stream_read($st, deltas(5), 10 * $slow);
        $on->();
        stream_read($st, $final, $hold);

    } elsif ($phase eq 'between steps') {
        $st = stream_open($pa, '/pipe');
        stream_read($st, qr/event: step\n/, 10 * $slow);
        $on->();
        stream_read($st, $final, $hold);

    } elsif ($phase eq 'final write') {
        # a token every 250 ms: the fault comes before the last one
        $st = stream_open($pa, '/end');
        stream_read($st, deltas(5), 10 * $slow);
        $on->();
        stream_read($st, $final, $hold);

    } else {
        # the client cuts after 5 deltas and resumes on A and on B during
        # the fault, which lasts 6 s, under valgrind too: longer than a
        # read may wait for Redis (a reply in 2 s, sent once more on a new
        # connection), shorter than the 15 s after which a follower calls
        # a job lost
        my $cut = stream_open($pa, '/gen');
        stream_read($cut, deltas(5), 10 * $slow);
        close $cut->{sock};

        my @ev = sse_events(body_of($cut));
        my ($job) = $ev[0]{id} =~ /^([\w-]+):/;
        my $last = $ev[-1]{id};

        # B resumes from what Redis has: the events up to the cut
        wait_for(sub { r('HGET', "t110:{$job}:job", 'nevents') >= @ev }, 3);
        $on->();

        $st = stream_open($pa, '/gen', 'Last-Event-ID' => $last);
        my $b = stream_open($pb, '/gen', 'Last-Event-ID' => $last);
        my $end = time + 6;
        stream_read($st, $final, 6);
        sleep($end - time) if $end > time;
        $off->();
        stream_read($_, $final, 20 * $slow) for $st, $b;
        close $_->{sock} for $st, $b;

        return ($job, [@ev, sse_events(body_of($st))], $b, scalar @ev);
    }

    $off->();
    stream_read($st, $final, 20 * $slow);
    close $st->{sock};

    my @ev = sse_events(body_of($st));
    my ($job) = ($ev[0]{id} // '') =~ /^([\w-]+):/;

    return ($job, \@ev);
}


for my $kind (qw(kill pause partition)) {
    for my $phase ('start', 'mid-stream', 'between steps', 'final write',
                   'resume')
    {
        my ($job, $ev, $b, $ncut) = scenario($kind, $phase);
        my $want = $phase eq 'final write' ? 'e1 e2 e3 e4 e5 e6' : $text;

        ok($job, "$kind, $phase: a job") or next;

        my @ev = @$ev;
        my %seen;
        is(scalar(grep { $seen{$_->{id}}++ } @ev), 0, '  no event twice');
        is($ev[-1]{event}, 'complete', '  the client sees "complete"');
        is(events_text(@ev), $want, '  and every delta');

        if ($b && $kind eq 'partition') {
            # B reads Redis directly: it follows the job, which goes on
            # once A can write again
            my @bev = sse_events(body_of($b));
            is(status_of($b), 200, '  B follows the job during the fault');
            is($bev[-1]{event}, 'complete', '    to its end');
            is(events_text(@ev[0 .. $ncut - 1], @bev), $want,
               '    every delta');

        } elsif ($b) {
            is(status_of($b), 503, '  B cannot read the job: 503');
            like(body_of($b), qr/"code":"store_unavailable"/,
                 '    store_unavailable');
        }

        ok(wait_for(sub { r('HGET', "t110:{$job}:job", 'state')
                          eq 'completed' }, 10),
           '  Redis has the job completed once the fault is over')
            or diag(r('HGETALL', "t110:{$job}:job"));
        is(r('GET', "t110:{$job}:text"), $want, '  all its text');
        is(r('XLEN', "t110:{$job}:events"),
           r('HGET', "t110:{$job}:job", 'nevents'), '  all its events');

        my (undef, undef, $j) = http_get($pb, 'GET', "/jobs/$job",
                                         headers => { Accept =>
                                                      'application/json' });
        is((eval { decode_json($j) } || {})->{state}, 'completed',
           '  B says completed');
    }
}


# A partition longer than 15 s: a follower on B gets job_lost with the
# text so far, the client on A gets everything, Redis gets the job once
# the partition is over

my $st = stream_open($pa, '/long');
stream_read($st, deltas(3), 10 * $slow);
my ($job) = body_of($st) =~ /^id: ([\w-]+):1$/m;
wait_for(sub { r('HGET', "t110:{$job}:job", 'nevents') >= 4 }, 3);

my $b = stream_open($pb, "/jobs/$job", Accept => 'text/event-stream');
stream_read($b, deltas(3), 10 * $slow);
kill 'STOP', $proxy_pid;

ok(stream_read($b, $final, 40 * $slow), 'a long partition: B gives up');
my @bev = sse_events(body_of($b));
is($bev[-1]{event}, 'error', '  with an error event');
like($bev[-1]{data}, qr/"code":"job_lost","message":"[^"]+","text":"l1 l2 l3/,
     '  job_lost, with the text so far');

kill 'CONT', $proxy_pid;
ok(stream_read($st, $final, 40 * $slow), 'A streams on');
my @ev = sse_events(body_of($st));
is($ev[-1]{event}, 'complete', '  to "complete"');
is(events_text(@ev), join(' ', map { "l$_" } 1 .. 40), '  every delta');
ok(wait_for(sub { r('HGET', "t110:{$job}:job", 'state') eq 'completed' }, 10),
   '  Redis has the job completed');

stop_nginx($ra);
stop_nginx($rb);

my $log = error_log($ra) . error_log($rb);
unlike($log, qr/exited on signal|\[(?:alert|crit|emerg)\]/,
       'no worker crashed, no alerts');

done_testing();
