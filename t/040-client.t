# The client side of a stream: heartbeats, a client that leaves, a proxy in
# front, and clients that read slowly.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: heartbeat comments while the upstream is quiet
--- config
    location = /g {
        llm_pass      http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_heartbeat 100ms;
        llm_model     m;
        llm_prompt    "hi";
    }
    location = /mock {
        echo_sleep 0.5;
        echo -n 'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    }
--- request
GET /g
--- response_body_like chomp
\Aretry: 3000\n\nid: \S+:1\nevent: start\ndata: \S+\n\n(: ping\n\n){2,}id: \S+:2\nevent: delta\n



=== TEST 2: a client that leaves: the upstream request is dropped
--- config
    location = /g {
        llm_on_disconnect cancel;
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tag=abort1&mode=stall&after=3&tps=20&ttft=0;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /stats {
        echo_sleep 0.5;
        echo_location /mockstats;
    }
    location = /mockstats {
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/stats?tag=abort1;
    }
--- request
GET /g HTTP/1.0
--- timeout: 0.5
--- abort
--- response_body_like chomp
event: delta
--- wait: 0.5
--- error_log
client gone, upstream request cancelled



=== TEST 3: the mock upstream saw the abort (same config, no restart)
--- config
    location = /g {
        llm_on_disconnect cancel;
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tag=abort1&mode=stall&after=3&tps=20&ttft=0;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /stats {
        echo_sleep 0.5;
        echo_location /mockstats;
    }
    location = /mockstats {
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/stats?tag=abort1;
    }
--- request
GET /stats
--- response_body_like chomp
"streams_completed":0,"streams_aborted":[1-9]



=== TEST 4: a client that leaves while waiting for the first token
--- config
    location = /g {
        llm_on_disconnect cancel;
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tag=abort2&mode=hang;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /stats {
        echo_sleep 0.5;
        echo_location /mockstats;
    }
    location = /mockstats {
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/stats?tag=abort2;
    }
--- request
GET /g HTTP/1.0
--- timeout: 0.5
--- abort
--- response_body_like chomp
event: start
--- wait: 0.5
--- error_log
client gone, upstream request cancelled



=== TEST 5: the hanging upstream request was closed too
--- config
    location = /g {
        llm_on_disconnect cancel;
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tag=abort2&mode=hang;
        llm_model  m;
        llm_prompt "hi";
    }
    location = /stats {
        echo_sleep 0.5;
        echo_location /mockstats;
    }
    location = /mockstats {
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/stats?tag=abort2;
    }
--- request
GET /stats
--- response_body_like chomp
"streams_aborted":[1-9]\d*,"active":0



=== TEST 6: through an nginx proxy with default buffering, events still flow
--- config
    location = /front {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/g;
        proxy_http_version 1.1;
    }
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=stall&after=2&tps=10&ttft=0;
        llm_model  m;
        llm_prompt "hi";
    }
--- request
GET /front HTTP/1.0
--- timeout: 1
--- abort
--- response_body_like chomp
event: start\n.*event: delta\n.*event: delta\n



=== TEST 7: many tokens quickly reach a client that reads in full
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tokens=3000&tps=0&token_size=32;
        llm_model  m;
        llm_prompt "hi";
    }
--- request
GET /g
--- response_body_like chomp
event: complete\ndata: \{"text":"(?:[^"]{30000}){3}[^"]*","finish_reason":"stop"
--- no_error_log
[alert]
[error]
