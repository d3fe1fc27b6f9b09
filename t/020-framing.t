# Upstream framing as real servers send it: split anywhere, any line
# ending, comments, pings, multi-line data, errors inside the stream,
# unparsable data and over-long lines.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a frame split inside a UTF-8 sequence
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"w�';
        echo_flush;
        echo_sleep 0.05;
        echo -n '�rld"}}]}\n';
        echo_flush;
        echo_sleep 0.05;
        echo -n '\n';
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: delta\ndata: \{"text":"wörld"\}\n\n.*event: complete\ndata: \{"text":"wörld","finish_reason":"stop"\}
--- no_error_log
[alert]
[crit]



=== TEST 2: a stream cut every 5 bytes
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data:';
        echo_flush;
        echo_sleep 0.01;
        echo -n ' {"ch';
        echo_flush;
        echo_sleep 0.01;
        echo -n 'oices';
        echo_flush;
        echo_sleep 0.01;
        echo -n '":[{"';
        echo_flush;
        echo_sleep 0.01;
        echo -n 'delta';
        echo_flush;
        echo_sleep 0.01;
        echo -n '":{"c';
        echo_flush;
        echo_sleep 0.01;
        echo -n 'onten';
        echo_flush;
        echo_sleep 0.01;
        echo -n 't":"H';
        echo_flush;
        echo_sleep 0.01;
        echo -n 'el"}}';
        echo_flush;
        echo_sleep 0.01;
        echo -n ']}\n\nd';
        echo_flush;
        echo_sleep 0.01;
        echo -n 'ata: ';
        echo_flush;
        echo_sleep 0.01;
        echo -n '{"cho';
        echo_flush;
        echo_sleep 0.01;
        echo -n 'ices"';
        echo_flush;
        echo_sleep 0.01;
        echo -n ':[{"d';
        echo_flush;
        echo_sleep 0.01;
        echo -n 'elta"';
        echo_flush;
        echo_sleep 0.01;
        echo -n ':{"co';
        echo_flush;
        echo_sleep 0.01;
        echo -n 'ntent';
        echo_flush;
        echo_sleep 0.01;
        echo -n '":"lo';
        echo_flush;
        echo_sleep 0.01;
        echo -n '"}}]}';
        echo_flush;
        echo_sleep 0.01;
        echo -n '\n\n';
        echo_flush;
        echo_sleep 0.01;
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"Hello","finish_reason":"stop"\}
--- no_error_log
[alert]
[crit]



=== TEST 3: CRLF line endings
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"a"}}]}\r\n\r\ndata: {"choices":[{"delta":{"content":"b"}}]}\r\n\r\n';
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\r\n\r\ndata: [DONE]\r\n\r\n';
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"ab","finish_reason":"stop"\}
--- no_error_log
[alert]
[crit]



=== TEST 4: lone CR line endings, one split across writes
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"a"}}]}\r\rdata: {"choices":[{"delta":{"content":"b"}}]}\r';
        echo_flush;
        echo_sleep 0.05;
        echo -n '\r';
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\r\rdata: [DONE]\r\r';
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"ab","finish_reason":"stop"\}
--- no_error_log
[alert]
[crit]



=== TEST 5: comments, pings, ids and data without a space
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n ': OPENROUTER PROCESSING\n\n';
        echo -n ': ping\n\n';
        echo -n 'id: 7\nretry: 10\ndata:{"choices":[{"delta":{"content":"x"}}]}\n\n';
        echo -n 'event: ping\ndata: {}\n\n';
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"x","finish_reason":"stop"\}
--- no_error_log
[alert]
[crit]



=== TEST 6: data split over several data lines
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":\ndata: [{"delta":{"content":"multi"}}]}\n\n';
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"multi","finish_reason":"stop"\}
--- no_error_log
[alert]
[crit]



=== TEST 7: an error object inside the stream
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"part"}}]}\n\n';
        echo_flush;
        echo_sleep 0.05;
        echo -n 'data: {"error":{"message":"Overloaded","type":"server_error"}}\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_error","message":"Overloaded","text":"part"\}\n\n\z
--- no_error_log
[alert]
[crit]



=== TEST 8: unparsable data
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"ok"}}]}\n\n';
        echo -n 'data: {not json\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_invalid","message":"[^"]+","text":"ok"\}\n\n\z
--- no_error_log
[alert]
[crit]



=== TEST 9: a line over the size bound
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"ok"}}]}\n\n';
        echo -n 'data: ';
        echo_duplicate 300000 'a';
        echo -n '\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_invalid","message":"[^"]+","text":"ok"\}\n\n\z
--- no_error_log
[alert]
[crit]



=== TEST 10: a stream that ends before its end
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"half"}}]}\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_truncated","message":"[^"]+","text":"half"\}\n\n\z
--- no_error_log
[alert]
[crit]



=== TEST 11: a finish reason without [DONE] completes
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"fin"}}]}\n\n';
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"fin","finish_reason":"length"\}\n\n\z
--- no_error_log
[alert]
[crit]



=== TEST 12: escapes, \\u sequences and surrogate pairs in tokens
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"a\\\\n\\"q\\" \\u00e9\\ud83d\\ude00"}}]}\n\n';
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"a\\\\n\\"q\\" é😀","finish_reason":"stop"\}
--- no_error_log
[alert]
[crit]



=== TEST 13: a byte order mark before the first line
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n '﻿data: {"choices":[{"delta":{"content":"bom"}}]}\n\n';
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"bom","finish_reason":"stop"\}
--- no_error_log
[alert]
[crit]



=== TEST 14: a long finish reason is cut on a character, huge token counts are dropped
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"ok"}}]}\n\n';
        echo -n 'data: {"choices":[{"delta":{},"finish_reason":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaéé"}]}\n\n';
        echo -n 'data: {"choices":[],"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":9223372036854775807}}\n\n';
        echo -n 'data: [DONE]\n\n';
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"ok","finish_reason":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"\}\n\n\z



=== TEST 15: token counts up to the bound are kept, and their total
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /mock {
        echo -n 'data: {"choices":[{"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n';
        echo -n 'data: {"choices":[],"usage":{"prompt_tokens":2147483647,"completion_tokens":2147483647}}\n\n';
        echo -n 'data: [DONE]\n\n';
    }
--- request
GET /g
--- response_body_like chomp
"usage":\{"input_tokens":2147483647,"output_tokens":2147483647,"total_tokens":4294967294\}\}\n\n\z




=== TEST 16: a 200 that is an HTML page is not read for data: lines
--- config
    location = /g {
        llm_pass   "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=hidden&type=text/html;%20charset=utf-8";
        llm_model  m;
        llm_prompt "hi";
    }
--- request
GET /g
--- response_body_like chomp
event: error\ndata: \{"code":"upstream_invalid","message":"the upstream answered a page or a document, not a stream","text":""\}\n\n\z



=== TEST 17: a stream said to be text/plain is read as a stream
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=shown&type=text/plain;
        llm_model  m;
        llm_prompt "hi";
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"shown"
