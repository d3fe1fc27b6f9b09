# Formats: the five seed apps' SSE dialects as llm_format blocks, byte for
# byte; escaping; coalescing; the built-in openai format; nginx -t errors.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: learning path: data-only events without a type, progress and redirect
--- http_config
    llm_format learning {
        start    '{"progress": 10, "message": "Analyzing your topic and requirements..."}';
        delta    off;
        complete '{"progress": 100, "done": true, "redirect_url": "/result", "message": "Complete!"}';
        error    '{"error": $llm_error_message}';
    }
--- config
    location = /generate-stream {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "Learning path for $llm_input_topic";
        llm_format learning;
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"Week 1"}}]}\n\n';
        echo -n 'data: {"choices":[{"delta":{"content":": basics"},"finish_reason":"stop"}]}\n\n';
        echo -n 'data: [DONE]\n\n';
    }
--- request
POST /generate-stream
topic=rust&level=beginner
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- response_headers
Content-Type: text/event-stream
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):1
data: \{"progress":10,"message":"Analyzing your topic and requirements\.\.\."\}

id: \1:\d
data: \{"progress":100,"done":true,"redirect_url":"/result","message":"Complete!"\}

\z}
--- no_error_log
[error]



=== TEST 2: learning path: an upstream failure is {"error": ...}
--- http_config
    llm_format learning {
        start    '{"progress": 10, "message": "Analyzing..."}';
        delta    off;
        complete '{"progress": 100, "done": true, "redirect_url": "/result"}';
        error    '{"error": $llm_error_message}';
    }
--- config
    location = /generate-stream {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
        llm_format learning;
    }
    location = /mock {
        return 503 '{"error":{"message":"overloaded"}}';
    }
--- request
GET /generate-stream
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):1
data: \{"progress":10,"message":"Analyzing\.\.\."\}

id: \1:2
data: \{"error":"[^"]*overloaded[^"]*"\}

\z}



=== TEST 3: story: typed data-only events, chunks, two events at the end
--- http_config
    llm_format story {
        start    '{"type": "node", "node": "generate_content", "status": "started"}';
        delta    '{"type": "content", "chunk": $llm_delta}';
        complete '{"type": "node", "node": "generate_content", "status": "completed"}';
        complete '{"type": "complete", "story": {"success": true, "story_content": $llm_text, "theme": $arg_theme}}';
        error    '{"type": "error", "message": $llm_error_message, "error_code": $llm_error_code}';
    }
--- config
    location = /api/v1/stories/generate/stream {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "A $arg_theme story";
        llm_format story;
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"Once upon a time..."}}]}\n\n';
        echo_flush;
        echo_sleep 0.05;
        echo -n 'data: {"choices":[{"delta":{"content":"in a magical forest..."}}]}\n\n';
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n';
        echo -n 'data: [DONE]\n\n';
    }
--- request
GET /api/v1/stories/generate/stream?child_id=7&theme=adventure&chapter_number=1
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):1
data: \{"type":"node","node":"generate_content","status":"started"\}

id: \1:2
data: \{"type":"content","chunk":"Once upon a time\.\.\."\}

id: \1:3
data: \{"type":"content","chunk":"in a magical forest\.\.\."\}

data: \{"type":"node","node":"generate_content","status":"completed"\}

id: \1:4
data: \{"type":"complete","story":\{"success":true,"story_content":"Once upon a time\.\.\.in a magical forest\.\.\.","theme":"adventure"\}\}

\z}
--- no_error_log
[error]



=== TEST 4: assessment batches: connected, then complete with nested data
--- http_config
    llm_format step7 {
        start    '{"type": "connected", "message": "Stream established"}';
        delta    off;
        complete '{"type": "complete", "data": {"step7": {"text": $llm_text}, "summary": {"usage": $llm_usage, "outputTokens": ${llm_usage.output_tokens}}}, "message": "Step 7 complete"}';
        error    '{"type": "error", "error": $llm_error_message}';
    }
--- config
    location ~ ^/api/v3/workflow/(?<workflow>[0-9a-f]+)/step7/stream$ {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "Assessments for workflow $workflow";
        llm_format step7;
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"[1,2]"},"finish_reason":"stop"}]}\n\n';
        echo -n 'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\n';
        echo -n 'data: [DONE]\n\n';
    }
