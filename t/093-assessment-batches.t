# examples/assessment-batches/ as `make example NAME=assessment-batches`
# runs it (util/example.sh, the mock answering from its mock.json, a
# private Redis): the curriculum workflow's Step 7 driven the way
# useStep7Streaming drives it.  The 13 batches of a 6-module workflow,
# event by event (connected, progress and data per batch, complete); the
# job and its pacing; resume with Last-Event-ID; CORS and the JWT; the
# traditional twin; a provider failing at the summative batch of the
# 2-module workflow (what the hook sees, what the job keeps, the POST that
# continues it without asking the finished batches again); a cancel.

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

my $big = '6756a0c0f1e2d3c4b5a69781';     # 6 modules, 13 batches
my $small = '6756a0c0f1e2d3c4b5a69782';   # 2 modules, its summative fails once
my @modules = ('Module 1: Introduction', 'Module 2: Collecting data',
               'Module 3: Cleaning data', 'Module 4: Visualising data',
               'Module 5: Statistics for decisions',
               'Module 6: Communicating insights');
my @types = ('MCQ', 'SJT', 'Case', 'Essay', 'Practical');
my %auth = (Authorization => 'Bearer demo-token');

# the example, serving after its request.sh run; its output in a file
my $t0 = time;
my $pid = start_example('assessment-batches', $port,
                        log => "$top/build/093-assessment-batches.out");
my $run = wait_example($pid);
like($run, qr/example: serving on/, 'the example runs') or do {
    diag($run);
    done_testing();
    exit;
};

# a job read through another worker is as recent as Redis' copy: wait
# for the state the stream already told
sub job_when {
    my ($id, $state) = @_;
    return read_job($port, "/api/v3/step7/jobs/$id", headers => \%auth,
                    state => $state);
}

sub progress_of { map { $_->{data}{progress} } grep { $_->{data}{type} eq 'progress' } @_ }
sub data_of { map { $_->{data}{data} } grep { $_->{data}{type} eq 'data' } @_ }

# --- 1. the 13 batches (request.sh's POST, as printed and run)

like($run, qr{example: curl -sN -X POST -H 'Authorization: Bearer demo-token' .*/api/v3/workflow/$big/step7/stream},
     'request.sh posts the Step 7 form with the JWT');

