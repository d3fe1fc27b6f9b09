# HTTP/2: the stream works over h2 (curl with prior knowledge), and a
# client that resets its stream cancels the generation.

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;
plan skip_all => 'curl without HTTP/2'
    unless `curl -V 2>/dev/null` =~ /HTTP2/;

my $port = free_port();
my $root = start_nginx('h2', "daemon on;\nmaster_process off;", <<"HTTP");
    server {
        listen 127.0.0.1:$port http2;
        location = /g {
            llm_pass   http://127.0.0.1:$mock/v1/chat/completions?tokens=5&tps=50&ttft=0;
            llm_model  m;
            llm_prompt "hi";
        }
        location = /stall {
            llm_on_disconnect cancel;
            llm_pass   http://127.0.0.1:$mock/v1/chat/completions?mode=stall&after=1&ttft=0&tag=h2stall;
            llm_model  m;
            llm_prompt "hi";
        }
    }
HTTP

my $url = "http://127.0.0.1:$port";

my $out = `curl -sN --http2-prior-knowledge -D - $url/g`;

like($out, qr{^HTTP/2 200}, 'HTTP/2 200');
like($out, qr{^content-type: text/event-stream}mi, 'event-stream type');
unlike($out, qr{^transfer-encoding}mi, 'no chunked framing on h2');
like($out, qr{event: start\n.*event: delta\n.*event: complete\ndata: \{"text":"Once upon a time, in","finish_reason":"stop"}s,
     'the whole stream');

# the client resets the stream after a second: RST_STREAM on h2
system("curl -sN --http2-prior-knowledge --max-time 1 $url/stall > /dev/null");
sleep 0.5;

my $stats = `curl -s http://127.0.0.1:$mock/stats?tag=h2stall`;
like($stats, qr/"streams_aborted":1,"active":0/, 'the upstream request was dropped');
like(error_log($root), qr/client gone, upstream request cancelled/,
     'the job was cancelled');

stop_nginx($root);

unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();