--- request
POST /api/v3/workflow/65a1f0/step7/stream
{"assessmentTypes":["mcq"]}
--- more_headers
Content-Type: application/json
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):1
data: \{"type":"connected","message":"Stream established"\}

id: \1:3
data: \{"type":"complete","data":\{"step7":\{"text":"\[1,2\]"\},"summary":\{"usage":\{"input_tokens":5,"output_tokens":3,"total_tokens":8\},"outputTokens":3\}\},"message":"Step 7 complete"\}

\z}



=== TEST 5: adversarial pipeline: named events with timestamps and a duration
--- http_config
    llm_format adversarial {
        start    event=start '{"event": "start", "topic": $arg_topic, "timestamp": $llm_time}';
        delta    off;
        complete event=step '{"type": "final", "success": $llm_success, "response_full": $llm_text, "model": $llm_model}';
        complete event=done '{"event": "done", "timestamp": $llm_time, "total_duration_seconds": $llm_elapsed}';
        error    event=error '{"type": "error", "error": $llm_error_message, "timestamp": $llm_time}';
    }
--- config
    location = /api/generate-stream {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  claude-sonnet;
        llm_prompt "Question about $arg_topic";
        llm_format adversarial;
    }
    location = /mock {
        echo_sleep 0.1;
        echo -n 'data: {"choices":[{"delta":{"content":"Q?"},"finish_reason":"stop"}]}\n\n';
        echo -n 'data: [DONE]\n\n';
    }
--- request
GET /api/generate-stream?topic=GRPO%20in%20RL
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):1
event: start
data: \{"event":"start","topic":"GRPO%20in%20RL","timestamp":"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d\d\dZ"\}

event: step
data: \{"type":"final","success":true,"response_full":"Q\?","model":"claude-sonnet"\}

id: \1:3
event: done
data: \{"event":"done","timestamp":"20\d\d-[^"]+Z","total_duration_seconds":0\.[1-9]\d\d\}

\z}



=== TEST 6: content pipeline: named progress and complete events, error event
--- http_config
    llm_format content {
        start    event=progress '{"stage": "generator", "message": "Generating content using $llm_model...", "progress": 30}';
        delta    off;
        complete event=complete '{"success": true, "output": $llm_text, "metadata": {"finish_reason": $llm_finish_reason}}';
        error    event=error '{"success": false, "error": $llm_error_message, "code": $llm_error_code, "partial": $llm_text}';
    }
--- config
    location = /run/stream {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  "claude \"3.5\"";
        llm_prompt "$llm_input_topic";
        llm_format content;
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"Draft"}}]}\n\n';
    }
--- request
POST /run/stream
{"topic":"SSE"}
--- more_headers
Content-Type: application/json
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):1
event: progress
data: \{"stage":"generator","message":"Generating content using claude \\"3\.5\\"\.\.\.","progress":30\}

id: \1:3
event: error
data: \{"success":false,"error":"[^"]+","code":"upstream_truncated","partial":"Draft"\}

\z}



=== TEST 7: escaping: upstream text cannot break the JSON or the framing
--- http_config
    llm_format esc {
        start    off;
        delta    '{"t": $llm_delta, "in": "<$llm_delta>"}';
        complete '{"done": true}';
        error    '{"error": $llm_error_message}';
    }
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
        llm_format esc;
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"a\\"b\\\\c\\n\\ndata: {\\"x\\":1}\\r\\nevent: error\\r\\u0001\\u0000 \\u00e9\\ud83d\\ude00"},"finish_reason":"stop"}]}\n\n';
        echo -n 'data: [DONE]\n\n';
    }
--- request
GET /g
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):2
data: \{"t":"a\\"b\\\\c\\n\\ndata: \{\\"x\\":1\}\\r\\nevent: error\\r\\u0001\\u0000 \x{c3}\x{a9}\x{f0}\x{9f}\x{98}\x{80}","in":"<a\\"b\\\\c\\n\\ndata: \{\\"x\\":1\}\\r\\nevent: error\\r\\u0001\\u0000 \x{c3}\x{a9}\x{f0}\x{9f}\x{98}\x{80}>"\}

id: \1:3
data: \{"done":true\}

\z}



=== TEST 8: nginx variables that are not UTF-8 become U+FFFD
--- http_config
    llm_format v {
        start    '{"q": $arg_q, "s": "[$arg_q]"}';
        delta    off;
        complete '{"done": true}';
        error    '{"error": $llm_error_message}';
    }
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
        llm_format v;
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\n';
    }
