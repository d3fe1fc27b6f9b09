# examples/adversarial-pipeline/ as `make example NAME=adversarial-pipeline`
# runs it (util/example.sh: its own nginx.conf, the mock model server
# answering from its mock.json, a private Redis), driven the way the app's
# front-end drives the FastAPI backend it replaces: the stream of
# request.sh (start, a step event per step with the loop of steps 3-6 run
# twice, the final step event, done), shape by shape; the side endpoints,
# CORS and the 422s; the blocking twin; then the provider failing at step 4
# (what the front-end sees, what the job keeps, POST on the job location
# continuing it), a judge that never sees a difference, a dropped stream
# resumed with Last-Event-ID, a cancel.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(http_get);
use LLM::Example qw(example_ports start_example wait_example stop_example
                    slurp mock_requests read_job);
use IO::Socket::INET;
use File::Temp qw(tempfile);
use Time::HiRes qw(sleep time);

my $top = "$FindBin::Bin/..";
my $name = 'adversarial-pipeline';

plan skip_all => 'build/llm-mock is not built' unless -x "$top/build/llm-mock";
plan skip_all => 'redis-server is not installed'
    unless grep { -x "$_/redis-server" } split /:/, $ENV{PATH};

# three free ports in a row: nginx, the mock, Redis (util/example.sh)
my $port = example_ports();
my $mock = $port + 1;
my (undef, $out) = tempfile('t095-XXXXXX', TMPDIR => 1, UNLINK => 1);

my $pid = start_example($name, $port, log => $out, timeout => 90);

# example.sh runs request.sh's command first, then serves
my $all = wait_example($pid);

