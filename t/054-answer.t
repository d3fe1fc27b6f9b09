# llm_answer: the location decides how a new job answers, whatever the
# request's Accept says (a blocking twin whose clients send */*), and
# background requests still get 202.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';

no_long_string();

run_tests();

__DATA__

=== TEST 1: llm_answer json: one JSON document, for Accept */*
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=done;
        llm_model  m;
        llm_prompt "hi";
        llm_answer json;
    }
--- request
POST /g
--- more_headers
Accept: */*
--- response_headers_like
Content-Type: application/json
--- response_body_like chomp
^\{"job":"[\w-]{22}","state":"completed","text":"done"



=== TEST 2: llm_answer stream: a stream, for Accept: application/json
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=done;
        llm_model  m;
        llm_prompt "hi";
        llm_answer stream;
    }
--- request
GET /g
--- more_headers
Accept: application/json
--- response_headers_like
Content-Type: text/event-stream
--- response_body_like chomp
event: complete\ndata: \{"text":"done"



=== TEST 3: llm_answer json: a background request still gets 202
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=done;
        llm_model  m;
        llm_prompt "hi";
        llm_answer json;
    }
--- request
POST /g
--- more_headers
Prefer: respond-async
--- error_code: 202
--- response_body_like chomp
^\{"job":"[\w-]{22}","state":"running"



=== TEST 4: nginx -t: llm_answer twice
--- config
    llm_answer json;
    llm_answer stream;
--- must_die
--- error_log
"llm_answer" directive is duplicate
