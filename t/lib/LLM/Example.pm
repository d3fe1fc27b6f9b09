package LLM::Example;

# The plumbing of the app tests (t/083, t/09*): an example of examples/
# run the way `make example NAME=...` runs it (util/example.sh: nginx,
# the mock model server, a Redis, on three ports in a row), and the
# readers those tests share: SSE bodies, the mock's counts, a job.

use strict;
use warnings;
use Exporter 'import';
use IO::Socket::INET;
use JSON::PP;
use POSIX ':sys_wait_h';
use Cwd ();
use File::Basename qw(dirname);
use Time::HiRes qw(sleep time);
use LLM::TestServer qw(free_port http_get);

our @EXPORT_OK = qw(example_ports start_example wait_example stop_example
                    run_example slurp events json_of mock_requests read_job);

my $top = Cwd::abs_path(dirname(__FILE__) . '/../../..');

my %running;        # pid => 1, the examples started and not yet stopped
my %log;            # pid => the file of its output
my $last_mock;      # the mock port of the example started last

# a file's contents ('' when it cannot be read)
sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    return <$fh> // '';
}

sub port_free {
    my ($p) = @_;
    my $l = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => $p, ReuseAddr => 1);
    return 0 unless $l;
    close $l;
    return 1;
}

# the first of three free ports in a row, as util/example.sh takes them
# (DEMO_PORT): nginx, the mock, Redis
sub example_ports {
    my $port;
    for (1 .. 50) {
        $port = free_port();
        last if $port < 65000 && port_free($port + 1) && port_free($port + 2);
    }
    return $port;
}

# start_example(name, port, log => FILE, timeout => SECONDS, once => 1):
# forks util/example.sh NAME with DEMO_PORT=port and without the provider
# variables (so the mock answers), its output in "log" (by default
# build/example-NAME.log), under timeout(1) when "timeout" is given, with
# EXAMPLE_ONCE=1 when "once" is.  The name "demo" runs util/demo.sh, the
# demo of `make demo`.  Returns its pid; stop_example stops it, at the
# latest when the test ends.
sub start_example {
    my ($name, $port, %o) = @_;

    my $log = $o{log} // "$top/build/example-$name.log";
    unlink $log;

    my $pid = fork // die "fork: $!";

    if ($pid == 0) {
        chdir $top or die "chdir $top: $!";
        $ENV{DEMO_PORT} = $port;
        delete @ENV{qw(OPENAI_API_KEY ANTHROPIC_API_KEY EXAMPLE_UPSTREAM
                       EXAMPLE_ONCE DEMO_ONCE)};
        $ENV{EXAMPLE_ONCE} = $ENV{DEMO_ONCE} = 1 if $o{once};
        open STDOUT, '>', $log or die "$log: $!";
        open STDERR, '>&', \*STDOUT or die "dup: $!";
        my @run = $name eq 'demo' ? ('util/demo.sh') : ('util/example.sh', $name);
        { exec(($o{timeout} ? ('timeout', $o{timeout}) : ()), @run) }
        print STDERR "exec @run: $!\n";
        POSIX::_exit(127);
    }

    $running{$pid} = 1;
    $log{$pid} = $log;
    $last_mock = $port + 1;
    return $pid;
}

# wait_example(pid, seconds): waits (40 s at most by default) until the
# example says "example: serving on" (the demo: "demo: open"), or exits;
# returns its output so far
sub wait_example {
    my ($pid, $secs) = @_;
    my $log = $log{$pid};
    my $end = time + ($secs // 40);

    while (1) {
        my $out = slurp($log);
        return $out if $out =~ /^(example: serving on|demo: open) /m
                       || time > $end;
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $running{$pid};
            return slurp($log);
        }
        sleep 0.1;
    }
}

# run_example(name, port, %o): runs the example for one request
# (EXAMPLE_ONCE=1, 60 s at most by default), returns its output
sub run_example {
    my ($name, $port, %o) = @_;
    my $pid = start_example($name, $port, once => 1, timeout => 60, %o);
    my $log = $log{$pid};
    waitpid($pid, 0);
    delete $running{$pid};
    return slurp($log);
}

sub descendants {
    my ($pid) = @_;
    my @kids = split ' ', join ' ', map { slurp($_) }
                                    glob "/proc/$pid/task/*/children";
    return map { ($_, descendants($_)) } @kids;
}

# stop_example(pid): TERMs the example and ends its final `sleep 3600`
# (bash runs the trap that stops nginx, the mock and Redis only once that
# sleep is over); returns when it has gone (30 s at most).  Once per pid:
# again, or for a pid it did not start, it does nothing.
sub stop_example {
    my ($pid) = @_;
    return unless $pid && delete $running{$pid};

    kill 'TERM', $pid;

    for (1 .. 300) {
        my @sleep = grep { slurp("/proc/$_/cmdline") =~ /^sleep\x003600\x00/ }
                    descendants($pid);
        kill 'TERM', @sleep if @sleep;
        my $r = waitpid($pid, WNOHANG);
        return if $r == $pid || $r == -1;
        sleep 0.1;
    }
}

END {
    local $?;
    stop_example($_) for keys %running;
}

# the events of an SSE body that have data: a list of { id, event, raw,
# data } (raw: the data line; data: it decoded, or { unparsed => raw }
# when it is not JSON)
sub events {
    my ($body) = @_;
    my @ev;

    for my $block (split /\r?\n\r?\n/, $body // '') {
        my %e;
        for my $line (split /\r?\n/, $block) {
            $e{id} = $1 if $line =~ /^id: (.*)/;
            $e{event} = $1 if $line =~ /^event: (.*)/;
            $e{raw} = $1 if $line =~ /^data: (.*)/;
        }
        next unless defined $e{raw};
        $e{data} = eval { decode_json($e{raw}) } // { unparsed => $e{raw} };
        push @ev, \%e;
    }

    return @ev;
}

# a body decoded as JSON ({} when it is not)
sub json_of {
    my ($body) = @_;
    return eval { decode_json($body // '') } // {};
}

# mock_requests(port, tag): the requests the mock has counted (for
# "tag", when given), -1 when it does not answer; the port is by default
# the mock of the example started last
sub mock_requests {
    my ($port, $tag) = @_;
    my (undef, undef, $body) = http_get($port // $last_mock, 'GET',
                                        '/stats' . (defined $tag ? "?tag=$tag" : ''));
    return json_of($body)->{requests} // -1;
}

# read_job(port, uri, headers => {...}, state => STATE): the job at uri as
# JSON ({ status => N } when the answer is not 200).  A worker that does
# not run the job reads Redis' copy, up to a flush interval behind: it is
# read again (for 5 s at most) while it is "running" or, given "state",
# until it is in that state.
sub read_job {
    my ($port, $uri, %o) = @_;
    my $j = {};

    for (1 .. 50) {
        my ($st, undef, $body) = http_get($port, 'GET', $uri,
                                          headers => $o{headers} || {});
        return { status => $st } unless $st == 200;
        $j = json_of($body);
        my $state = $j->{state} // '';
        last if defined $o{state} ? $state eq $o{state} : $state ne 'running';
        sleep 0.1;
    }

    return $j;
}

1;
