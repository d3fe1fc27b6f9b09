# Failures end the stream with one "error" event carrying a stable code and
# the text made so far; bad requests get a JSON 4xx before any stream.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: upstream HTTP status with the provider's message
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        default_type application/json;
        return 429 '{"error":{"message":"Rate limit reached for gpt-4o-mini","type":"requests"}}';
    }
--- request
GET /g
--- response_body_like chomp
\Aretry: 3000\n\nid: (\S+):1\nevent: start\ndata: \{"job":"\S+"\}\n\nid: \1:2\nevent: error\ndata: \{"code":"upstream_status","message":"Rate limit reached for gpt-4o-mini","text":""\}\n\n\z
--- error_log
failed: upstream_status



=== TEST 2: a non-JSON error page
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        return 502;
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_status","message":"[^"]*502[^"]*","text":""\}\n\n\z



=== TEST 3: connection refused
--- config
    location = /g {
        llm_pass   http://127.0.0.1:1/v1/chat/completions;
        llm_model  m;
        llm_prompt "hi";
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_connect","message":"[^"]+","text":""\}\n\n\z



=== TEST 4: connect timeout
--- config
    location = /g {
        llm_pass            http://127.0.0.1:$TEST_NGINX_BLACKHOLE_PORT/v1/chat/completions;
        llm_connect_timeout 300ms;
        llm_model           m;
        llm_prompt          "hi";
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"connect_timeout","message":"[^"]+","text":""\}\n\n\z



=== TEST 5: first token timeout
--- config
    location = /g {
        llm_pass                http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_first_token_timeout 300ms;
        llm_model               m;
        llm_prompt              "hi";
    }
    location = /mock {
        echo_sleep 3;
        echo 'data: [DONE]';
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"first_token_timeout","message":"[^"]+","text":""\}\n\n\z



=== TEST 6: idle timeout keeps the partial text
--- config
    location = /g {
        llm_pass         http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_idle_timeout 300ms;
        llm_model        m;
        llm_prompt       "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"so far"}}]}\n\n';
        echo_flush;
        echo_sleep 3;
        echo 'data: [DONE]';
    }
--- request
GET /g
--- response_body_like chomp
event: delta\ndata: \{"text":"so far"\}\n\n.*event: error\ndata: \{"code":"idle_timeout","message":"[^"]+","text":"so far"\}\n\n\z



=== TEST 7: total timeout
--- config
    location = /g {
        llm_pass    http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tokens=100&tps=10&ttft=0;
        llm_timeout 500ms;
        llm_model   m;
        llm_prompt  "hi";
    }
--- request
GET /g
--- response_body_like chomp
event: delta\n.*event: error\ndata: \{"code":"timeout","message":"[^"]+","text":"[^"]+"\}\n\n\z



=== TEST 8: the mock server cutting the connection mid-stream
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=cut&after=3&tps=0;
        llm_model  m;
        llm_prompt "hi";
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_truncated","message":"[^"]+","text":"[^"]+"\}\n\n\z



=== TEST 9: an error event from the Anthropic API
--- config
    location = /g {
        llm_pass     http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/messages?mode=stream_error&after=2&tps=0;
        llm_provider anthropic;
        llm_model    c;
        llm_prompt   "hi";
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_error","message":"mock overloaded","text":"[^"]+"\}\n\n\z



=== TEST 10: unsupported method
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions;
        llm_model  m;
        llm_prompt "hi";
    }
--- request
PUT /g
x
--- error_code: 405
--- response_headers
Allow: GET, POST
Content-Type: application/json
--- response_body
{"error":{"code":"method_not_allowed","message":"use GET (EventSource) or POST"}}



=== TEST 11: malformed JSON
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions;
        llm_model  m;
        llm_prompt "hi";
    }
--- request
POST /g
{"topic": nope}
--- more_headers
Content-Type: application/json
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"code":"invalid_body","message":"malformed JSON: [^"]+"\}\}$



=== TEST 12: JSON that is not an object
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions;
        llm_model  m;
        llm_prompt "hi";
    }
--- request
POST /g
["a"]
--- more_headers
Content-Type: application/json
--- error_code: 400
--- response_body
{"error":{"code":"invalid_body","message":"the body must be a JSON object"}}



=== TEST 13: wrong content type
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions;
        llm_model  m;
        llm_prompt "hi";
    }
--- request
POST /g
hello
--- more_headers
Content-Type: text/plain
--- error_code: 415
--- response_body
{"error":{"code":"unsupported_media_type","message":"the body must be application/json, application/x-www-form-urlencoded or multipart/form-data"}}



