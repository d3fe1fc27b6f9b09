# Pipelines: steps in order, JSON outputs, checks that pass, retry, go
# back with feedback, stop early or fail, repetition, a step that fails
# after others finished, events in the default and a template format, and
# every nginx -t error.  The mock answers each step from its URL (reply=,
# reply_N= for the N-th call of a tag, status_N=).

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: three steps: JSON outline, streamed draft, JSON review that passes
--- http_config
    llm_pipeline article {
        step outline {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22sections%22%3A%5B%22intro%22%2C%22body%22%5D%7D";
            prompt  "Outline an article about $llm_input_topic";
            output  json;
            stage   planning;
            message "Planning the article";
        }
        step draft {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&mode=echo";
            prompt  "Sections: ${llm_step_outline.sections}";
            stream  on;
        }
        step review {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22approved%22%3Atrue%2C%22score%22%3A0.9%7D";
            prompt  "Review: $llm_step_draft";
            output  json;
            check   approved = true else=draft attempts=2;
            check   score >= 0.8;
        }
    }
--- config
    location = /generate {
        llm_model    m;
        llm_pipeline article;
    }
--- request
GET /generate?topic=SSE
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):1
event: start
data: \{"job":"\1"\}

id: \1:2
event: step_start
data: \{[^\n]*"step":"outline","index":1,"total":3,"stage":"planning","attempt":1[^\n]*"message":"Planning the article"[^\n]*\}

id: \1:3
event: progress
data: \{"progress":0,"stage":"planning","step":"outline","index":1,"total":3,"completed":0,[^\n]*"message":"Planning the article"[^\n]*\}

id: \1:4
event: step
data: \{"step":"outline","index":1,"total":3,"attempt":1,"output":\{"sections":\["intro","body"\]\},"preview":"\{\\"sections[^\n]*\}

id: \1:5
event: step_start
data: \{[^\n]*"step":"draft","index":2[^\n]*\}

id: \1:6
event: progress
data: \{"progress":33,"stage":"draft",[^\n]*\}

(?:id: \1:\d+
event: delta
data: \{"text":"[^\n]*"\}

)+id: \1:\d+
event: step
data: \{"step":"draft","index":2,"total":3,"attempt":1,"output":"\|Sections: \[\\"intro\\",\\"body\\"\]"[^\n]*\}

id: \1:\d+
event: step_start
data: \{[^\n]*"step":"review"[^\n]*\}

id: \1:\d+
event: progress
data: \{"progress":66,[^\n]*\}

id: \1:\d+
event: step
data: \{"step":"review",[^\n]*"output":\{"approved":true,"score":0\.9\}[^\n]*\}

id: \1:\d+
event: check
data: \{"step":"review","passed":true,"field":"approved","expected":true,"actual":true,"attempt":1,"next":null\}

id: \1:\d+
event: check
data: \{"step":"review","passed":true,"field":"score","expected":0\.8,"actual":0\.9,"attempt":1,"next":null\}

id: \1:\d+
event: complete
data: \{"text":"\|Sections: \[\\"intro\\",\\"body\\"\]","finish_reason":"stop"[^\n]*\}

\z}
--- no_error_log
[error]
[alert]



=== TEST 2: a failed check goes back to an earlier step with the output as feedback
--- http_config
    llm_pipeline loop {
        step draft {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&mode=echo";
            prompt  "Write (attempt $llm_attempt) $llm_feedback";
            stream  on;
        }
        step review {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&tag=pl2&reply_1=%7B%22approved%22%3Afalse%2C%22feedback%22%3A%22add%20a%20conclusion%22%7D&reply=%7B%22approved%22%3Atrue%2C%22score%22%3A0.9%7D";
            prompt  "Review: $llm_step_draft";
            output  json;
            check   approved = true else=draft attempts=2;
        }
    }
--- config
    location = /generate {
        llm_model    m;
        llm_pipeline loop;
    }
    location = /reset {
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/stats/reset?tag=pl2;
    }
