# Inputs beyond JSON and URL-encoded bodies: multipart/form-data (what a
# browser's FormData sends; files are left out), and inputs the location
# sets itself from nginx variables (llm_input NAME VALUE), which come
# before anything the client sends, for single prompts and pipelines.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';

no_long_string();

run_tests();

__DATA__

=== TEST 1: multipart/form-data fills $llm_input_*
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_prompt "$llm_input_topic / $llm_input_level";
    }
--- request eval
"POST /g\r\n"
. "--XyZ\r\n"
. "Content-Disposition: form-data; name=\"topic\"\r\n\r\n"
. "red dragons\r\nand more\r\n"
. "--XyZ\r\n"
. "Content-Disposition: form-data; name=\"notes\"; filename=\"a.txt\"\r\n"
. "Content-Type: text/plain\r\n\r\n"
. "a file\r\n"
. "--XyZ\r\n"
. "content-disposition: form-data; name=level\r\n\r\n"
. "3\r\n"
. "--XyZ--\r\n"
--- more_headers
Content-Type: multipart/form-data; boundary=XyZ
--- response_body_like chomp
event: complete\ndata: \{"text":"\|red dragons\\r\\nand more / 3"



=== TEST 2: a quoted boundary, a file part left out
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_prompt "[$llm_input_file]$llm_input_topic";
    }
--- request eval
"POST /g\r\n"
. "preamble\r\n"
. "------WebKitFormBoundary7MA4YWxk\r\n"
. "Content-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\r\n"
. "\x00\x01\x02\r\n"
. "------WebKitFormBoundary7MA4YWxk\r\n"
. "Content-Disposition: form-data; name=\"topic\"\r\n\r\n"
. "tea\r\n"
. "------WebKitFormBoundary7MA4YWxk--"
--- more_headers
Content-Type: multipart/form-data; boundary="----WebKitFormBoundary7MA4YWxk"
--- response_body_like chomp
event: complete\ndata: \{"text":"\|\[\]tea"



=== TEST 3: a multipart body without a boundary: 400
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_prompt "$llm_input_topic";
    }
--- request
POST /g
--XyZ--
--- more_headers
Content-Type: multipart/form-data
--- error_code: 400
--- response_body_like chomp
"code":"invalid_body","message":"a multipart body needs a boundary"



=== TEST 4: a cut multipart body: 400
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_prompt "$llm_input_topic";
    }
--- request eval
"POST /g\r\n"
. "--XyZ\r\n"
. "Content-Disposition: form-data; name=\"topic\"\r\n\r\n"
. "never ends"
--- more_headers
Content-Type: multipart/form-data; boundary=XyZ
--- error_code: 400
--- response_body_like chomp
"code":"invalid_body","message":"malformed multipart body"



=== TEST 5: llm_input comes before what the client sends
--- config
    location = /g {
        llm_input  user $http_x_user;
        llm_input  plan "pro";
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_prompt "$llm_input_user/$llm_input_plan/$llm_input_topic";
    }
--- request
POST /g?plan=free
{"user": "mallory", "topic": "tea"}
--- more_headers
Content-Type: application/json
X-User: alice
--- response_body_like chomp
event: complete\ndata: \{"text":"\|alice/pro/tea"



=== TEST 6: llm_input in a pipeline: in its inputs, kept in its state
--- http_config
    llm_pipeline p {
        step one {
            pass   "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo&tps=0&ttft=0";
            prompt "modules=$llm_input_modules topic=$llm_input_topic";
            stream on;
        }
    }
--- config
    location = /g {
        llm_input    modules $http_x_modules;
        llm_model    m;
        llm_pipeline p;
    }
--- request
GET /g?topic=tea&modules=forged
--- more_headers
X-Modules: m1,m2
--- response_body_like chomp
event: complete\ndata: \{"text":"\|modules=m1,m2 topic=tea"



=== TEST 7: nginx -t: an llm_input name is letters, digits and _
--- config
    llm_input "a-b" x;
--- must_die
--- error_log
invalid input name "a-b" in "llm_input" (letters, digits and _)



=== TEST 8: nginx -t: an llm_input given twice
--- config
    llm_input a x;
    llm_input A y;
--- must_die
--- error_log
duplicate input "A" in "llm_input"



=== TEST 9: a quoted name with a backslash escape; the boundary's case counts
--- config
    location = /g {
        llm_pass   http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?mode=echo;
        llm_model  m;
        llm_prompt "$llm_input_topic/$llm_input_level";
    }
--- request eval
"POST /g\r\n"
. "--Bnd\r\n"
. "Content-Disposition: form-data; name=\"top\\ic\"\r\n\r\n"
. "tea\r\n"
. "--bnd\r\n"
. "Content-Disposition: form-data; name=\"level\"\r\n\r\n"
. "2\r\n"
. "--Bnd--\r\n"
--- more_headers
Content-Type: multipart/form-data; boundary=Bnd
--- response_body_like chomp
event: complete\ndata: \{"text":"\|tea\\r\\n--bnd\\r\\nContent-Disposition: form-data; name=\\"level\\"\\r\\n\\r\\n2/"
