package LLM::TestServer;

# A private nginx for the plain TAP tests (those that need a client or a
# signal that Test::Nginx::Socket has no section for).  It reads the same
# TEST_NGINX_* environment as the Test::Nginx suite.

use strict;
use warnings;
use Exporter 'import';
use IO::Socket::INET;
use File::Path qw(make_path remove_tree);
use Time::HiRes qw(sleep);

our @EXPORT_OK = qw(start_nginx stop_nginx nginx_pid free_port error_log
                    http_get sse_events start_redis stop_redis wait_for
                    request_on);

sub free_port {
    my $l = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, Proto => 'tcp') or die $!;
    my $p = $l->sockport;
    close $l;
    return $p;
}

# start_redis(port, extra redis-server arguments): a private redis-server
# on 127.0.0.1 without persistence, accepting connections; its pid
sub start_redis {
    my ($port, @args) = @_;

    my $pid = fork() // die "fork: $!";

    if ($pid == 0) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        exec 'redis-server', '--port', $port, '--bind', '127.0.0.1',
             '--save', '', '--appendonly', 'no', @args;
        exit 1;
    }

    for (1 .. 50) {
        return $pid if IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port");
        sleep 0.1;
    }

    die "redis-server did not start\n";
}

# stop_redis(pid): at once, as a crash would
sub stop_redis {
    my ($pid) = @_;
    return unless $pid;
    kill 'KILL', $pid;
    waitpid $pid, 0;
}

# start_nginx(name, main, http[, events]): the server root is
# t/servroot_NAME; "main", "http" and "events" are the main-level,
# http-level and events-level configuration (events: 1024 connections).
sub start_nginx {
    my ($name, $main, $http, $events) = @_;

    my $root = ($ENV{TEST_NGINX_SERVROOT} || 't/servroot') . "_$name";
    my $mods = $ENV{TEST_NGINX_LOAD_MODULES} || '';

    remove_tree($root);
    make_path("$root/conf", "$root/logs");

    my $load = join '', map { "load_module $_;\n" } split ' ', $mods;
    my $user = $> == 0 ? "user root;\n" : '';

    open my $fh, '>', "$root/conf/nginx.conf" or die $!;
    print $fh "$load${user}pid logs/nginx.pid;\n"
              . "error_log logs/error.log info;\n$main\n"
              . "events { " . ($events // 'worker_connections 1024;')
              . " }\n"
              . "http {\n    access_log off;\n$http\n}\n";
    close $fh;

    my @cmd = ($ENV{TEST_NGINX_BINARY} || 'nginx',
               '-p', $root, '-c', 'conf/nginx.conf', '-e', 'logs/error.log');

    # under valgrind, one report per process in logs/ (see t/README)
    unshift @cmd, 'valgrind', '-q', '--leak-check=full', '--keep-debuginfo=yes',
                  "--log-file=$root/logs/valgrind.%p.log"
        if $ENV{TEST_NGINX_USE_VALGRIND};

    system(@cmd) == 0
        or die "nginx did not start: see $root/logs/error.log\n";

    return $root;
}

sub nginx_pid {
    my ($root) = @_;

    for (1 .. 50) {
        if (open my $f, '<', "$root/logs/nginx.pid") {
            my $p = <$f>;
            if (defined $p) {
                chomp $p;
                return $p if $p;
            }
        }
        sleep 0.1;
    }

    return 0;
}

# stops nginx and waits until it has gone
sub stop_nginx {
    my ($root) = @_;

    my $pid = nginx_pid($root) or return;
    kill 'TERM', $pid;

    for (1 .. ($ENV{TEST_NGINX_USE_VALGRIND} ? 400 : 100)) {
        return unless kill 0, $pid;
        sleep 0.05;
    }

    kill 'KILL', $pid;
}

# one HTTP/1.0 request, read until the server closes (or "timeout" idle
# seconds pass, or "until" matches what was read): (status, headers, body)
sub http_get {
    my ($port, $method, $uri, %o) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port")
        or return (0, '', '');

    my $hdrs = join '', map { "$_: $o{headers}{$_}\r\n" }
                        keys %{ $o{headers} || {} };
    my $body = $o{body} // '';

    $hdrs .= "Content-Length: " . length($body) . "\r\n" if length $body;

    $hdrs = "Host: localhost\r\n$hdrs" unless $o{headers}{Host};

    syswrite($s, "$method $uri HTTP/1.0\r\n$hdrs\r\n$body");

    my $got = '';
    my $timeout = $o{timeout} // 10;

    while (1) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select($rin, undef, undef, $timeout);
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $got .= $buf;
        last if $o{until} && $got =~ $o{until};
    }

    close $s;

    my ($head, $rest) = split /\r\n\r\n/, $got, 2;
    my ($status) = ($head // '') =~ m{^HTTP/1\.\d (\d+)};

    return ($status // 0, $head // '', $rest // '');
}

# the events of an SSE body: a list of { id, event, data }
sub sse_events {
    my ($body) = @_;
    my @ev;

    while ($body =~ /^id: (\S+)\nevent: (\w+)\ndata: (.*)\n\n/mg) {
        push @ev, { id => $1, event => $2, data => $3 };
    }

    return @ev;
}

sub error_log {
    my ($root) = @_;

    open my $f, '<', "$root/logs/error.log" or return '';
    local $/;
    return <$f>;
}

# wait_for(cond, seconds): true as soon as cond() is, polled every 50 ms;
# false after "seconds" (five times as long under valgrind)
sub wait_for {
    my ($cond, $secs) = @_;
    my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;

    for (1 .. $secs * 20 * $slow) {
        return 1 if $cond->();
        sleep 0.05;
    }

    return 0;
}

# request_on(port, method, uri, want, headers): the request on a worker
# that want(pid) accepts; a GET /whoami on a kept-alive connection (the
# server answers it with "$pid\n") says which worker it reached.
# (status, headers, body, worker), or nothing after 40 tries.
sub request_on {
    my ($port, $method, $uri, $want, $hdrs) = @_;
    my $h = join '', map { "$_: $hdrs->{$_}\r\n" } keys %{ $hdrs || {} };

    for (1 .. 40) {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or next;
        syswrite($s, "GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n");

        my $got = '';
        while ($got !~ /\r\n\r\n\d+\n/) {
            last unless sysread($s, my $buf, 4096);
            $got .= $buf;
        }

        my ($w) = $got =~ /\r\n\r\n(\d+)\n/;

        if (!defined $w || !$want->($w)) {
            close $s;
            next;
        }

        syswrite($s, "$method $uri HTTP/1.1\r\nHost: localhost\r\n$h"
                     . "Connection: close\r\n\r\n");

        $got = '';
        while (sysread($s, my $buf, 65536)) {
            $got .= $buf;
        }
        close $s;

        my ($head, $body) = split /\r\n\r\n/, $got, 2;
        my ($status) = $head =~ m{^HTTP/1\.1 (\d+)};
        return ($status, $head, $body // '', $w);
    }

    return;
}

1;
