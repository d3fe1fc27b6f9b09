# examples/content-pipeline/ as `make example NAME=content-pipeline` runs
# it (util/example.sh, the mock answering from its mock.json, a private
# Redis): the content app driven the way generateContentStream drives
# it.  The named events stage by stage (load_prompts 10, generator 30,
# draft 50, formatter 60, validator 80, retry 85, then the generator again
# with the validator's feedback, done 100, complete); the job; resume;
# CORS and the JWT; the blocking twin POST /run; the provider failing at
# the formatter (what the front-end sees, what the job keeps, the POST that
# continues it without a new draft); a cancel during validation.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use FindBin;
use Time::HiRes qw(sleep time);
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(http_get);
use LLM::Example qw(example_ports start_example wait_example stop_example
                    slurp events json_of mock_requests read_job);

my $top = "$FindBin::Bin/..";

plan skip_all => 'build/llm-mock is not built' unless -x "$top/build/llm-mock";
plan skip_all => 'redis-server is not installed'
    unless grep { -x "$_/redis-server" } split /:/, $ENV{PATH};

# three ports in a row: nginx, the mock, Redis
my $port = example_ports();

my %auth = (Authorization => 'Bearer demo-token');
my %json = (%auth, 'Content-Type' => 'application/json');

sub params {
    my ($topic) = @_;
    return encode_json({ topic => $topic, content_type => 'blog_post',
                         audience => 'small business owners',
                         tone => 'practical',
                         requirements => 'short, end with a call to action' });
}

# the example, serving after its request.sh run; its output in a file
my $pid = start_example('content-pipeline', $port,
                        log => "$top/build/094-content-pipeline.out");
my $run = wait_example($pid);
like($run, qr/example: serving on/, 'the example runs') or do {
    diag($run);
    done_testing();
    exit;
};

