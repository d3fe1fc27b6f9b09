# llm_metrics, llm_status and llm_metrics_label at nginx -t: mistakes
# name the directive; an llm_status location answers without a generation
# location in the configuration; HEAD and POST on both.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: llm_metrics with llm_pass in one location
--- config
    location = /m {
        llm_metrics;
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions;
        llm_model  m;
        llm_prompt "hi";
    }
--- must_die
--- error_log
"llm_metrics" cannot be used together with "llm_pass", "llm_job" or "llm_pipeline"



=== TEST 2: llm_status twice
--- config
    location = /s {
        llm_status;
        llm_status;
    }
--- must_die
--- error_log
"llm_status" directive is duplicate



=== TEST 3: llm_metrics and llm_status in one location
--- config
    location = /s {
        llm_status;
        llm_metrics;
    }
--- must_die
--- error_log
"llm_metrics" directive cannot be used together with "llm_status"



=== TEST 4: llm_metrics takes no argument
--- config
    location = /m {
        llm_metrics on;
    }
--- must_die
--- error_log
invalid number of arguments in "llm_metrics" directive



=== TEST 5: llm_status on a thread pool that does not exist
--- config
    location = /s {
        llm_thread_pool nosuch;
        llm_status;
    }
--- must_die
--- error_log
unknown thread pool "nosuch"



=== TEST 6: llm_status alone: healthy, with the memory store's zone
--- config
    location = /s {
        llm_status;
    }
--- request
GET /s
--- response_headers
Content-Type: application/json
--- response_body_like
^\{"status":"ok","store":\{"type":"memory","reachable":true\},"thread_pool":\{"name":"default","ok":true\},"jobs_running":0,"zones":\[\{"name":"llm_metrics","size":\d+,"used":\d+\},\{"name":"llm_jobs","size":\d+,"used":\d+\}\]\}$
--- no_error_log
[error]



=== TEST 7: llm_metrics alone: no series of jobs, the families all there
--- config
    location = /m {
        llm_metrics;
    }
--- request
GET /m
--- response_headers
Content-Type: text/plain; version=0.0.4
--- response_body_like eval
qr{\A# HELP llm_streams_open Event streams open now\.
# TYPE llm_streams_open gauge
llm_streams_open 0
.*# TYPE llm_jobs_running gauge
# HELP .*# TYPE llm_jobs_total counter
# HELP .*llm_store_flush_seconds_count 0
\z}s


=== TEST 8: POST to llm_metrics and llm_status: 405
--- config
    location = /m {
        llm_metrics;
    }
    location = /s {
        llm_status;
    }
--- request eval
["POST /m\nx", "POST /s\nx"]
--- error_code eval
[405, 405]



=== TEST 9: HEAD on llm_status: the status, no body
--- config
    location = /s {
        llm_status;
    }
--- request
HEAD /s
--- error_code: 200
--- response_body
