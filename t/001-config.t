# Configuration: what nginx -t accepts and what it refuses, by directive.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a complete location loads
--- config
    location = /g {
        llm_pass  http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model m;
        llm_prompt "hi";
    }
    location = /ok { return 200 "up\n"; }
--- request
GET /ok
--- response_body
up
--- no_error_log
[emerg]



=== TEST 2: llm_prompt is required
--- config
    location = /g {
        llm_pass  http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model m;
    }
--- must_die
--- error_log
"llm_prompt" is required where "llm_pass" is set



=== TEST 3: llm_model is required
--- config
    location = /g {
        llm_pass  http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_prompt "hi";
    }
--- must_die
--- error_log
"llm_model" is required where "llm_pass" is set



=== TEST 4: llm_model inherited from the server level
--- config
    llm_model m;
    llm_prompt "hi";
    location = /g {
        llm_pass  http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
    }
    location = /ok { return 200 "up\n"; }
--- request
GET /ok
--- response_body
up



=== TEST 5: llm_pass needs http:// or https://
--- config
    location = /g {
        llm_pass  ftp://example.com/v1;
        llm_model m;
        llm_prompt "hi";
    }
--- must_die
--- error_log
invalid URL "ftp://example.com/v1" in "llm_pass"



=== TEST 6: llm_pass needs a host
--- config
    location = /g {
        llm_pass  http:///v1/chat/completions;
        llm_model m;
        llm_prompt "hi";
    }
--- must_die
--- error_log
"llm_pass": no host



=== TEST 7: unknown provider
--- config
    location = /g {
        llm_pass     http://127.0.0.1/v1;
        llm_provider gemini;
        llm_model    m;
        llm_prompt   "hi";
    }
--- must_die
--- error_log
invalid value "gemini" in "llm_provider"



=== TEST 8: unknown thread pool
--- config
    location = /g {
        llm_pass        http://127.0.0.1/v1;
        llm_model       m;
        llm_prompt      "hi";
        llm_thread_pool nosuchpool;
    }
--- must_die
--- error_log
unknown thread pool "nosuchpool"



=== TEST 9: llm_pass twice
--- config
    location = /g {
        llm_pass   http://127.0.0.1/a;
        llm_pass   http://127.0.0.1/b;
        llm_model  m;
        llm_prompt "hi";
    }
--- must_die
--- error_log
"llm_pass" directive is duplicate



=== TEST 10: a bad time value names the directive
--- config
    location = /g {
        llm_pass          http://127.0.0.1/a;
        llm_model         m;
        llm_prompt        "hi";
        llm_idle_timeout  soon;
    }
--- must_die
--- error_log
"llm_idle_timeout" directive invalid value



=== TEST 11: llm_pass is not allowed at the server level
--- config
    llm_pass http://127.0.0.1/a;
--- must_die
--- error_log
"llm_pass" directive is not allowed here



=== TEST 12: a named thread pool from thread_pool
--- main_config
    thread_pool llm threads=2;
--- config
    location = /g {
        llm_pass        http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model       m;
        llm_prompt      "hi";
        llm_thread_pool llm;
    }
    location = /ok { return 200 "up\n"; }
--- request
GET /ok
--- response_body
up



=== TEST 13: an unknown store, without repeating its password
--- config
    llm_store postgres://user:secret1@x;
    location = /g {
        llm_pass   http://127.0.0.1/a;
        llm_model  m;
        llm_prompt "hi";
    }
--- must_die
--- error_log
invalid store "postgres:..." in "llm_store"



=== TEST 14: a memory zone without a size
--- config
    llm_store memory zone=jobs;
--- must_die
--- error_log
invalid zone "zone=jobs" in "llm_store"



=== TEST 15: a bad ttl
--- config
    llm_store memory ttl=never;
--- must_die
--- error_log
invalid ttl "never" in "llm_store"



=== TEST 16: llm_on_disconnect takes cancel or continue
--- config
    llm_on_disconnect wait;
--- must_die
--- error_log
invalid value "wait" in "llm_on_disconnect"



=== TEST 17: llm_on_disconnect continue with a bad time
--- config
    llm_on_disconnect continue soon;
--- must_die
--- error_log
invalid time "soon" in "llm_on_disconnect"



=== TEST 18: llm_pass in a job location is for the pipelines it continues
--- config
    location /j {
        llm_pass   http://127.0.0.1/a;
        llm_model  m;
        llm_job    $arg_id;
    }
    location = /ok { return 200 "up\n"; }