# "event stage progress" of each event, as the panel shows them
sub shape {
    return map {
        join ' ', $_->{event} // 'message',
                  ($_->{event} // '') =~ /^(progress|draft)$/
                      ? ($_->{data}{stage}, $_->{data}{progress}) : ()
    } @_;
}

sub job_id_of {
    my ($ev) = @_;
    my ($id) = ($ev->{id} // '') =~ /^([\w-]{22}):/;
    return $id // '';
}

# a job read through another worker is as recent as Redis' copy: wait
# for the state the stream already told
sub job_when {
    my ($id, $state) = @_;
    return read_job($port, "/run/jobs/$id", headers => \%auth,
                    state => $state);
}

# --- 1. request.sh's run: the validator sends the first draft back

like($run, qr{example: curl -sN -H 'Authorization: Bearer demo-token' .*"topic": "Remote work for small teams".* http://127\.0\.0\.1:$port/run/stream},
     'request.sh posts the generation parameters with the JWT');

my ($body1) = $run =~ /example: curl [^\n]*\n\n(.*)example: serving/s;
my @ev = events($body1 // '');

is_deeply([shape(@ev)],
          ['progress load_prompts 10',
           'progress generator 30', 'draft generator 50',
           'progress formatter 60', 'progress validator 80',
           'progress retry 85',
           'progress generator 30', 'draft generator 50',
           'progress formatter 60', 'progress validator 80',
           'progress done 100', 'complete'],
          'load_prompts, generator, draft, formatter, validator, retry, '
          . 'the loop again, done, complete');

ok(!(grep { !$_->{data}{message} } grep { $_->{event} =~ /^(progress|draft)$/ } @ev),
   'every progress and draft has a message');
is($ev[1]{data}{message}, 'Generating content using mock-model...',
   'the generator\'s names the model');
is($ev[2]{data}{message}, 'Initial draft generated', 'draft: its message');
unlike($ev[2]{data}{draft}, qr/Start this week/,
       'the first draft has no call to action');
like($ev[5]{data}{message}, qr/^Validation failed \(attempt 1\)/,
     'retry: why');
like($ev[7]{data}{draft}, qr/Start this week: pick one of the three habits/,
     'the second draft acts on the validator\'s feedback');

my $c = $ev[-1]{data};
is_deeply([sort keys %$c], [qw(metadata output success)],
          'complete: {"success", "output", "metadata"}');
is($c->{success}, JSON::PP::true, 'success: true');
like($c->{output}, qr/\A# Remote work for small teams\n\n.*## Start this week/s,
     'output: the formatted second draft');
is($c->{metadata}{model}, 'mock-model', 'metadata: the model');
is($c->{metadata}{draft}, $ev[7]{data}{draft}, 'metadata: the draft');
is($c->{metadata}{validation}{valid}, JSON::PP::true,
   'metadata: the validation');
like($c->{metadata}{duration_seconds} // '', qr/^\d+(\.\d+)?$/,
     'metadata: the duration');
ok(exists $c->{metadata}{usage}, 'metadata: the usage');

my $job = job_id_of($ev[0]);
is($c->{metadata}{job_id}, $job, 'metadata: the job');
is(scalar(grep { job_id_of($_) ne $job } grep { defined $_->{id} } @ev), 0,
   'every id names the job');

# --- 2. the job

my $j = job_when($job, 'completed');
is($j->{state}, 'completed', 'the job is kept, completed');
is_deeply([map { "$_->{name}:$_->{state}:$_->{attempts}" } @{ $j->{steps} // [] }],
          ['generator:done:2', 'formatter:done:2', 'validator:done:2'],
          'generator, formatter and validator, each run twice');
is_deeply($j->{steps}[2]{output},
          { valid => JSON::PP::true, score => 0.91, issues => [], feedback => '' },
          'the validation it kept');

my ($st, $head, $body) = http_get($port, 'GET', "/run/jobs/$job",
                                  headers => { Authorization => 'Bearer other-token' });
is($st, 404, 'another user does not see the job');

# --- 3. resume

($st, $head, $body) = http_get($port, 'POST', '/run/stream',
                               headers => { %auth, 'Last-Event-ID' => $ev[4]{id} });
is($st, 200, 'a POST with Last-Event-ID resumes');
is_deeply([map { $_->{raw} } events($body)], [map { $_->{raw} } @ev[5 .. $#ev]],
          'with exactly the events after it');

($st, undef, $body) = http_get($port, 'GET', "/run/jobs/$job",
                               headers => { %auth, Accept => 'text/event-stream',
                                            'Last-Event-ID' => $ev[8]{id} });
is_deeply([shape(events($body))],
          ['progress validator 80', 'progress done 100', 'complete'],
          'the job location streams it too, in the app\'s format');

($st) = http_get($port, 'POST', '/run/stream',
                 headers => { %auth, 'Last-Event-ID' => $ev[-1]{id} });
is($st, 204, 'after the final event: 204');

# --- 4. the front-end's origin, the JWT, the side endpoint

($st, $head) = http_get($port, 'OPTIONS', '/run/stream',
                        headers => { Origin => 'http://localhost:5173',
                                     'Access-Control-Request-Method' => 'POST',
                                     'Access-Control-Request-Headers' => 'authorization,content-type' });
is($st, 204, 'the preflight is answered by nginx');
like($head, qr{^Access-Control-Allow-Origin: http://localhost:5173\r?$}mi,
     'for the front-end\'s origin');
like($head, qr{^Access-Control-Allow-Headers: .*Authorization}mi,
     'allowing its Authorization header');

($st, $head, $body) = http_get($port, 'POST', '/run/stream',
                               headers => { 'Content-Type' => 'application/json',
                                            Origin => 'http://localhost:5173' },
                               body => params('x'));
is($st, 401, 'no JWT: 401');
is(json_of($body)->{detail}, 'Could not validate credentials',
   'in FastAPI\'s shape');
like($head, qr{^Access-Control-Allow-Origin: http://localhost:5173\r?$}mi,
     'readable by the front-end');
($st) = http_get($port, 'POST', '/run/stream',
                 headers => { %json, Authorization => 'Bearer forged' },
                 body => params('x'));
is($st, 401, 'a bad JWT: 401');

($st, undef, $body) = http_get($port, 'GET', '/health');
is($st, 200, 'GET /health');
is(json_of($body)->{status}, 'healthy', 'healthy');

# --- 5. the provider fails at the formatter

my $before = mock_requests();
($st, $head, $body) = http_get($port, 'POST', '/run/stream', headers => \%json,
                               body => params('Solar power for apartment buildings'));
@ev = events($body);
is_deeply([shape(@ev)],
          ['progress load_prompts 10', 'progress generator 30',
           'draft generator 50', 'progress formatter 60', 'progress fail 100',
           'error'],
          'a failure: the draft, the formatter, then fail 100 and error');
like($ev[-1]{data}{error}, qr/formatter/, 'error: naming the stage');
is($ev[-1]{data}{success}, JSON::PP::false, 'error: success false');
is($ev[-1]{data}{draft}, $ev[2]{data}{draft}, 'error: with the draft it keeps');

my $failed = job_id_of($ev[0]);
$j = job_when($failed, 'failed');
is($j->{state}, 'failed', 'the job is failed');
is_deeply([map { $_->{state} } @{ $j->{steps} // [] }[0]], ['done'],
          'the draft is kept');
is($j->{steps}[0]{output}, $ev[2]{data}{draft}, 'as it was sent');

my $asked = mock_requests() - $before;
($st, $head, $body) = http_get($port, 'POST', "/run/jobs/$failed",
                               headers => \%auth);
@ev = events($body);
is($st, 200, 'POST on the job continues it');
is_deeply([shape(@ev)],
          ['progress load_prompts 10', 'progress formatter 60',
           'progress validator 80', 'progress done 100', 'complete'],
          'from the formatter');
isnt(job_id_of($ev[0]), $failed, 'as a new job');
is(mock_requests() - $before - $asked, 2, 'without a new draft');
like($ev[-1]{data}{output}, qr/\A# Solar power for apartment buildings/,
     'to the formatted output');
is($ev[-1]{data}{metadata}{draft}, $j->{steps}[0]{output},
   'of the kept draft');

# --- 6. the traditional twin: one JSON answer, whatever Accept says

($st, $head, $body) = http_get($port, 'POST', '/run',
                               headers => { %json, Accept => '*/*',
                                            Origin => 'http://localhost:5173' },
                               body => params('Solar power for apartment buildings'));
my $r = json_of($body);
is($st, 200, 'POST /run: 200');
like($head, qr{^Content-Type: application/json}mi, 'JSON');
is(scalar(() = $head =~ /^Access-Control-Allow-Origin:/mig), 1,
   'with CORS once');
is_deeply([sort keys %$r], [qw(metadata output success)],
          '{"success", "output", "metadata"}, as the complete event');
like($r->{output}, qr/\A# Solar power for apartment buildings/, 'the output');

($st, undef, $body) = http_get($port, 'POST', '/run',
                               headers => { 'Content-Type' => 'application/json' },
                               body => params('x'));
is($st, 401, 'POST /run without a JWT: 401');
is(json_of($body)->{detail}, 'Could not validate credentials',
   'in FastAPI\'s shape');

# --- 7. cancel during the (slow) validation: the draft and output stay

($st, $head, $body) = http_get($port, 'POST', '/run/stream', headers => \%json,
                               body => params('A company handbook for new hires'),
                               until => qr/"stage":"validator"/);
$job = job_id_of((events($body))[0]);
($st, undef, $body) = http_get($port, 'DELETE', "/run/jobs/$job",
                               headers => \%auth);
ok($st == 200 || $st == 202, 'DELETE on the job cancels it');
$j = job_when($job, 'cancelled');
is($j->{state}, 'cancelled', 'the job is cancelled');
is_deeply([map { $_->{state} } @{ $j->{steps} // [] }[0, 1]], ['done', 'done'],
          'keeping its draft and formatted output');

($st, undef, $body) = http_get($port, 'GET', "/run/jobs/$job",
                               headers => { %auth, Accept => 'text/event-stream' });
@ev = events($body);
is($ev[-1]{event}, 'error', 'its stream ends with error');
like($ev[-1]{data}{error}, qr/cancelled/, 'cancelled');

stop_example($pid);
ok(!-e "$top/build/example-content-pipeline/logs/nginx.pid",
   'the example stops what it started');

my $log = slurp("$top/build/example-content-pipeline/logs/error.log");
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alerts in the error log');

done_testing();
