# A heartbeat that ends the stream: a slow client whose stream finished
# while it did not read, with a heartbeat due when it drains.  The
# heartbeat then writes the rest and the request is finalized inside it:
# it must not touch the request afterwards (nginx runs with glibc's
# MALLOC_PERTURB_ so that a use after free shows).  Plain TAP, like
# t/041-slow-client.t.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVBUF pack_sockaddr_in inet_aton);
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $port = free_port();

# a use after free shows under valgrind (when it is installed; not for an
# nginx built with AddressSanitizer, make asan, which finds it itself),
# and with glibc's MALLOC_PERTURB_ freed memory reads as 0x01
my $vg = !$ENV{ASAN_OPTIONS}
         && grep { -x "$_/valgrind" } split /:/, $ENV{PATH};
local $ENV{TEST_NGINX_USE_VALGRIND} = 1 if $vg;
local $ENV{MALLOC_PERTURB_} = 1;

my $root = start_nginx('hbend', "daemon on;\nmaster_process off;", <<"HTTP");
    server {
        listen 127.0.0.1:$port sndbuf=4k;
        location = /g {
            llm_pass      http://127.0.0.1:$mock/v1/chat/completions?tokens=300&tps=0&ttft=0&token_size=64;
            llm_model     m;
            llm_prompt    "hi";
            llm_heartbeat 1ms;
        }
        location = /ok {
            return 200 "up\\n";
        }
    }
HTTP

my @socks;

for (1 .. 40) {
    my $s = IO::Socket::INET->new(Proto => 'tcp') or die $!;
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, pack('i', 4096));
    $s->connect(pack_sockaddr_in($port, inet_aton('127.0.0.1'))) or die $!;
    syswrite($s, "GET /g HTTP/1.0\r\nHost: localhost\r\n\r\n");
    push @socks, $s;
}

# the generations end while nobody reads
sleep($vg ? 5 : 1);

my $complete = 0;

for my $s (@socks) {
    my $resp = '';
    $s->blocking(1);
    while (1) {
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $resp .= $buf;
    }
    close $s;
    $complete++ if $resp =~ /event: complete\ndata: [^\n]*\}\n\n\z/;
}

is($complete, 40, 'every stream ends with its complete event');

my ($st) = http_get($port, 'GET', '/ok');
is($st, 200, 'nginx still serves');

stop_nginx($root);

unlike(error_log($root), qr/\[(alert|crit|emerg)\]|exited on signal/,
       'no alerts or crashes in the error log');

SKIP: {
    skip 'no valgrind (not installed, or ASan instead)', 1 unless $vg;

    my $report = '';
    for my $f (glob "$root/logs/valgrind.*.log") {
        open my $fh, '<', $f or next;
        local $/;
        $report .= <$fh>;
    }

    my @bad = $report =~ /^(==\d+== Invalid (?:read|write).*?)^==\d+== $/msg;
    is(scalar @bad, 0, 'valgrind: no invalid access') or diag(@bad);
}

done_testing();