--- raw_request eval
"GET /g?q=a\xff\"b\xc3 HTTP/1.0\r\nHost: localhost\r\n\r\n"
--- response_body_like eval
qr{data: \{"q":"a\\ufffd\\"b\\ufffd","s":"\[a\\ufffd\\"b\\ufffd\]"\}\n\n}



=== TEST 9: the shutdown kind falls back to error, and has its own template
--- http_config
    llm_format f {
        start    off;
        delta    '{"d": $llm_delta}';
        complete '{"ok": true}';
        error    event=error '{"e": $llm_error_code}';
        shutdown event=bye '{"bye": $llm_error_code, "seq": $llm_seq, "id": $llm_event_id, "job": $llm_job_id, "state": $llm_state}';
    }
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
        llm_format f;
    }
    location = /mock {
        return 500 'nope';
    }
--- request
GET /g
--- response_body_like eval
qr{id: ([A-Za-z0-9_-]{22}):2
event: error
data: \{"e":"upstream_status"\}

\z}



=== TEST 10: coalescing: fast deltas are merged into fewer events, same text
--- http_config
    llm_format c {
        start    off;
        delta    '{"d": $llm_delta}';
        complete '{"text": $llm_text}';
        error    '{"error": $llm_error_message}';
        coalesce 300ms;
    }
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tokens=20&tps=100&ttft=0&token_size=2;
        llm_model  m;
        llm_prompt "hi";
        llm_format c;
    }
--- request
GET /g
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):\d+
data: \{"d":"[^"]+"\}

(?:id: \1:\d+
data: \{"d":"[^"]+"\}

){0,8}id: \1:\d+
data: \{"text":"[^"]{40}"\}

\z}



=== TEST 11: coalescing by size: deltas wait until enough text is due
--- http_config
    llm_format c {
        start    off;
        delta    '{"d": $llm_delta}';
        complete '{"n": $llm_output_tokens}';
        error    '{"error": $llm_error_message}';
        coalesce 1h 10;
    }
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tokens=20&tps=200&ttft=0&token_size=2;
        llm_model  m;
        llm_prompt "hi";
        llm_format c;
    }
--- request
GET /g
--- response_body_like eval
qr{\Aretry: 3000

(?:id: ([A-Za-z0-9_-]{22}):\d+
data: \{"d":"[^"]{10,}"\}

)+(?:id: \1:\d+
data: \{"d":"[^"]*"\}

)?id: \1:\d+
data: \{"n":20\}

\z}



=== TEST 12: openai: chat.completion.chunk objects and [DONE]
--- config
    location = /v1/chat/completions {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_provider anthropic;
        llm_model  claude-x;
        llm_prompt "hi";
        llm_format openai;
    }
    location = /mock {
        echo -n 'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":4}}}\n\n';
        echo -n 'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"He\\"y"}}\n\n';
        echo -n 'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":1}}\n\n';
        echo -n 'event: message_stop\ndata: {"type":"message_stop"}\n\n';
    }
--- request
GET /v1/chat/completions
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):1
data: \{"id":"chatcmpl-\1","object":"chat\.completion\.chunk","created":\d+,"model":"claude-x","choices":\[\{"index":0,"delta":\{"role":"assistant","content":""\},"finish_reason":null\}\]\}

