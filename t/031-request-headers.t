# Request headers are HTTP lists (RFC 9110 5.6.1): Accept, Prefer and
# Content-Type name tokens and media types, not substrings; q=0 means
# not acceptable.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: Prefer: a longer token that holds respond-async streams
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
POST /g
{}
--- more_headers
Content-Type: application/json
Prefer: x-not-respond-asyncx
--- response_headers
Content-Type: text/event-stream
--- response_body_like chomp
event: complete\ndata: \{"text":"x","finish_reason":"stop"\}\n\n\z
--- no_error_log
[alert]



=== TEST 2: Prefer: respond-async among other preferences, any case
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
POST /g
{}
--- more_headers
Content-Type: application/json
Prefer: wait=10, Respond-Async
--- error_code: 202
--- response_body_like chomp
\A\{"job":"[\w-]{22}","state":"running"\}\n\z
--- no_error_log
[alert]



=== TEST 3: Prefer: a quoted value that holds respond-async is a value
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
POST /g
{}
--- more_headers
Content-Type: application/json
Prefer: x="a, respond-async"
--- response_headers
Content-Type: text/event-stream
--- response_body_like chomp
event: complete\ndata: \{"text":"x","finish_reason":"stop"\}\n\n\z
--- no_error_log
[alert]



=== TEST 4: Prefer: respond-async in a second header
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
POST /g
{}
--- more_headers
Content-Type: application/json
Prefer: wait=10
Prefer: respond-async
--- error_code: 202
--- response_body_like chomp
\A\{"job":"[\w-]{22}","state":"running"\}\n\z
--- no_error_log
[alert]



=== TEST 5: Accept: application/json with q=0 is not acceptable: a stream
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- more_headers
Accept: application/json;q=0
--- response_headers
Content-Type: text/event-stream
--- response_body_like chomp
event: complete\ndata: \{"text":"x","finish_reason":"stop"\}\n\n\z
--- no_error_log
[alert]



=== TEST 6: Accept: q=0.000 is zero too
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- more_headers
Accept: application/json; q=0.000
--- response_headers
Content-Type: text/event-stream
--- response_body_like chomp
event: complete\ndata: \{"text":"x","finish_reason":"stop"\}\n\n\z
--- no_error_log
[alert]



=== TEST 7: Accept: application/json with a weight: JSON
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- more_headers
Accept: text/html, application/json;q=0.5
--- response_headers
Content-Type: application/json
--- response_body_like chomp
\A\{"job":"[\w-]{22}","state":"completed","text":"x",
--- no_error_log
[alert]



=== TEST 8: Accept: a longer type that holds application/json: a stream
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- more_headers
Accept: application/jsonx
--- response_headers
Content-Type: text/event-stream
--- response_body_like chomp
event: complete\ndata: \{"text":"x","finish_reason":"stop"\}\n\n\z
--- no_error_log
[alert]



=== TEST 9: Accept: text/event-stream with q=0 and JSON: JSON
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- more_headers
Accept: text/event-stream;q=0, application/json
--- response_headers
Content-Type: application/json
--- response_body_like chomp
\A\{"job":"[\w-]{22}","state":"completed","text":"x",
--- no_error_log
[alert]



=== TEST 10: Content-Type: a longer type that starts with application/json
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
POST /g
{}
--- more_headers
Content-Type: application/jsonfoo
--- error_code: 415
--- response_body
{"error":{"code":"unsupported_media_type","message":"the body must be application/json, application/x-www-form-urlencoded or multipart/form-data"}}
--- no_error_log
[alert]



=== TEST 11: Content-Type: application/json with parameters is JSON
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
POST /g
{}
--- more_headers
Content-Type: application/json; charset=utf-8
--- response_headers
Content-Type: text/event-stream
--- response_body_like chomp
event: complete\ndata: \{"text":"x","finish_reason":"stop"\}\n\n\z
--- no_error_log
[alert]



=== TEST 12: Content-Type: a longer form type
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
POST /g
a=b
--- more_headers
Content-Type: application/x-www-form-urlencodedx
--- error_code: 415
--- response_body
{"error":{"code":"unsupported_media_type","message":"the body must be application/json, application/x-www-form-urlencoded or multipart/form-data"}}
--- no_error_log
[alert]