# the events of an SSE body: id (when there is one), event, data, json
sub events {
    return map { +{ id => $_->{id}, event => $_->{event}, data => $_->{raw},
                    json => eval { decode_json($_->{raw}) } // {} } }
           LLM::Example::events(@_);
}

# "start step1 ... final done": the sequence as the front-end dispatches it
sub shapes {
    return join ' ', map {
        my $j = $_->{json};
        $_->{event} eq 'step'
            ? ($j->{type} eq 'final' ? 'final' : "step$j->{step_number}")
            : $_->{event}
    } @_;
}

sub keys_of { return join ',', sort keys %{ $_[0] || {} } }

sub job_of { my ($id) = ($_[0] // '') =~ /^([\w-]{22}):/; return $id }

my $iso = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;
my %tier = (1 => 'claude-sonnet-4-5', 2 => 'claude-sonnet-4-5',
            3 => 'claude-opus-4-1', 4 => 'claude-sonnet-4-5',
            5 => 'claude-haiku-4-5', 6 => 'claude-opus-4-1',
            7 => 'claude-opus-4-1');
my $step_keys = 'description,model,response_full,response_preview,'
                . 'step_number,success,timestamp,type';

like($all, qr{example: curl -sN -H 'Origin: https://demo\.aqumen\.ai' 'http://127\.0\.0\.1:$port/api/generate-stream\?topic=GRPO\+in\+RL'},
     'example.sh prints the command of request.sh');

# 1. the stream of request.sh, as the Streamlit page reads it

my ($run) = $all =~ /example: curl[^\n]*\n(.*?)example: serving on/s;
my @ev = events($run);

is(shapes(@ev), 'start step1 step2 step3 step4 step5 step6 step3 step4 '
                . 'step5 step6 step7 final done',
   'start, steps 1-6, the loop again (the judge saw no difference), '
   . 'step 7, the final step event, done') or diag($all);

my $start = $ev[0]{json};
is(keys_of($start), 'event,timestamp,topic', 'start: {event, topic, timestamp}');
is($start->{event}, 'start', 'start: "event": "start"');
is($start->{topic}, 'GRPO in RL', 'start: the topic');
like($start->{timestamp} // '', $iso, 'start: an ISO timestamp');

my @steps = grep { $_->{event} eq 'step' && $_->{json}{type} eq 'step' } @ev;
my @bad = grep {
    my $j = $_->{json};
    keys_of($j) ne $step_keys || $j->{type} ne 'step'
    || !JSON::PP::is_bool($j->{success}) || !$j->{success}
    || ($j->{model} // '') ne $tier{$j->{step_number}}
    || ref $j->{response_full} || !length($j->{response_full} // '')
    || ref $j->{response_preview} || ($j->{timestamp} // '') !~ $iso
    || !length($j->{description} // '')
} @steps;
is(scalar @bad, 0, 'every step event: {type, step_number, description, '
   . 'model (its own tier), success, timestamp, response_preview, '
   . 'response_full (the text)}') or diag(explain [map { $_->{data} } @bad]);

my %desc = map { $_->{json}{step_number} => $_->{json}{description} } @steps;
is($desc{1}, 'Generate difficulty categories', 'step 1 as the seed names it');

my ($judge1, $judge2) = grep { $_->{json}{step_number} == 6 } @steps;
is(decode_json($judge1->{json}{response_full})->{differentiation_achieved},
   JSON::PP::false, 'the first judgment: no differentiation');
is(decode_json($judge2->{json}{response_full})->{differentiation_achieved},
   JSON::PP::true, 'the second: differentiation');

my $final = $ev[-2]{json};
is(keys_of($final), 'assessment,differentiation_achieved,metadata,'
   . 'stopped_at_step,success,total_attempts,type',
   'final: {type, success, differentiation_achieved, total_attempts, '
   . 'stopped_at_step, assessment, metadata}');
is($final->{type}, 'final', 'final: "type": "final"');
ok(JSON::PP::is_bool($final->{success}) && $final->{success},
   'final: success true');
ok($final->{differentiation_achieved}, 'final: differentiation achieved');
is($final->{total_attempts}, 2, 'final: 2 attempts');
is($final->{stopped_at_step}, 7, 'final: stopped at step 7');

my $a = $final->{assessment} || {};
is(keys_of($a), 'code,difficulty,errors,title',
   'assessment: {title, difficulty, code, errors}');
ok(ref $a->{code} eq 'ARRAY' && !grep({ ref } @{ $a->{code} }),
   'assessment: code is lines of text');
ok(ref $a->{errors} eq 'ARRAY' && @{ $a->{errors} }
   && !grep({ keys_of($_) ne 'description,id' } @{ $a->{errors} }),
   'assessment: errors are {id, description}');
is(keys_of($final->{metadata}), 'difficulty,subtopic,topic,weak_model_failures',
   'metadata: {topic, subtopic, difficulty, weak_model_failures}');
is($final->{metadata}{topic}, 'GRPO in RL', 'metadata: the topic');
is($final->{metadata}{difficulty}, $a->{difficulty},
   'metadata: the difficulty chosen at step 1');

my $done = $ev[-1]{json};
is(keys_of($done), 'event,timestamp,total_duration_seconds',
   'done: {event, timestamp, total_duration_seconds}');
ok(($done->{total_duration_seconds} // 0) > 0, 'done: a duration');

my $job = job_of($ev[0]{id});
ok($job && !grep({ defined $_->{id} && $_->{id} !~ /^\Q$job\E:\d+$/ } @ev),
   'every event id names the job');
is(join(' ', map { defined $_->{id} ? 'id' : 'none' } @ev[-2, -1]), 'none id',
   'the final step event and done are one event of the job: the id is on done');

# 2. the side endpoints, CORS, FastAPI's validation

my ($status, $head, $body) = http_get($port, 'GET', '/health');
my $j = eval { decode_json($body) } || {};
is($j->{status}, 'healthy', 'GET /health');

($status, $head, $body) = http_get($port, 'GET', '/api/models');
$j = eval { decode_json($body) } || {};
is(join(' ', map { $j->{models}{$_}{id} // '-' } qw(strong mid weak)),
   'claude-opus-4-1 claude-sonnet-4-5 claude-haiku-4-5',
   'GET /api/models: the tiers the steps use');

($status, $head) = http_get($port, 'OPTIONS', '/api/generate-stream',
    headers => { Origin => 'https://demo.aqumen.ai',
                 'Access-Control-Request-Method' => 'GET',
                 'Access-Control-Request-Headers' => 'cache-control' });
is($status, 200, 'a preflight from a listed origin');
like($head, qr/^Access-Control-Allow-Origin: https:\/\/demo\.aqumen\.ai\r?$/mi,
     'gets its origin back');
like($head, qr/^Access-Control-Allow-Credentials: true\r?$/mi, 'credentials');
like($head, qr/^Access-Control-Allow-Headers: cache-control\r?$/mi,
     'and the headers it asked for');

($status, $head) = http_get($port, 'OPTIONS', '/api/generate',
    headers => { Origin => 'https://pr-7.vercel.app',
                 'Access-Control-Request-Method' => 'POST' });
like($head, qr/^Access-Control-Allow-Origin: https:\/\/pr-7\.vercel\.app\r?$/mi,
     'https://*.vercel.app is a listed origin');

($status) = http_get($port, 'OPTIONS', '/api/generate-stream',
    headers => { Origin => 'https://elsewhere.example',
                 'Access-Control-Request-Method' => 'GET' });
is($status, 400, 'a preflight from another origin: 400');

($status, undef, $body) = http_get($port, 'GET', '/api/generate-stream');
$j = eval { decode_json($body) } || {};
is($status, 422, 'no topic: 422');
is(join('.', @{ $j->{detail}[0]{loc} || [] }), 'query.topic',
   'FastAPI\'s detail');

($status) = http_get($port, 'GET', '/api/generate-stream?topic=ab');
is($status, 422, 'a topic of 2 characters: 422');

($status) = http_get($port, 'GET',
                     '/api/generate-stream?topic=GRPO&max_retries=9');
is($status, 422, 'max_retries=9: 422');

# 3. the blocking twin: the final result only

($status, $head, $body) = http_get($port, 'POST', '/api/generate',
    headers => { 'Content-Type' => 'application/json',
                 Origin => 'http://localhost:8501' },
    body => '{"topic": "GRPO in RL"}', timeout => 15);
$j = eval { decode_json($body) } || {};
is($status, 200, 'POST /api/generate: 200');
like($head, qr/^Content-Type: application\/json/mi, 'JSON');
like($head, qr/^Access-Control-Allow-Origin: http:\/\/localhost:8501\r?$/mi,
     'with CORS');
is(keys_of($j), 'code,difficulty,errors,metadata,title',
   'the assessment: {title, difficulty, code, errors, metadata}');
is($j->{metadata}{total_attempts}, 2, 'its metadata: the attempts');
is($j->{metadata}{topic_requested}, 'GRPO in RL', 'and the topic');

# 4. the provider fails at step 4 (mock.json: a 503 on the first call for
#    this topic): the front-end's error, the job keeps steps 1-3, and a
#    POST on the job location continues from step 4

my $topic = 'GRPO+advantage+normalization';

($status, $head, $body) = http_get($port, 'GET',
    "/api/generate-stream?topic=$topic",
    headers => { Origin => 'https://dev.aqumen.ai' });
@ev = events($body);

is($status, 200, 'the stream starts');
like($head, qr/^Content-Type: text\/event-stream/mi, 'text/event-stream');
like($head, qr/^Cache-Control: no-cache/mi, 'no-cache');
like($head, qr/^X-Accel-Buffering: no/mi, 'X-Accel-Buffering: no');
like($head, qr/^Access-Control-Allow-Origin: https:\/\/dev\.aqumen\.ai\r?$/mi,
     'CORS on the stream');
is(shapes(@ev), 'start step1 step2 step3 error',
   'steps 1-3, then the error event') or diag($body);

my $err = $ev[-1]{json};
is(keys_of($err), 'error,timestamp,type', 'error: {type, error, timestamp}');
is($err->{type}, 'error', 'error: "type": "error"');
like($err->{error} // '', qr/mid_test.*503/, 'error: the step and the cause');

my $failed = job_of($ev[0]{id});

# the job as JSON; a worker that does not run it reads it from Redis, up
# to a flush interval (100 ms) behind
sub job_json {
    my ($id) = @_;
    return read_job($port, "/api/jobs/$id");
}

$j = job_json($failed);

is($j->{state}, 'failed', 'GET /api/jobs/ID: the run failed');
is($j->{error}{code}, 'upstream_status', 'with the upstream\'s status');
is(join(' ', map { "$_->{name}:$_->{state}" } @{ $j->{steps} || [] }[0 .. 2]),
   'difficulty:done catalog:done question:done', 'steps 1-3 are done');
ok(($j->{steps}[0]{output}{subtopic} // '') ne ''
   && ref $j->{steps}[1]{output}{errors} eq 'ARRAY'
   && ($j->{steps}[2]{output}{challenge} // '') ne '',
   'and kept: the subtopic, the error catalog, the question');
isnt($j->{steps}[3]{state}, 'done', 'step 4 is not done');

my $before = mock_requests();

($status, $head, $body) = http_get($port, 'POST', "/api/jobs/$failed",
                                   timeout => 15);
@ev = events($body);

is($status, 200, 'POST /api/jobs/ID: the run goes on, as a stream');
is(shapes(@ev), 'start step4 step5 step6 step3 step4 step5 step6 step7 '
                . 'final done',
   'from step 4, with the loop, to the end') or diag($body);
isnt(job_of($ev[0]{id}), $failed, 'as a new job');
is($ev[0]{json}{topic}, 'GRPO advantage normalization',
   'start: the topic, from the job (${llm_inputs.topic})');
$final = $ev[-2]{json};
ok($final->{success} && $final->{stopped_at_step} == 7,
   'final: success, stopped at step 7');
is($final->{metadata}{subtopic},
   $j->{steps}[0]{output}{subtopic}, 'with the kept step 1 output');
is(mock_requests() - $before, 8,
   'steps 1-3 were not asked again (8 model calls: 4-6, 3-6, 7)');

($status, undef, $body) = http_get($port, 'POST',
                                   '/api/jobs/' . job_of($ev[0]{id}));
is($status, 409, 'a finished run cannot be continued');
like($body, qr/^\{"detail":/, 'FastAPI\'s error shape');

# 4b. a judge that never sees a difference (mock.json, for this topic):
#     3 questions, then the run stops as the app's did: a final step event
#     ("success": false, "stopped_at_step": 6) and done

($status, undef, $body) = http_get($port, 'GET',
    '/api/generate-stream?topic=GRPO+on+a+trivial+reward', timeout => 15);
@ev = events($body);

is(shapes(@ev), 'start step1 step2 step3 step4 step5 step6 step3 step4 step5 '
                . 'step6 step3 step4 step5 step6 final done',
   'no differentiation: the loop runs 3 times (max_attempts), then stops')
    or diag($body);
$final = $ev[-2]{json} || {};
ok(JSON::PP::is_bool($final->{success}) && !$final->{success},
   'final: success false');
is($final->{stopped_at_step}, 6, 'final: stopped at step 6');
is($final->{total_attempts}, 3, 'final: 3 attempts');
is($final->{assessment}, undef, 'final: no assessment');

# 5. a dropped connection: resumed with Last-Event-ID, by any worker

sub open_stream {
    my ($path) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die;
    syswrite($s, "GET $path HTTP/1.0\r\nHost: localhost\r\n"
                 . "Accept: text/event-stream\r\n\r\n");
    return $s;
}

sub read_until {
    my ($s, $re, $t) = @_;
    my $got = '';
    my $end = time + ($t // 10);

    while (time < $end) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select($rin, undef, undef, $end - time);
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $got .= $buf;
        last if $re && $got =~ $re;
    }

    return $got;
}

my $s = open_stream('/api/generate-stream?topic=GRPO+in+RL');
my $first = read_until($s, qr/"step_number":2.*?\n\n/s);
close $s;

my @head = events($first);
my $last = $head[-1]{id};

# an EventSource waits for retry: (3 s) before it reconnects; a resume
# within a Redis flush interval (100 ms) of the event it names can be
# served by the other worker from a copy that lacks that event yet, which
# sends it again (src/ngx_http_llm_jobapi.c: sent = min(from, nevents))
sleep 0.3;

($status, undef, $body) = http_get($port, 'GET',
    '/api/generate-stream?topic=GRPO+in+RL',
    headers => { 'Last-Event-ID' => $last }, timeout => 15);
my @rest = events($body);

is(shapes(@head, @rest), 'start step1 step2 step3 step4 step5 step6 step3 '
                         . 'step4 step5 step6 step7 final done',
   'dropped after step 2, resumed: every event once') or diag($body);

job_json(job_of($last));
($status) = http_get($port, 'GET', '/api/generate-stream?topic=GRPO+in+RL',
                     headers => { 'Last-Event-ID' => $rest[-1]{id} });
is($status, 204, 'after done: 204, EventSource stops');

# 6. cancel: DELETE on the job location ends the stream

$s = open_stream('/api/generate-stream?topic=GRPO+in+RL');
$first = read_until($s, qr/"step_number":1.*?\n\n/s);
my $running = job_of((events($first))[0]{id});

($status, undef, $body) = http_get($port, 'DELETE', "/api/jobs/$running");
ok($status == 200 || $status == 202, 'DELETE /api/jobs/ID');

@rest = events(read_until($s, undef, 10));
close $s;
is($rest[-1]{event}, 'error', 'the stream ends with the error event');
like($rest[-1]{data}, qr/"error":"the job was cancelled"/, 'cancelled');

is(job_json($running)->{state}, 'cancelled', 'the job is cancelled');
($status, $head, $body) = http_get($port, 'POST', "/api/jobs/$running",
                                   headers => { Prefer => 'respond-async' });
is($status, 202, 'a cancelled run can be continued too (in the background)');
like($head, qr{^Location: /api/jobs/[\w-]{22}\r?$}m, 'at its new job URL');

# stop: example.sh stops nginx, the mock and Redis

stop_example($pid);

my $prefix = "$top/build/example-$name";
my $npid = -e "$prefix/logs/nginx.pid" ? `cat $prefix/logs/nginx.pid` + 0 : 0;

# a stopped master may wait a moment to be reaped (by tini under make test)
for (1 .. 50) {
    last unless $npid && kill(0, $npid);
    sleep 0.1;
}

ok(!$npid || !kill(0, $npid), 'nginx stopped');
ok(!IO::Socket::INET->new(PeerAddr => "127.0.0.1:$mock"), 'the mock too');

my $log = slurp("$prefix/logs/error.log");
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alerts in the error log');

done_testing();
