# Streams are not bound by threads: 200 generations stay in flight at once
# on a one-thread pool, and all are dropped when their clients leave.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $n = 200;
my $port = free_port();
my $root = start_nginx('concurrency',
                       "daemon on;\nmaster_process off;\n"
                       . "thread_pool one threads=1;",
                       <<"HTTP");
    server {
        listen 127.0.0.1:$port;
        location = /g {
            llm_on_disconnect cancel;
            llm_pass        http://127.0.0.1:$mock/v1/chat/completions?mode=stall&after=1&ttft=0&tag=conc;
            llm_thread_pool one;
            llm_model       m;
            llm_prompt      "hi";
        }
    }
HTTP

system("curl -s -X POST http://127.0.0.1:$mock/stats/reset?tag=conc > /dev/null");

my (@socks, %got);
my $sel = IO::Select->new;

for (1 .. $n) {
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or last;
    syswrite($s, "GET /g HTTP/1.0\r\nHost: localhost\r\n\r\n");
    push @socks, $s;
    $sel->add($s);
    $got{$s} = '';
}

is(scalar @socks, $n, "$n clients connected");

# every stream has its first token: all are in flight at once
my $deadline = time + 20;
my $streaming = 0;

while (time < $deadline && $streaming < $n) {
    for my $s ($sel->can_read(0.2)) {
        sysread($s, my $buf, 4096) or next;
        $got{$s} .= $buf;
        if ($got{$s} =~ /event: delta/) {
            $streaming++;
            $sel->remove($s);
        }
    }
}

is($streaming, $n, "$n streams got their first token on a one-thread pool");

my $stats = `curl -s http://127.0.0.1:$mock/stats?tag=conc`;
like($stats, qr/"active":$n\b/, "$n upstream requests open at once");

close $_ for @socks;

my $active = -1;
for (1 .. 50) {
    sleep 0.1;
    ($active) = `curl -s http://127.0.0.1:$mock/stats?tag=conc` =~ /"active":(\d+)/;
    last if defined $active && $active == 0;
}

is($active, 0, 'every upstream request was dropped when its client left');

stop_nginx($root);

unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();