my ($body1) = $run =~ /example: curl [^\n]*\n\n(.*)example: serving/s;
my @ev = events($body1 // '');

ok(!(grep { defined $_->{event} } @ev), 'data-only events, as the hook reads them');
is(scalar(grep { defined $_->{id} } @ev), scalar(@ev), 'each with an id (resume)');

is_deeply([map { $_->{data}{type} } @ev],
          ['connected', ('progress', 'data') x 13, 'complete'],
          'connected, then progress and data for each of the 13 batches, then complete');

my $job = $ev[0]{data}{jobId} // '';
is($ev[0]{data}{message}, 'Stream established', 'connected: "Stream established"');
like($job, qr/^[\w-]{22}$/, 'connected carries the job id');
like($ev[0]{id} // '', qr/^\Q$job\E:\d+$/, 'the one in the event ids');

my @p = progress_of(@ev);
is_deeply([map { $_->{stage} } @p],
          [('formative') x 6, 'summative', ('samples') x 5, 'lms'],
          'progress stages: 6 formative, summative, 5 samples, lms');
is_deeply([map { $_->{currentModule} } @p[0 .. 5]], \@modules,
          'formative progress: currentModule, module by module');
is_deeply([map { $_->{completedSteps} } @p[0 .. 5]], [0 .. 5],
          'formative progress: completedSteps 0 to 5');
is_deeply([map { $_->{totalSteps} } @p[0 .. 5]], [(6) x 6],
          'formative progress: totalSteps 6');
is_deeply([map { $_->{currentType} } @p[7 .. 11]], \@types,
          'samples progress: currentType MCQ, SJT, Case, Essay, Practical');
is_deeply([map { "$_->{completedSteps}/$_->{totalSteps}" } @p[6 .. 12]],
          ['0/1', '0/5', '1/5', '2/5', '3/5', '4/5', '0/1'],
          'completedSteps/totalSteps of the summative, sample and LMS stages');
ok(!defined $p[0]{estimatedTimeRemaining}, 'no time estimate before the first batch');
ok(!(grep { !defined $_->{estimatedTimeRemaining}
            || $_->{estimatedTimeRemaining} !~ /^\d+$/ } @p[1 .. 12]),
   'then estimatedTimeRemaining in seconds');
ok(!(grep { $p[$_]{estimatedTimeRemaining} > $p[$_ - 1]{estimatedTimeRemaining} }
     2 .. 12),
   'which does not grow');

my @d = data_of(@ev);
is_deeply([map { $_->{type} } @d],
          [('formative_batch') x 6, 'summative_batch', ('sample_batch') x 5,
           'lms_batch'],
          'data: 6 formative_batch, summative_batch, 5 sample_batch, lms_batch');
is_deeply([map { $_->{moduleId} } @d[0 .. 5]], \@modules,
          'formative_batch: moduleId');
is_deeply([map { scalar @{ $_->{formatives} // [] } . '/' . $_->{totalCount} }
           @d[0 .. 5]],
          [('2/2') x 6], 'formative_batch: formatives [2], totalCount 2');
is(scalar @{ $d[6]{summatives} // [] }, 1, 'summative_batch: summatives [1]');
is($d[6]{summatives}[0]{title}, 'Data Literacy: final assessment',
   'the summative of the whole course');
is_deeply([map { $_->{sampleType} } @d[7 .. 11]],
          [qw(mcq sjt case essay practical)], 'sample_batch: sampleType');
is_deeply([map { scalar @{ $_->{questions} // [] } } @d[7 .. 11]], [(11) x 5],
          'sample_batch: 11 questions each');
is_deeply([map { $_->{format} } @{ $d[12]{packages} // [] }],
          ['SCORM 1.2', 'QTI 2.1', 'QTI 2.1'], 'lms_batch: packages');

my $c = $ev[-1]{data};
is($c->{message}, 'Step 7 complete', 'complete: "Step 7 complete"');
is_deeply($c->{data}{summary},
          { formativeCount => 12, summativeCount => 1,
            sampleQuestionsTotal => 55 },
          'complete: the summary');
my $s7 = $c->{data}{step7} // {};
is_deeply([sort keys %$s7],
          [qw(formativeAssessments lmsPackages sampleQuestions
              summativeAssessments)],
          'complete: step7');
is(scalar @{ $s7->{formativeAssessments} // [] }, 6,
   'with the formatives of every module');
is_deeply([sort keys %{ $s7->{sampleQuestions} // {} }],
          [qw(caseStudy essay mcq practical sjt)], 'and every sample type');
is_deeply($s7->{sampleQuestions}{mcq}, $d[7]{questions},
          'the batches as they were sent');

# --- 2. the job: kept in Redis, paced one second between module calls

my $j = job_when($job, 'completed');
is($j->{state}, 'completed', 'the job is kept, completed');
is_deeply([map { "$_->{name}:$_->{state}" } @{ $j->{steps} // [] }],
          [map { "$_:done" } qw(formative summative sample_mcq sample_sjt
                                sample_case sample_essay sample_practical lms)],
          'with its 8 steps done');
my $f = $j->{steps}[0] // {};
cmp_ok(($f->{finished} // 0) - ($f->{started} // 0), '>=', 5000,
       'the 6 module calls are one second apart');

my ($st, $head, $body) = http_get($port, 'GET', "/api/v3/step7/jobs/$job",
                                  headers => { Authorization => 'Bearer other-token' });
is($st, 404, 'another user does not see the job');
($st, undef, $body) = http_get($port, 'GET', "/api/v3/step7/jobs/$job");
is($st, 401, 'nor does a request without a JWT');
is(json_of($body)->{error}, 'Invalid or expired token', 'in the app\'s shape');

# --- 3. resume: the rest of the stream after a given event, anywhere

my $cut = $ev[10]{id};
($st, $head, $body) = http_get($port, 'POST', "/api/v3/workflow/$big/step7/stream",
                               headers => { %auth, 'Last-Event-ID' => $cut });
my @rest = events($body);
is($st, 200, 'a POST with Last-Event-ID resumes');
is_deeply([map { $_->{raw} } @rest], [map { $_->{raw} } @ev[11 .. $#ev]],
          'with exactly the events after it, in the app\'s format');

($st, undef, $body) = http_get($port, 'GET', "/api/v3/step7/jobs/$job",
                               headers => { %auth, Accept => 'text/event-stream',
                                            'Last-Event-ID' => $ev[25]{id} });
is_deeply([map { $_->{data}{type} } events($body)], ['data', 'complete'],
          'the job location streams it too');

($st) = http_get($port, 'POST', "/api/v3/workflow/$big/step7/stream",
                 headers => { %auth, 'Last-Event-ID' => $ev[-1]{id} });
is($st, 204, 'after the final event: 204');

# --- 4. the front-end's origin, the JWT, the side endpoint

($st, $head) = http_get($port, 'OPTIONS', "/api/v3/workflow/$big/step7/stream",
                        headers => { Origin => 'http://localhost:3000',
                                     'Access-Control-Request-Method' => 'POST',
                                     'Access-Control-Request-Headers' => 'authorization,content-type' });
is($st, 204, 'the preflight is answered by nginx');
like($head, qr{^Access-Control-Allow-Origin: http://localhost:3000\r?$}mi,
     'for the front-end\'s origin');
like($head, qr{^Access-Control-Allow-Headers: .*Authorization}mi,
     'allowing its Authorization header');
($st, $head) = http_get($port, 'OPTIONS', "/api/v3/workflow/$big/step7/stream",
                        headers => { Origin => 'http://evil.example' });
unlike($head, qr/Access-Control-Allow-Origin/i, 'not for another origin');

($st, undef, $body) = http_get($port, 'POST', "/api/v3/workflow/$big/step7/stream");
is($st, 401, 'no JWT: 401');
($st, undef, $body) = http_get($port, 'POST', "/api/v3/workflow/$big/step7/stream",
                               headers => { Authorization => 'Bearer other-token' });
is($st, 403, 'another user\'s workflow: 403');
is(json_of($body)->{error}, 'Workflow not found', 'in the app\'s shape');

my @limited = map {
    (http_get($port, 'POST', "/api/v3/workflow/$big/step7/stream",
              headers => { Authorization => 'Bearer other-token' }))[0]
} 1 .. 7;
is($limited[0], 403, 'starts per user are limited:');
is($limited[-1], 429, '429 past the burst');

($st, undef, $body) = http_get($port, 'GET', '/health');
is($st, 200, 'GET /health');
is_deeply(decode_json($body)->{store},
          { type => 'redis', reachable => JSON::PP::true },
          '/health is llm_status: the Redis store reachable');

# --- 5. the provider fails at the summative batch (the client's own
#        "modules" do not replace the workflow's: llm_input)

my $before = mock_requests();
($st, $head, $body) = http_get($port, 'POST', "/api/v3/workflow/$small/step7/stream",
                               headers => { %auth, 'Content-Type' => 'application/json' },
                               body => '{"formativesPerModule": 2, "modules": "[\\"x\\",\\"y\\",\\"z\\"]"}');
@ev = events($body);
is_deeply([map { $_->{data}{type} } @ev],
          ['connected', 'progress', 'data', 'progress', 'data', 'progress', 'error'],
          'a failure: both formative batches, the summative progress, then error');
is($ev[5]{data}{progress}{stage}, 'summative', 'at the summative batch');
is_deeply([sort keys %{ $ev[-1]{data} }], ['error', 'type'],
          'error: {"type": "error", "error"}');
like($ev[-1]{data}{error}, qr/summative/, 'naming the batch that failed');

my $failed = $ev[0]{data}{jobId};
$j = job_when($failed, 'failed');
is($j->{state}, 'failed', 'the job is failed');
is($j->{steps}[0]{state}, 'done', 'its formative batches are kept');
is_deeply([map { $_->{formatives}[0]{title} } @{ $j->{steps}[0]{output} // [] }],
          ['Quick check: spotting fire hazards',
           'Quick check: leaving a building safely'],
          'both of them');
isnt($j->{steps}[1]{state}, 'done', 'the summative is not');

my $asked = mock_requests() - $before;
($st, $head, $body) = http_get($port, 'POST', "/api/v3/step7/jobs/$failed",
                               headers => \%auth);
@ev = events($body);
is($st, 200, 'POST on the job continues it');
is_deeply([map { $_->{data}{type} } @ev],
          ['connected', ('progress', 'data') x 7, 'complete'],
          'as a stream of the 7 batches left');
isnt($ev[0]{data}{jobId}, $failed, 'a new job');
is_deeply([map { $_->{stage} } progress_of(@ev)],
          ['summative', ('samples') x 5, 'lms'], 'from the summative batch');
is(mock_requests() - $before - $asked, 7,
   'the formative batches are not asked again');
$s7 = $ev[-1]{data}{data}{step7} // {};
is(scalar @{ $s7->{formativeAssessments} // [] }, 2,
   'the result has the kept formatives');
is($ev[-1]{data}{data}{summary}{formativeCount}, 4, 'and their count');

($st, undef, $body) = http_get($port, 'POST', "/api/v3/step7/jobs/$ev[0]{data}{jobId}",
                               headers => \%auth);
is($st, 409, 'a completed run is not continued');

# --- 6. the traditional twin: one JSON answer, whatever Accept says

($st, $head, $body) = http_get($port, 'POST', "/api/v3/workflow/$small/step7",
                               headers => { %auth, Accept => '*/*',
                                            'Content-Type' => 'application/json',
                                            Origin => 'http://localhost:3000' },
                               body => '{}', timeout => 15);
my $r = json_of($body);
is($st, 200, 'POST .../step7: 200');
like($head, qr{^Content-Type: application/json}mi, 'JSON');
is(scalar(() = $head =~ /^Access-Control-Allow-Origin:/mig), 1,
   'with CORS once');
is($r->{success}, JSON::PP::true, '{"success": true');
is($r->{message}, 'Step 7 complete', '"message"');
is($r->{data}{summary}{sampleQuestionsTotal}, 55, '"data": {"step7", "summary"}}');

# --- 7. pause and resume between two batches, then cancel: DELETE stops
#        the run, the batches made are kept

($st, $head, $body) = http_get($port, 'POST', "/api/v3/workflow/$big/step7/stream",
                               headers => \%auth,
                               until => qr/"type":"data"/);
($job) = $body =~ /"jobId":"([\w-]+)"/;

($st, undef, $body) = http_get($port, 'POST',
                               "/api/v3/step7/jobs/$job?action=pause",
                               headers => \%auth);
ok($st == 200 || $st == 202, 'POST ?action=pause on the job');
$j = job_when($job, 'paused');
is($j->{state}, 'paused', 'the job pauses between two batches');
my $made = scalar @{ $j->{steps}[0]{output} // [] };
sleep 2;
$j = job_when($job, 'paused');
is(scalar @{ $j->{steps}[0]{output} // [] }, $made,
   'no batch is made while it is paused');
($st) = http_get($port, 'POST', "/api/v3/step7/jobs/$job?action=resume",
                 headers => \%auth);
ok($st == 200 || $st == 202, 'POST ?action=resume');
$j = job_when($job, 'running');
is($j->{state}, 'running', 'it runs again');

($st, undef, $body) = http_get($port, 'DELETE', "/api/v3/step7/jobs/$job",
                               headers => \%auth);
ok($st == 200 || $st == 202, 'DELETE on the job cancels it');
$j = job_when($job, 'cancelled');
is($j->{state}, 'cancelled', 'the job is cancelled');
cmp_ok(scalar @{ $j->{steps}[0]{output} // [] }, '>=', 1,
       'keeping the formative batches made before');

my $took = time - $t0;
stop_example($pid);
ok(!-e "$top/build/example-assessment-batches/logs/nginx.pid",
   'the example stops what it started');

my $log = slurp("$top/build/example-assessment-batches/logs/error.log");
unlike($log, qr/\[(alert|crit|emerg)\]/, 'no alerts in the error log');
diag(sprintf 'took %.1f s', $took) if $ENV{TEST_VERBOSE};

done_testing();