--- request
GET /j?id=AAAAAAAAAAAAAAAAAAAAAA
--- error_code: 404
--- response_body_like chomp
"code":"job_not_found"



=== TEST 19: stores, policies and a job location load
--- config
    llm_store memory zone=jobs:1m ttl=10m;
    llm_on_disconnect continue 1m;
    llm_job_owner $cookie_session;
    location = /g {
        llm_pass    http://127.0.0.1:$TEST_NGINX_SERVER_PORT/mock;
        llm_model   m;
        llm_prompt  "hi";
        llm_job_url /jobs/$llm_job_id;
    }
    location ~ ^/jobs/(?<id>[\w-]+)$ {
        llm_job $id;
    }
    location = /ok { return 200 "up\n"; }
--- request
GET /ok
--- response_body
up



=== TEST 20: llm_max_text needs a size
--- config
    llm_max_text lots;
--- must_die
--- error_log
"llm_max_text" directive invalid value



=== TEST 21: llm_max_text 0 is refused
--- config
    llm_max_text 0;
--- must_die
--- error_log
"llm_max_text" directive must be more than 0 and less than 4g



=== TEST 22: llm_max_events needs room for the start and final events
--- config
    llm_max_events 2;
--- must_die
--- error_log
"llm_max_events" directive must be at least 8



=== TEST 23: llm_max_events needs a number
--- config
    llm_max_events many;
--- must_die
--- error_log
"llm_max_events" directive invalid number



=== TEST 24: a bad unsaved= in llm_store
--- config
    llm_store redis://127.0.0.1 unsaved=x;
--- must_die
--- error_log
invalid unsaved "x" in "llm_store"



=== TEST 25: the bounds load
--- config
    llm_max_text   16m;
    llm_store      redis://127.0.0.1 unsaved=1m;
    location = /g {
        llm_pass       http://127.0.0.1/a;
        llm_model      m;
        llm_prompt     "hi";
        llm_max_text   1m;
        llm_max_events 1000;
    }
    location = /ok { return 200 "up\n"; }
--- request
GET /ok
--- response_body
up




=== TEST 26: llm_limit_jobs names a zone nobody defined
--- config
    llm_limit_jobs nosuch 2;
--- must_die
--- error_log
unknown llm_limit_jobs zone "nosuch" (llm_limit_jobs_zone defines it)



=== TEST 27: llm_limit_jobs_zone needs zone=
--- http_config
    llm_limit_jobs_zone $binary_remote_addr;
--- config
--- must_die
--- error_log
invalid number of arguments in "llm_limit_jobs_zone" directive



=== TEST 28: an llm_limit_jobs_zone too small
--- http_config
    llm_limit_jobs_zone $binary_remote_addr zone=perip:1k;
--- config
--- must_die
--- error_log
invalid zone size "zone=perip:1k" in "llm_limit_jobs_zone"



=== TEST 29: llm_limit_jobs needs a positive number
--- http_config
    llm_limit_jobs_zone $binary_remote_addr zone=perip:1m;
--- config
    llm_limit_jobs perip 0;
--- must_die
--- error_log
invalid number of jobs "0" in "llm_limit_jobs"



=== TEST 30: a bad retry_after in llm_limit_jobs
--- http_config
    llm_limit_jobs_zone $binary_remote_addr zone=perip:1m;
--- config
    llm_limit_jobs perip 2 retry_after=soon;
--- must_die
--- error_log
invalid parameter "retry_after=soon" in "llm_limit_jobs"



=== TEST 31: the same zone twice in one place
--- http_config
    llm_limit_jobs_zone $binary_remote_addr zone=perip:1m;
--- config
    llm_limit_jobs perip 2;
    llm_limit_jobs perip 3;
--- must_die
--- error_log
"llm_limit_jobs" directive is duplicate



=== TEST 32: a limit on the store's zone is refused
--- http_config
    llm_store memory zone=jobs:1m;
--- config
    llm_limit_jobs jobs 2;
--- must_die
--- error_log
unknown llm_limit_jobs zone "jobs"



=== TEST 33: llm_max_duration needs a time
--- config
    llm_max_duration soon;
--- must_die
--- error_log
"llm_max_duration" directive invalid value



=== TEST 34: llm_answer is auto, stream or json
--- config
    llm_answer maybe;
--- must_die
--- error_log
invalid value "maybe" in "llm_answer": auto, stream or json expected