--- request eval
["POST /reset", "GET /generate"]
--- response_body_like eval
[qr/./,
qr{event: check
data: \{"step":"review","passed":false,"field":"approved","expected":true,"actual":false,"attempt":1,"next":"draft"\}

id: [^\n]+
event: step_start
data: \{[^\n]*"step":"draft","index":1,"total":2,[^\n]*"attempt":2[^\n]*\}

.*event: step
data: \{"step":"draft",[^\n]*"attempt":2,"output":"\|Write \(attempt 2\) \{\\"approved\\":false,\\"feedback\\":\\"add a conclusion\\"\}".*event: check
data: \{"step":"review","passed":true,[^\n]*"attempt":2,"next":null\}

id: [^\n]+
event: complete
data: \{"text":"\|Write \(attempt 1\) \|Write \(attempt 2\) \{[^\n]*\}

\z}s]



=== TEST 3: attempts exhausted: the pipeline fails, keeping what it made
--- http_config
    llm_pipeline strict {
        step draft {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=A%20draft.";
            prompt  "Write";
            stream  on;
        }
        step review {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22approved%22%3Afalse%7D";
            prompt  "Review: $llm_step_draft";
            output  json;
            check   approved = true else=draft attempts=2;
        }
    }
--- config
    location = /generate {
        llm_model    m;
        llm_pipeline strict;
    }
--- request
GET /generate
--- response_body_like eval
qr{"passed":false,[^\n]*"attempt":1,"next":"draft"\}.*"passed":false,[^\n]*"attempt":2,"next":"fail"\}

id: [^\n]+
event: error
data: \{"code":"check_failed","message":"step \\"review\\": check \\"approved\\" failed after 2 attempts","text":"A draft\.A draft\."\}

\z}s



=== TEST 4: else=stop ends as a success that stopped early
--- http_config
    llm_format final {
        complete '{"done": true, "stopped_at": $llm_stopped_at, "outputs": $llm_outputs}';
        error    '{"error": $llm_error_message}';
    }
    llm_pipeline adversarial {
        step question {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22ok%22%3A1%7D";
            prompt  "Ask";
            output  json;
        }
        step judge {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22approved%22%3Afalse%7D";
            prompt  "Judge $llm_step_question";
            output  json;
            check   approved = true else=stop;
        }
        step never {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&status_1=500&tag=never";
            prompt  "Never asked";
        }
    }
--- config
    location = /generate {
        llm_model    m;
        llm_pipeline adversarial;
        llm_format   final;
    }
--- request
GET /generate
--- response_body_like eval
qr{data: \{"done":true,"stopped_at":"judge","outputs":\{"question":\{"ok":1\},"judge":\{"approved":false\}\}\}

\z}



=== TEST 5: repetition: a step once per element, each its own checkpoint and event
--- http_config
    llm_pipeline batches {
        step modules {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&mode=echo";
            prompt  "Assessments for $llm_item ($llm_index of $llm_count)";
            foreach $llm_input_modules delay=10ms;
        }
        step summary {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&mode=echo";
            prompt  "Summary of ${llm_step_modules}";
        }
    }
--- config
    location = /step7 {
        llm_model    m;
        llm_pipeline batches;
    }
--- request
POST /step7
{"modules":["Intro","Advanced"]}
--- more_headers
Content-Type: application/json
--- response_body_like eval
qr{event: step_start
data: \{[^\n]*"step":"modules",[^\n]*"item":"Intro"[^\n]*"iteration":1,"iterations":2[^\n]*\}

.*event: step
data: \{"step":"modules",[^\n]*"output":"\|Assessments for Intro \(1 of 2\)"[^\n]*"iteration":1,"iterations":2,"item":"Intro"\}

.*event: progress
data: \{"progress":25,[^\n]*\}

.*event: step
data: \{"step":"modules",[^\n]*"output":"\|Assessments for Advanced \(2 of 2\)"[^\n]*\}

.*event: step
data: \{"step":"summary",[^\n]*"output":"\|Summary of \[\\"\|Assessments for Intro \(1 of 2\)\\",\\"\|Assessments for Advanced \(2 of 2\)\\"\]"[^\n]*\}

.*event: complete
}s



=== TEST 6: invalid JSON is a failure of the step, retried
--- http_config
    llm_pipeline j {
        step verdict {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&tag=pl6&reply_1=not%20json%20at%20all&reply=%7B%22ok%22%3A1%7D";
            prompt  "Judge";
            output  json;
        }
    }
