# Reload and graceful shutdown with streams open: each stream ends with a
# final "shutdown" error event instead of holding the old worker, and the
# worker exits.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx nginx_pid free_port error_log);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $port = free_port();
my $root = start_nginx('shutdown',
                       "daemon on;\nmaster_process on;\nworker_processes 1;",
                       <<"HTTP");
    server {
        listen 127.0.0.1:$port;
        location = /g {
            llm_pass   http://127.0.0.1:$mock/v1/chat/completions?mode=stall&after=1&ttft=0&tag=shut;
            llm_model  m;
            llm_prompt "hi";
        }
    }
HTTP

my $master = nginx_pid($root);
ok($master, 'master runs');

# reads until "event: delta" shows up, then returns the socket
sub open_stream {
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or return;
    syswrite($s, "GET /g HTTP/1.0\r\nHost: localhost\r\n\r\n");

    my $got = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + 5;

    while (time < $deadline && $got !~ /event: delta/) {
        next unless $sel->can_read(0.2);
        sysread($s, my $buf, 65536) or last;
        $got .= $buf;
    }

    return ($s, $got);
}

# reads until the server closes
sub read_rest {
    my ($s, $got) = @_;
    my $sel = IO::Select->new($s);
    my $deadline = time + 10;

    while (time < $deadline) {
        next unless $sel->can_read(0.2);
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $got .= $buf;
    }

    return $got;
}

my ($s, $got) = open_stream();
like($got, qr/event: delta/, 'a stream is open');

kill 'HUP', $master;
my $body = read_rest($s, $got);

like($body, qr/event: error\ndata: \{"code":"shutdown","message":"[^"]+","text":"Once"\}\n\n\z/,
     'reload: the open stream ends with a shutdown event, text kept');

my ($s2, $got2) = open_stream();
like($got2, qr/event: delta/, 'the new worker serves streams');

kill 'QUIT', $master;
my $body2 = read_rest($s2, $got2);

like($body2, qr/event: error\ndata: \{"code":"shutdown"/,
     'graceful quit: the stream ends with a shutdown event');

my $gone = 0;
for (1 .. 100) {
    if (!kill 0, $master) { $gone = 1; last }
    sleep 0.05;
}
ok($gone, 'nginx exits');

my $stats = `curl -s http://127.0.0.1:$mock/stats?tag=shut`;
like($stats, qr/"active":0/, 'no upstream request left behind');

unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();
