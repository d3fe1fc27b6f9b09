# The first live stream: event sequence, headers, inputs, HTTP versions.
# Upstreams are mocked inside the test nginx with the echo module.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: GET streams start, deltas and complete, in order
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "Write about $llm_input_theme";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n';
        echo_flush;
        echo_sleep 0.05;
        echo -n 'data: {"choices":[{"delta":{"content":"Once"}}]}\n\n';
        echo_flush;
        echo_sleep 0.05;
        echo -n 'data: {"choices":[{"delta":{"content":" upon"}}]}\n\n';
        echo_flush;
        echo_sleep 0.05;
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n';
        echo -n 'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n';
        echo -n 'data: [DONE]\n\n';
    }
--- request
GET /g?theme=dragons
--- response_headers
Content-Type: text/event-stream
Cache-Control: no-cache
X-Accel-Buffering: no
!Content-Length
!Content-Encoding
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):1
event: start
data: \{"job":"\1"\}

id: \1:2
event: delta
data: \{"text":"Once"\}

id: \1:3
event: delta
data: \{"text":" upon"\}

id: \1:4
event: complete
data: \{"text":"Once upon","finish_reason":"stop","usage":\{"input_tokens":7,"output_tokens":2,"total_tokens":9\}\}

\z}
--- no_error_log
[error]
[alert]



=== TEST 2: chunked on HTTP/1.1
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
--- response_headers
Transfer-Encoding: chunked
--- response_body_like chomp
event: complete\ndata: \{"text":"x","finish_reason":"stop"\}\n\n\z



=== TEST 3: HTTP/1.0 gets the same stream, ended by closing
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
GET /g HTTP/1.0
--- response_headers
!Transfer-Encoding
Content-Type: text/event-stream
--- response_body_like chomp
\Aretry: 3000\n\nid: \S+:1\nevent: start\n.*event: complete\ndata: \{"text":"x","finish_reason":"stop"\}\n\n\z



=== TEST 4: never gzipped, even when gzip is on for the type
--- config
    gzip on;
    gzip_types text/event-stream;
    gzip_min_length 1;
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
Accept-Encoding: gzip
--- response_headers
!Content-Encoding
--- response_body_like chomp
event: complete



=== TEST 5: POST JSON fills $llm_input_*
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_system "sys $llm_input_level";
        llm_prompt "Write about $llm_input_topic";
    }
--- request
POST /g
{"topic": "caf\u00e9 \"quotes\" \\ back\nnew line", "level": 3}
--- more_headers
Content-Type: application/json
--- response_body_like eval
qr{event: complete\ndata: \{"text":"sys 3\|Write about caf\x{c3}\x{a9} \\"quotes\\" \\\\ back\\nnew line"}



=== TEST 6: POST form fills $llm_input_*
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_prompt "Write about $llm_input_topic";
    }
--- request
POST /g
topic=red+dragons%21&x=1
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- response_body_like chomp
event: complete\ndata: \{"text":"\|Write about red dragons!"



=== TEST 7: GET query arguments are decoded for $llm_input_*
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_prompt "Write about $llm_input_topic";
    }
--- request
GET /g?topic=sea%20%22monsters%22+now
--- response_body_like chomp
event: complete\ndata: \{"text":"\|Write about sea \\"monsters\\" now"



=== TEST 8: the body wins over the query
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_prompt "$llm_input_topic";
    }
--- request
POST /g?topic=query
{"topic": "body"}
--- more_headers
Content-Type: application/json
--- response_body_like chomp
event: complete\ndata: \{"text":"\|body"



=== TEST 9: the API key goes upstream as a bearer token
--- config
    location = /g {
        llm_pass    http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?expect_key=sk-test-123&tokens=2&tps=0;
        llm_api_key sk-test-$llm_input_k;
        llm_model   m;
        llm_prompt  "hi";
    }
--- request
GET /g?k=123
--- response_body_like chomp
event: complete\ndata: \{"text":"[^"]+","finish_reason":"stop"
--- no_error_log
sk-test-123



=== TEST 10: a wrong API key is an upstream_status error event
--- config
    location = /g {
        llm_pass    http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?expect_key=right;
        llm_api_key wrong;
        llm_model   m;
        llm_prompt  "hi";
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_status","message":"[^"]+","text":""\}\n\n\z



=== TEST 11: Anthropic Messages streaming
--- config
    location = /g {
        llm_pass     http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/messages?tokens=3&tps=0&expect_key=ak;
        llm_provider anthropic;
        llm_api_key  ak;
        llm_model    claude-test;
        llm_prompt   "hi";
    }
--- request
GET /g
--- response_body_like chomp
\Aretry: 3000\n\nid: (\S+):1\nevent: start\n.*id: \1:2\nevent: delta\n.*event: complete\ndata: \{"text":"Once upon a","finish_reason":"end_turn","usage":\{"input_tokens":\d+,"output_tokens":3,"total_tokens":\d+\}\}\n\n\z



=== TEST 12: Anthropic framing from a raw upstream
--- config
    location = /g {
        llm_pass     http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_provider anthropic;
        llm_model    c;
        llm_prompt   "hi";
    }
    location = /mock {
        echo -n 'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":4,"output_tokens":1}}}\n\n';
        echo -n 'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n';
        echo -n 'event: ping\ndata: {"type": "ping"}\n\n';
        echo_flush;
        echo -n 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n';
        echo_flush;
        echo -n 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}\n\n';
        echo -n 'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n';
        echo -n 'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}\n\n';
        echo -n 'event: message_stop\ndata: {"type":"message_stop"}\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"Hi there","finish_reason":"end_turn","usage":\{"input_tokens":4,"output_tokens":2,"total_tokens":6\}\}\n\n\z



=== TEST 13: what the module sends upstream (OpenAI)
--- config
    location = /g {
        llm_pass       http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tag=req13&tokens=1&tps=0;
        llm_model      gpt-x;
        llm_system     "be brief";
        llm_prompt     "say \"hi\"";
        llm_max_tokens 50;
    }
    location = /last {
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/last?tag=req13;
    }
--- request eval
["GET /g", "GET /last"]
--- response_body_like eval
[qr/event: complete/,
 qr/"body":"\{\\"model\\":\\"gpt-x\\",\\"messages\\":\[\{\\"role\\":\\"system\\",\\"content\\":\\"be brief\\"\},\{\\"role\\":\\"user\\",\\"content\\":\\"say \\\\\\"hi\\\\\\"\\"\}\],\\"stream\\":true,\\"stream_options\\":\{\\"include_usage\\":true\},\\"max_tokens\\":50\}"/]