--- config
    location = /generate {
        llm_model    m;
        llm_pipeline j;
    }
    location = /reset {
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/stats/reset?tag=pl6;
    }
--- request eval
["POST /reset", "GET /generate"]
--- response_body_like eval
[qr/./,
qr{event: check
data: \{"step":"verdict","passed":false,"field":"\(json\)","attempt":1,"next":"verdict"\}

.*event: step
data: \{"step":"verdict",[^\n]*"attempt":2,"output":\{"ok":1\}[^\n]*\}

id: [^\n]+
event: complete
}s]



=== TEST 7: a step failing after others finished: the error keeps the text
--- http_config
    llm_pipeline p {
        step one {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=A%20draft.";
            prompt  "One";
            stream  on;
        }
        step two {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&mode=status&status=503";
            prompt  "Two";
        }
    }
--- config
    location = /generate {
        llm_model    m;
        llm_pipeline p;
    }
--- request
GET /generate
--- response_body_like eval
qr{event: step
data: \{"step":"one",[^\n]*\}

.*id: [^\n]+
event: error
data: \{"code":"upstream_status","message":"step \\"two\\": [^\n]*","text":"A draft\."\}

\z}s



=== TEST 8: progress from weights; a template format with the pipeline kinds
--- http_config
    llm_format learning {
        start      off;
        step_start off;
        step       off;
        progress   '{"progress": $llm_progress, "message": $llm_message}';
        complete   '{"progress": 100, "done": true, "redirect_url": "/result"}';
        error      '{"error": $llm_error_message}';
    }
    llm_pipeline path {
        step analyze {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=ok";
            prompt  "Analyze $llm_input_topic";
            message "Analyzing your topic...";
            progress 10;
        }
        step build {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=ok";
            prompt  "Build";
            message "Building curriculum structure...";
            progress 30;
        }
        step resources {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=ok";
            prompt  "Resources";
            message "Finding the best learning resources...";
            progress 60;
        }
    }
--- config
    location = /generate-stream {
        llm_model    m;
        llm_pipeline path;
        llm_format   learning;
    }
--- request
POST /generate-stream
topic=rust
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):3
data: \{"progress":10,"message":"Analyzing your topic\.\.\."\}

id: \1:6
data: \{"progress":30,"message":"Building curriculum structure\.\.\."\}

id: \1:9
data: \{"progress":60,"message":"Finding the best learning resources\.\.\."\}

id: \1:11
data: \{"progress":100,"done":true,"redirect_url":"/result"\}

\z}



=== TEST 9: the blocking twin: the whole pipeline as one JSON answer
--- http_config
    llm_format content {
        complete event=complete '{"success": true, "output": $llm_text}';
        error    event=error '{"success": false, "error": $llm_error_message}';
        response '{"success": true, "output": ${llm_outputs.validate}, "draft": ${llm_outputs.generate}}';
    }
    llm_pipeline content {
        step generate {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=A%20draft.";
            prompt  "Generate";
            stream  on;
        }
        step validate {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22ok%22%3A1%7D";
            prompt  "Validate $llm_step_generate";
            output  json;
        }
    }
--- config
    location = /run {
        llm_model    m;
        llm_pipeline content;
        llm_format   content;
    }
--- request
POST /run
{"topic":"x"}
--- more_headers
Content-Type: application/json
Accept: application/json
--- response_body
{"success":true,"output":{"ok":1},"draft":"A draft."}



=== TEST 10: nginx -t: a check that goes to a step not defined before it
--- http_config
    llm_pipeline p {
        step a {
            prompt "x";
            output json;
            check  ok = true else=b;
        }
        step b {
            prompt "y";
        }
    }
--- config
--- must_die
--- error_log
llm_pipeline: "check" goes to step "b", which is not defined before it



=== TEST 11: nginx -t: $llm_step_ of a later or unknown step
--- http_config
    llm_pipeline p {
        step a {
            prompt "use $llm_step_b";
        }
        step b {
            prompt "y";
        }
    }
--- config
--- must_die
--- error_log
llm_pipeline: step "a", "prompt": "$llm_step_" names a step that is not defined before this one



=== TEST 12: nginx -t: a step without a prompt
--- http_config
    llm_pipeline p {
        step a {
            model m;
        }
    }