id: \1:2
data: \{"id":"chatcmpl-\1","object":"chat\.completion\.chunk","created":\d+,"model":"claude-x","choices":\[\{"index":0,"delta":\{"content":"He\\"y"\},"finish_reason":null\}\]\}

data: \{"id":"chatcmpl-\1","object":"chat\.completion\.chunk","created":\d+,"model":"claude-x","choices":\[\{"index":0,"delta":\{\},"finish_reason":"length"\}\]\}

id: \1:3
data: \[DONE\]

\z}



=== TEST 13: openai: an upstream failure is an OpenAI error object
--- config
    location = /v1/chat/completions {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
        llm_format openai;
    }
    location = /mock {
        return 429 '{"error":{"message":"slow down"}}';
    }
--- request
GET /v1/chat/completions
--- response_body_like eval
qr{id: ([A-Za-z0-9_-]{22}):2
data: \{"error":\{"message":"[^"]*slow down[^"]*","type":"upstream_status","code":"upstream_status"\}\}

\z}



=== TEST 14: nginx -t: a template that is not JSON
--- http_config
    llm_format bad {
        start    '{"a": $llm_job_id,}';
        complete '{}';
        error    '{}';
    }
--- config
--- must_die
--- error_log eval
qr/llm_format: "start" template is not JSON: .* in .*nginx\.conf:\d+/



=== TEST 15: nginx -t: a variable where JSON needs a key
--- http_config
    llm_format bad {
        complete '{$llm_text: 1}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: "complete" template is not JSON



=== TEST 16: nginx -t: an unknown $llm_ variable
--- http_config
    llm_format bad {
        complete '{"x": $llm_nope}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: "complete" template: unknown variable "$llm_nope"



=== TEST 17: nginx -t: fields of a variable that has none
--- http_config
    llm_format bad {
        complete '{"x": ${llm_text.a}}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: "complete" template: "$llm_text" has no fields



=== TEST 18: nginx -t: an unknown kind
--- http_config
    llm_format bad {
        finish   '{}';
        complete '{}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: unknown event kind "finish"



=== TEST 19: nginx -t: a format without a final event
--- http_config
    llm_format bad {
        delta    '{"d": $llm_delta}';
        complete '{}';
    }
--- config
--- must_die
--- error_log
llm_format "bad" needs both a "complete" and an "error" template



=== TEST 20: nginx -t: complete cannot be off
--- http_config
    llm_format bad {
        complete off;
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: "complete" cannot be "off" (a stream ends with it)



=== TEST 21: nginx -t: an event name with a line break
--- http_config
    llm_format bad {
        complete "event=a
b" '{}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: invalid event name



=== TEST 22: nginx -t: an unknown format, and one used before it is defined
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
        llm_format nope;
    }
--- must_die
--- error_log
unknown llm_format "nope" (a format is defined before it is used)



=== TEST 23: nginx -t: a duplicate format, a duplicate JSON answer
--- http_config
    llm_format a {
        complete '{}';
        error    '{}';
    }
    llm_format a {
        complete '{}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
duplicate llm_format "a"



=== TEST 24: nginx -t: JSON answers take no event name; bad coalesce
--- http_config
    llm_format a {
        complete '{}';
        error    '{}';
        refusal  event=x '{}';
    }
--- config
--- must_die
--- error_log
llm_format: "refusal" is a JSON answer, not an event: it takes no event name



=== TEST 25: nginx -t: coalesce needs a time
--- http_config
    llm_format a {
        complete '{}';
        error    '{}';
        coalesce 0;
    }
--- config
--- must_die
--- error_log
llm_format: invalid coalesce time "0"



=== TEST 26: nginx -t: an unterminated ${
--- http_config
    llm_format a {
        complete '{"a": ${llm_text}}';
        error    '{"a": ${llm_text';
    }
--- config
--- must_die
--- error_log
llm_format: "error" template: unterminated "${"



=== TEST 27: refusals before the stream take the format's shape, with the status
--- http_config
    llm_format learning {
        complete '{"progress": 100, "done": true}';
        error    '{"error": $llm_error_message}';
        refusal  '{"error": $llm_error_message, "code": $llm_error_code, "status": $llm_status}';
    }
--- config
    location = /generate-stream {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions;
        llm_model  m;
        llm_prompt "$llm_input_topic";
        llm_format learning;
    }
--- request
POST /generate-stream
topic=
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body
{"error":"the prompt is empty","code":"invalid_request","status":400}



=== TEST 28: the blocking twin: response and refusal shapes (POST /run)
--- http_config
    llm_format content {
        complete event=complete '{"success": true, "output": $llm_text}';
        error    event=error '{"success": false, "error": $llm_error_message}';
        response '{"success": true, "output": $llm_text, "metadata": {"usage": $llm_usage, "finish_reason": $llm_finish_reason}}';
        refusal  '{"success": false, "error": $llm_error_message, "partial": $llm_text}';
    }
--- config
    location = /run {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_system "sys";
        llm_model  m;
        llm_prompt "$llm_input_topic";
        llm_format content;
    }
    location = /run-fails {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=cut&after=2&tps=0;
        llm_model  m;
        llm_prompt "$llm_input_topic";
        llm_format content;
    }
--- request eval
["POST /run\n{\"topic\":\"SSE\"}", "POST /run-fails\n{\"topic\":\"SSE\"}"]
--- more_headers
Content-Type: application/json
Accept: application/json
--- error_code eval
[200, 502]
--- response_body_like eval
[qr/\A\{"success":true,"output":"sys\|SSE","metadata":\{"usage":\{"input_tokens":\d+,"output_tokens":\d+,"total_tokens":\d+\},"finish_reason":"stop"\}\}\n\z/,
 qr/\A\{"success":false,"error":"[^"]+","partial":"[^"]+"\}\n\z/]



=== TEST 29: openai: a Chat Completions body, its messages forwarded after the system prompt
--- config
    location = /v1/chat/completions {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_system "house rules";
        llm_model  served-model;
        llm_format openai;
    }
--- request
POST /v1/chat/completions
{"model":"gpt-x","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"say \"hi\""}],"stream":true,"stream_options":{"include_usage":true},"temperature":0.2,"max_tokens":50}
--- more_headers
Content-Type: application/json
Accept: application/json
--- response_headers
Content-Type: text/event-stream
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):1
data: \{"id":"chatcmpl-\1","object":"chat\.completion\.chunk","created":\d+,"model":"served-model","choices":\[\{"index":0,"delta":\{"role":"assistant","content":""\},"finish_reason":null\}\]\}

(?:id: \1:\d+
data: \{"id":"chatcmpl-\1",[^\n]*"delta":\{"content":"[^\n]*"\},"finish_reason":null\}\]\}

)+data: \{"id":"chatcmpl-\1",[^\n]*"choices":\[\{"index":0,"delta":\{\},"finish_reason":"stop"\}\]\}

data: \{"id":"chatcmpl-\1",[^\n]*"choices":\[\],"usage":\{"prompt_tokens":\d+,"completion_tokens":\d+,"total_tokens":\d+\}\}

id: \1:\d+
data: \[DONE\]

\z}



=== TEST 30: openai: what the upstream was sent (the mock's /last)
--- config
    location = /v1/chat/completions {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tag=fmt30;
        llm_system "house rules";
        llm_model  served-model;
        llm_format openai;
    }
    location = /last {
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/last?tag=fmt30;
    }
--- request eval
["POST /v1/chat/completions\n{\"model\":\"gpt-x\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"},{\"role\":\"assistant\",\"content\":\"hi\"},{\"role\":\"user\",\"content\":\"again\"}],\"temperature\":0,\"max_tokens\":7}", "GET /last"]
--- more_headers
Content-Type: application/json
--- response_body_like eval
[qr/"object":"chat\.completion"/,
 qr/"messages":\[\{"role":"system","content":"house rules"\},\{"role":"user","content":"hello"\},\{"role":"assistant","content":"hi"\},\{"role":"user","content":"again"\}\].*"temperature":0,"max_tokens":7/s]



=== TEST 31: openai: "stream": false gets a chat.completion object
--- config
    location = /v1/chat/completions {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_format openai;
    }
--- request
POST /v1/chat/completions
{"model":"m","messages":[{"role":"user","content":"ping"}]}
--- more_headers
Content-Type: application/json
--- response_headers
Content-Type: application/json
--- response_body_like eval
qr/\A\{"id":"chatcmpl-[A-Za-z0-9_-]{22}","object":"chat\.completion","created":\d+,"model":"m","choices":\[\{"index":0,"message":\{"role":"assistant","content":"\|ping"\},"finish_reason":"stop"\}\],"usage":\{"prompt_tokens":\d+,"completion_tokens":\d+,"total_tokens":\d+\}\}\n\z/



=== TEST 32: openai: bad requests are OpenAI error objects
--- config
    location = /v1/chat/completions {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions;
        llm_model  m;
        llm_format openai;
    }
--- request eval
["POST /v1/chat/completions\n{\"messages\":[]}",
 "POST /v1/chat/completions\n{\"messages\":[{\"role\":\"user\"}]}",
 "POST /v1/chat/completions\n{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}",
 "POST /v1/chat/completions\n{\"model\":\"m\"}"]
--- more_headers
Content-Type: application/json
--- error_code eval
[400, 400, 400, 400]
--- response_body eval
["{\"error\":{\"message\":\"\\\"messages\\\" must be a non-empty array\",\"type\":\"invalid_body\",\"code\":\"invalid_body\"}}\n",
 "{\"error\":{\"message\":\"each message needs a \\\"role\\\" and a \\\"content\\\"\",\"type\":\"invalid_body\",\"code\":\"invalid_body\"}}\n",
 "{\"error\":{\"message\":\"\\\"temperature\\\" must be a number from 0 to 2\",\"type\":\"invalid_body\",\"code\":\"invalid_body\"}}\n",
 "{\"error\":{\"message\":\"the prompt is empty\",\"type\":\"invalid_request\",\"code\":\"invalid_request\"}}\n"]



=== TEST 33: nginx -t: llm_prompt may be left out only with llm_format openai
--- config
    location = /v1/chat/completions {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions;
        llm_model  m;
        llm_format default;
    }
--- must_die
--- error_log
"llm_prompt" is required where "llm_pass" is set, unless "llm_format openai" is



=== TEST 34: nginx -t: a pipeline's kinds and variables are accepted
--- http_config
    llm_format pipe {
        start      '{"t": "start"}';
        step_start event=step_start '{"step": $llm_step, "i": $llm_step_index, "of": $llm_steps_total, "note": "Running $llm_step ($llm_attempt)", "it": $llm_iteration, "its": $llm_iterations, "item": $llm_item, "x": ${llm_item.id}}';
        progress   event=progress '{"p": $llm_progress, "stage": $llm_stage, "msg": $llm_message, "done": $llm_completed, "eta": $llm_eta}';
        step       '{"out": $llm_output, "title": ${llm_output.title}, "d": $llm_duration, "pre": $llm_preview}';
        step       '{"e": $llm_event, "u": ${llm_event.usage.output_tokens}}';
        check      off;
        complete   '{"outputs": $llm_outputs, "a": ${llm_outputs.outline.title}, "steps": $llm_steps, "stopped": $llm_stopped_at, "passed": $llm_passed}';
        error      '{"e": $llm_error_code, "outputs": $llm_outputs}';
        response   '{"outputs": $llm_outputs, "steps": $llm_steps}';
    }
--- config
    location = /t {
        llm_format pipe;
        return 200 "ok\n";
    }
--- request
GET /t
--- response_body
ok



=== TEST 35: nginx -t: a payload field that is no object has no fields
--- http_config
    llm_format bad {
        step     '{"x": ${llm_step.a}}';
        complete '{}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: "step" template: "$llm_step" has no fields



=== TEST 36: nginx -t: the state's steps are an array, without fields
--- http_config
    llm_format bad {
        complete '{"x": ${llm_steps.a}}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: "complete" template: "$llm_steps" has no fields



=== TEST 37: nginx -t: an unknown pipeline variable
--- http_config
    llm_format bad {
        progress '{"x": $llm_percent}';
        complete '{}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: "progress" template: unknown variable "$llm_percent"



=== TEST 38: nginx -t: a payload kind that is off takes no template after
--- http_config
    llm_format bad {
        check    off;
        check    '{"x": $llm_passed}';
        complete '{}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: "check" is duplicate, or "off" and a template for the same events



=== TEST 39: ${name:N}: the first N characters of a text, or of a JSON value's text
--- http_config
    llm_format cut {
        start    off;
        delta    off;
        step     '{"preview": ${llm_output:8}, "n": ${llm_output.n:1}}';
        complete '{"p": ${llm_text:3}, "q": "<${llm_text:2}>", "all": ${llm_text:100}}';
        error    '{"error": $llm_error_message}';
    }
    llm_pipeline one {
        step only {
            pass   "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22n%22%3A%20123%2C%20%22w%22%3A%20%22h%C3%A9%22%7D";
            prompt "hi";
            output json;
            stream on;
        }
    }
--- config
    location = /g {
        llm_model    m;
        llm_pipeline one;
        llm_format   cut;
    }
--- request
GET /g
--- response_body_like eval
qr{data: \{"preview":"\{\\"n\\":123","n":"1"\}\n\n.*data: \{"p":"\{\\"n","q":"<\{\\">","all":"\{\\"n\\": 123, \\"w\\": \\"h\x{c3}\x{a9}\\"\}"\}\n\n\z}s



=== TEST 40: nginx -t: ${name:N} takes a positive number
--- http_config
    llm_format f {
        complete '{"p": ${llm_text:0}}';
        error    '{"e": 1}';
    }
--- config
--- must_die
--- error_log
llm_format: "complete" template: "${...:N}" takes a number of characters from 1 to 1048576