=== TEST 14: an empty prompt is refused before the stream
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions;
        llm_model  m;
        llm_prompt "$llm_input_topic";
    }
--- request
GET /g
--- error_code: 400
--- response_body
{"error":{"code":"invalid_request","message":"the prompt is empty"}}



=== TEST 15: a body too large for memory
--- config
    client_body_buffer_size 1k;
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions;
        llm_model  m;
        llm_prompt "$llm_input_topic";
    }
--- request eval
"POST /g\n{\"topic\": \"" . ("a" x 4000) . "\"}"
--- more_headers
Content-Type: application/json
--- error_code: 413
--- response_body_like chomp
"code":"body_too_large"



=== TEST 16: a URL from a variable that is not a URL
--- config
    location = /g {
        llm_pass   $arg_u;
        llm_model  m;
        llm_prompt "hi";
    }
--- request
GET /g?u=gopher://x
--- error_code: 500
--- response_body
{"error":{"code":"internal","message":"invalid upstream URL"}}
--- error_log
invalid URL in "llm_pass"
--- no_error_log eval
qr/\[error\].*llm: invalid URL[^,]*gopher/



=== TEST 17: a POST without a body uses the query
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_prompt "$llm_input_topic";
    }
--- request
POST /g?topic=fromquery
--- response_body_like chomp
event: complete\ndata: \{"text":"\|fromquery"



=== TEST 18: an error body that echoes the credentials is redacted
--- config
    location = /g {
        llm_pass    http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model   m;
        llm_prompt  "hi";
        llm_api_key "sk-proj-Secret0123456789";
    }
    location = /mock {
        default_type application/json;
        return 401 '{"error":{"message":"Incorrect API key provided: sk-proj-Secret0123456789 (Authorization: Bearer sk-proj-Secret0123456789; x-api-key: abcdef0123456789; other sk-ant-api03-Other0123456789; task-12345678901)"}}';
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_status","message":"Incorrect API key provided: \[redacted\] \(Authorization: Bearer \[redacted\]; x-api-key: \[redacted\]; other \[redacted\]; task-12345678901\)","text":""\}\n\n\z
--- error_log
failed: upstream_status: Incorrect API key provided: [redacted]
--- no_error_log eval
[qr/\[error\].*Secret0123456789/, qr/\[error\].*abcdef0123456789/,
 qr/\[error\].*Other0123456789/]



=== TEST 19: the configured key is never echoed, whatever its shape
--- config
    location = /g {
        llm_pass    http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model   m;
        llm_prompt  "hi";
        llm_api_key "hunter2hunter2";
    }
    location = /mock {
        return 403 'key hunter2hunter2 is not allowed here';
    }
--- request
GET /g
--- more_headers
Accept: application/json
--- error_code: 502
--- response_body_like chomp
"message":"key \[redacted\] is not allowed here"
--- error_log
failed: upstream_status: key [redacted] is not allowed here
--- no_error_log eval
qr/\[error\].*hunter2hunter2/



=== TEST 20: llm_max_text: past it the job fails with what it has
--- config
    location = /g {
        llm_pass     http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tokens=100000&tps=0&ttft=0&token_size=100;
        llm_model    m;
        llm_prompt   "hi";
        llm_max_text 1k;
    }
--- request
GET /g
--- response_body_like eval
qr/event: error\ndata: \{"code":"text_limit","message":"the generation exceeded llm_max_text","text":"[^"]{1,1024}"\}\n\n\z/
--- error_log
failed: text_limit



=== TEST 21: llm_max_events: past it the job fails with what it has
--- config
    location = /g {
        llm_pass       http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tokens=100&tps=50&ttft=0;
        llm_model      m;
        llm_prompt     "hi";
        llm_max_events 8;
    }
--- request
GET /g
--- response_body_like eval
qr/\nid: \S+:[1-8]\nevent: error\ndata: \{"code":"text_limit","message":"the generation exceeded llm_max_events","text":"[^"]+"\}\n\n\z/
--- error_log
more than 8 events (llm_max_events)



=== TEST 22: a final event longer than a write is whole
--- config
    location = /g {
        llm_pass     http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tokens=800&tps=0&ttft=0&token_size=256;
        llm_model    m;
        llm_prompt   "hi";
    }
--- request
GET /g
--- response_body_like eval
qr/event: complete\ndata: \{"text":"(?:[^"\n]{51200}){4}","finish_reason":"[a-z]+"[^\n]*\}\n\n\z/