--- config
--- must_die
--- error_log
llm_pipeline: step "a" has no "prompt"



=== TEST 13: nginx -t: a step with no model anywhere
--- http_config
    llm_pipeline p {
        step a {
            pass   http://127.0.0.1:1/v1/chat/completions;
            prompt "x";
        }
    }
--- config
    location = /g {
        llm_pipeline p;
    }
--- must_die
--- error_log
step "a" of llm_pipeline "p" has no "model" and the location no "llm_model"



=== TEST 14: nginx -t: a step with no upstream anywhere
--- http_config
    llm_pipeline p {
        step a {
            model  m;
            prompt "x";
        }
    }
--- config
    location = /g {
        llm_pipeline p;
    }
--- must_die
--- error_log
step "a" of llm_pipeline "p" has no "pass" and the location no "llm_pass"



=== TEST 15: nginx -t: unknown directive, unknown variable, bad check
--- http_config
    llm_pipeline p {
        step a {
            prompt "x";
            temperature 1;
        }
    }
--- config
--- must_die
--- error_log
llm_pipeline: unknown step directive "temperature"



=== TEST 16: nginx -t: a check needs a JSON output
--- http_config
    llm_pipeline p {
        step a {
            prompt "x";
            check  ok = true;
        }
    }
--- config
--- must_die
--- error_log
llm_pipeline: "check" needs "output json" before it in step "a"



=== TEST 17: nginx -t: comparisons of numbers take a number
--- http_config
    llm_pipeline p {
        step a {
            prompt "x";
            output json;
            check  score >= high;
        }
    }
--- config
--- must_die
--- error_log
llm_pipeline: ">=" compares numbers: "high" is not one



=== TEST 18: nginx -t: an unknown $llm_ variable in a prompt
--- http_config
    llm_pipeline p {
        step a {
            prompt "x $llm_nothing";
        }
    }
--- config
--- must_die
--- error_log
llm_pipeline: step "a", "prompt": unknown variable "$llm_nothing"



=== TEST 19: nginx -t: an unknown pipeline, a duplicate step, no steps
--- http_config
    llm_pipeline p {
        step a { prompt "x"; }
        step a { prompt "y"; }
    }
--- config
--- must_die
--- error_log
llm_pipeline: duplicate step "a"



=== TEST 20: nginx -t: a prompt file that does not exist
--- http_config
    llm_pipeline p {
        step a { prompt_file /nonexistent/prompt.txt; }
    }
--- config
--- must_die
--- error_log
llm_pipeline: cannot open "/nonexistent/prompt.txt"



=== TEST 21: nginx -t: an unknown pipeline in a location
--- config
    location = /g {
        llm_pipeline nope;
    }
--- must_die
--- error_log
unknown llm_pipeline "nope" (a pipeline is defined before it is used)



=== TEST 22: templates for one step (step=) and one outcome of a check (when=)
--- http_config
    llm_format story {
        start      off;
        step_start '{"type": "node", "node": $llm_step, "status": "started"}';
        step_start step=safety_check off;
        step       '{"type": "node", "node": $llm_step, "status": "completed"}';
        step       step=safety_check off;
        progress   off;
        delta      '{"type": "content", "chunk": $llm_delta}';
        check      step=safety_check when=passed '{"type": "safety_check", "status": "approved", "score": ${llm_event.actual}}';
        check      step=safety_check when=failed '{"type": "safety_check", "status": "rejected", "score": ${llm_event.actual}}';
        complete   '{"type": "complete", "story": {"success": true, "story_content": ${llm_outputs.generate_content}}}';
        error      '{"type": "error", "message": $llm_error_message, "error_code": $llm_error_code}';
    }
    llm_pipeline story {
        step generate_content {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=Once%20upon%20a%20time.";
            prompt  "A $llm_input_theme story";
            stream  on;
        }
        step safety_check {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22score%22%3A1.0%7D";
            prompt  "Score: $llm_step_generate_content";
            output  json;
            check   score >= 0.8 else=fail;
        }
    }
--- config
    location = /api/v1/stories/generate/stream {
        llm_model    m;
        llm_pipeline story;
        llm_format   story;
    }
