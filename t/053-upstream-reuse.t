# Upstream connections are kept alive: generations one after another on one
# worker share one connection to the upstream (OpenAI's stream ends with
# "data: [DONE]", Anthropic's with "message_stop"; both are followed by the
# end of the chunked response, which the module reads instead of closing).
# An upstream that keeps the response open after its end marker does not
# hold the generation back: it completes all the same.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $port = free_port();

# an upstream that sends "data: [DONE]" and never ends the response
my $open = IO::Socket::INET->new(LocalAddr => '127.0.0.1', Listen => 8,
                                 ReuseAddr => 1)
    or die "listen: $!";
my $open_port = $open->sockport;
my $pid = fork() // die "fork: $!";

if ($pid == 0) {
    while (my $c = $open->accept) {
        my $req = '';
        while ($req !~ /\r\n\r\n/) {
            sysread($c, $req, 4096, length $req) or last;
        }
        my ($len) = $req =~ /Content-Length: (\d+)/i;
        my ($head, $body) = split /\r\n\r\n/, $req, 2;
        sysread($c, $body, $len - length $body, length $body)
            while length $body < ($len // 0);
        my $sse = 'data: {"choices":[{"index":0,"delta":{"content":"Hi"},'
                  . '"finish_reason":null}]}' . "\n\n"
                  . 'data: {"choices":[{"index":0,"delta":{},'
                  . '"finish_reason":"stop"}]}' . "\n\n"
                  . "data: [DONE]\n\n";
        syswrite($c, "HTTP/1.1 200 OK\r\n"
                     . "Content-Type: text/event-stream\r\n"
                     . "Transfer-Encoding: chunked\r\n\r\n"
                     . sprintf("%x\r\n%s\r\n", length $sse, $sse));
        sleep 60;
    }
    exit 0;
}

END { if ($pid) { local $?; kill "KILL", $pid; waitpid $pid, 0; } }
close $open;
my $root = start_nginx('upstream_reuse', "daemon on;\nmaster_process off;",
                       <<"HTTP");
    server {
        listen 127.0.0.1:$port;
        location = /openai {
            llm_pass   http://127.0.0.1:$mock/v1/chat/completions?tokens=3&tps=0&ttft=0;
            llm_model  m;
            llm_prompt "hi";
        }
        location = /open {
            llm_pass   http://127.0.0.1:$open_port/v1/chat/completions;
            llm_model  m;
            llm_prompt "hi";
        }
        location = /anthropic {
            llm_pass     http://127.0.0.1:$mock/v1/messages?tokens=3&tps=0&ttft=0;
            llm_provider anthropic;
            llm_model    m;
            llm_prompt   "hi";
        }
    }
HTTP

# the mock's accepted connections; this request's own is one of them
sub connections {
    my ($n) = `curl -s http://127.0.0.1:$mock/stats` =~ /"connections":(\d+)/;
    return $n;
}

my $before = connections();

for my $api (qw(openai anthropic)) {
    for my $i (1 .. 3) {
        my ($status, undef, $body) = http_get($port, 'GET', "/$api");
        is($status, 200, "$api: generation $i: 200");
        like($body, qr/event: complete\ndata: \{"text":"Once upon a"/,
             "$api: generation $i: complete");
    }
}

is(connections() - $before - 1, 1,
   'six generations, one upstream connection');

my ($status, undef, $body) = http_get($port, 'GET', '/open', timeout => 30);
is($status, 200, 'an upstream that stays open after [DONE]: 200');
like($body, qr/event: complete\ndata: \{"text":"Hi","finish_reason":"stop"/,
     'an upstream that stays open after [DONE]: the generation completes');

stop_nginx($root);

unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();
