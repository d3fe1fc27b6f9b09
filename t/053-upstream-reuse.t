# Upstream connections are kept alive: generations one after another on one
# worker share one connection to the upstream (OpenAI's stream ends with
# "data: [DONE]", Anthropic's with "message_stop"; both are followed by the
# end of the chunked response, which the module reads instead of closing).

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $port = free_port();
my $root = start_nginx('upstream_reuse', "daemon on;\nmaster_process off;",
                       <<"HTTP");
    server {
        listen 127.0.0.1:$port;
        location = /openai {
            llm_pass   http://127.0.0.1:$mock/v1/chat/completions?tokens=3&tps=0&ttft=0;
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

stop_nginx($root);

unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();