--- request
GET /api/v1/stories/generate/stream?theme=adventure
--- response_body_like eval
qr{\Aretry: 3000

id: ([A-Za-z0-9_-]{22}):2
data: \{"type":"node","node":"generate_content","status":"started"\}

(?:id: \1:\d+
data: \{"type":"content","chunk":"[^"]+"\}

)+id: \1:\d+
data: \{"type":"node","node":"generate_content","status":"completed"\}

id: \1:\d+
data: \{"type":"safety_check","status":"approved","score":1\.0\}

id: \1:\d+
data: \{"type":"complete","story":\{"success":true,"story_content":"Once upon a time\."\}\}

\z}



=== TEST 23: nginx -t: step= is for a pipeline's kinds, when= for checks
--- http_config
    llm_format f {
        complete step=a '{}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: invalid parameter "step=a" of "complete"



=== TEST 24: nginx -t: "off" and a template for the same events
--- http_config
    llm_format f {
        check    step=a when=failed off;
        check    step=a when=failed '{}';
        complete '{}';
        error    '{}';
    }
--- config
--- must_die
--- error_log
llm_format: "check" is duplicate, or "off" and a template for the same events



=== TEST 25: nginx -t: a step directive given twice
--- http_config
    llm_pipeline p {
        step a {
            prompt "x";
            output json;
            check  ok = true;
            check  score >= 1;
            output text;
        }
    }
--- config
--- must_die
--- error_log
llm_pipeline: "output" is duplicate in step "a"



=== TEST 26: nginx -t: a prompt inline and from a file
--- http_config
    llm_pipeline p {
        step a {
            prompt      "x";
            prompt_file /etc/hostname;
        }
    }
--- config
--- must_die
--- error_log
llm_pipeline: step "a" has its prompt twice



=== TEST 27: exhausted=stop: a loop that gives up as a success; complete when=stopped
--- http_config
    llm_format verdict {
        complete when=finished '{"success": true}';
        complete when=stopped  '{"success": false, "stopped_at": $llm_stopped_at}';
        complete '{"done": true}';
        error    '{"error": $llm_error_message}';
    }
    llm_pipeline loop {
        step question {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22q%22%3A1%7D";
            prompt  "Ask";
            output  json;
        }
        step judge {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22ok%22%3Afalse%7D";
            prompt  "Judge";
            output  json;
            check   ok = true else=question attempts=2 exhausted=stop;
        }
        step final {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&status_1=500";
            prompt  "Never asked";
        }
    }
--- config
    location = /generate {
        llm_model    m;
        llm_pipeline loop;
        llm_format   verdict;
    }
--- request
GET /generate
--- response_body_like eval
qr{\A(?:retry: \d+\n\n)?(?:id: [^\n]+\n)?data: \{"success":false,"stopped_at":"judge"\}

id: [^\n]+
data: \{"done":true\}

\z}



=== TEST 28: complete when=finished for a pipeline that ran to its end
--- http_config
    llm_format verdict {
        start    off;
        complete when=finished '{"success": true}';
        complete when=stopped  '{"success": false}';
        error    '{"error": $llm_error_message}';
    }
    llm_pipeline one {
        step only {
            pass    "http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/chat/completions?tps=0&ttft=0&reply=%7B%22ok%22%3Atrue%7D";
            prompt  "Judge";
            output  json;
            check   ok = true else=retry exhausted=stop;
        }
    }
--- config
    location = /generate {
        llm_model    m;
        llm_pipeline one;
        llm_format   verdict;
    }
--- request
GET /generate
--- response_body_like eval
qr{\A(?:retry: \d+\n\n)?id: [^\n]+\ndata: \{"success":true\}\n\n\z}



=== TEST 29: nginx -t: exhausted= is stop or fail; when=stopped is for complete
--- http_config
    llm_pipeline p {
        step a {
            prompt "x";
            output json;
            check  ok = true exhausted=maybe;
        }
    }
--- config
--- must_die
--- error_log
llm_pipeline: invalid parameter "exhausted=maybe" in "check"



=== TEST 30: nginx -t: when=stopped is for complete only
--- http_config
    llm_format f {
        error when=stopped '{"x": 1}';
        complete '{"y": 1}';
    }
--- config
--- must_die
--- error_log
llm_format: invalid parameter "when=stopped" of "error"
