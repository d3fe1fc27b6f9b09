# examples/learning-path/ as `make example NAME=learning-path` runs it
# (util/example.sh: the mock model answering from its mock.json, a private
# Redis), driven the way the app's sse-progress.js drives it: a form POST
# to /generate-stream read as data-only events.  The events shape by
# shape (10, 30, 60, 80 with the seed's messages, then 100 with done and
# redirect_url), the headers, the login, the blocking twin, the result
# page's data, a drop resumed on a second instance of the same rendered
# configuration, Cancel, and a provider failing at the resources step:
# what the page sees, what the job keeps, and the POST that continues it
# without asking the model for the curriculum again.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use File::Path qw(make_path remove_tree);
use Time::HiRes qw(sleep time);
use Cwd ();
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(free_port http_get);
use LLM::Example qw(example_ports start_example wait_example slurp events
                    mock_requests read_job);

my $top = Cwd::abs_path("$FindBin::Bin/..");

plan skip_all => 'build/llm-mock is not built' unless -x "$top/build/llm-mock";
plan skip_all => 'redis-server is not installed'
    unless grep { -x "$_/redis-server" } split /:/, $ENV{PATH};

# example.sh takes three ports in a row: nginx, the mock, Redis
my $port = example_ports();

my $prefix = "$top/build/example-learning-path";

# --- util/example.sh learning-path, until the end of the test

my $ex = start_example('learning-path', $port);
my $out = wait_example($ex);

unless ($out =~ /serving on/) {
    diag($out);
    BAIL_OUT('util/example.sh learning-path did not start');
}

my $B;       # the second instance's prefix, stopped at the end

END {
    local $?;
    if ($B && open my $f, '<', "$B/logs/nginx.pid") {
        my $p = <$f>;
        kill 'QUIT', $p + 0 if $p;
    }
}

my $A = 'Bearer demo-token';
my %form = (topic => 'Python for Data Science',
            expertise_level => 'beginner', learning_style => 'visual',
            time_commitment => 8, duration_weeks => 8,
            goals => 'Get a junior data analyst job');

sub urlencode {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

sub form { my %f = @_; join '&', map { "$_=" . urlencode($f{$_}) } sort keys %f }

sub post_stream {
    my ($p, $uri, %o) = @_;
    return http_get($p, 'POST', $uri, timeout => 15,
        headers => { 'Content-Type' => 'application/x-www-form-urlencoded',
                     Authorization => $A, %{ $o{headers} || {} } },
        body => $o{body} // form(%form),
        $o{until} ? (until => $o{until}) : ());
}

sub header {
    my ($head, $name) = @_;
    my ($v) = $head =~ /^\Q$name\E:\s*(.*?)\r?$/mi;
    return $v;
}

# the job as JSON, once the store's copy is no longer running
sub job_json {
    my ($p, $id, $auth) = @_;
    return read_job($p, "/jobs/$id",
                    headers => { Authorization => $auth // $A });
}

my @stages = (
    { progress => 10, message => 'Analyzing your topic and requirements...' },
    { progress => 30, message => 'Building curriculum structure with AI...' },
    { progress => 60, message => 'Finding the best learning resources...' },
    { progress => 80, message => 'Adding career insights and job market data...' },
);
my $done = { progress => 100, done => JSON::PP::true, redirect_url => '/result',
             message => 'Complete!' };

# --- 1. the example's own request (request.sh), as example.sh printed it

like($out, qr{example: curl -sN -H 'Authorization: Bearer demo-token' .*http://127\.0\.0\.1:$port/generate-stream},
     'example.sh prints the curl command of request.sh');

my ($ran) = $out =~ /\n\n(retry: .*?)\nexample: serving on/s;
my @ev = events($ran);
is_deeply([map { $_->{data} } @ev], [@stages, $done],
          'its stream: 10, 30, 60, 80 with the seed\'s messages, then 100 done with redirect_url')
    or diag($ran);
ok(!(grep { defined $_->{event} } @ev), 'data-only events, as the reader loop expects');
ok(!(grep { !defined $_->{id} } @ev), 'each with an id: to resume from');

# --- 2. headers, login, methods

my ($st, $head, $body) = post_stream($port, '/generate-stream');
is($st, 200, 'POST /generate-stream: 200');
like(header($head, 'Content-Type'), qr{^text/event-stream}, 'text/event-stream');
is(header($head, 'Cache-Control'), 'no-cache', 'Cache-Control: no-cache');
is(header($head, 'X-Accel-Buffering'), 'no', 'X-Accel-Buffering: no');
my $job = header($head, 'X-Job-Id');
like($job, qr/^[A-Za-z0-9_-]{22}$/, 'X-Job-Id names the job');
like(header($head, 'Set-Cookie'), qr/^lp_job=\Q$job\E; Path=\/; HttpOnly/,
     'and the lp_job cookie that /result reads');
is_deeply([map { $_->{data} } events($body)], [@stages, $done], 'the same events');
like((events($body))[0]{id}, qr/^\Q$job\E:\d+$/, 'ids are JOB:SEQ');

($st, $head, $body) = post_stream($port, '/generate-stream',
                                  headers => { Authorization => '' });
is($st, 401, 'no login: 401');
is_deeply(eval { decode_json($body) }, { error => 'Please log in to generate a learning path.' },
          'as {"error": ...}');

($st) = post_stream($port, '/generate-stream',
                    headers => { Authorization => 'Bearer forged' });
is($st, 401, 'a token the backend refuses: 401');

($st) = http_get($port, 'GET', '/generate-stream', headers => { Authorization => $A });
is($st, 405, 'GET: 405, as the Flask route (methods=[POST])');

($st, undef, $body) = http_get($port, 'POST', '/generate-stream',
    headers => { Authorization => $A,
                 'Content-Type' => 'multipart/form-data; boundary=x' },
    body => "--x\r\nContent-Disposition: form-data; name=\"topic\"\r\n\r\nPython\r\n--x--\r\n");
is($st, 200, 'a multipart FormData body, as the seed\'s page posts it');
like($body, qr/"done":\s*true/, 'runs to its end');

# --- 3. the session cookie instead of the bearer token, and the blocking twin

($st, $head, $body) = http_get($port, 'POST', '/generate', timeout => 15,
    headers => { 'Content-Type' => 'application/x-www-form-urlencoded',
                 Cookie => 'session=demo-token', Accept => 'application/json' },
    body => form(%form));
is($st, 200, 'POST /generate with Accept: application/json and the session cookie: 200');
like(header($head, 'Content-Type'), qr{^application/json}, 'one JSON document');
my $j = eval { decode_json($body) } || {};
is_deeply([@$j{qw(progress done redirect_url message)}],
          [100, JSON::PP::true, '/result', 'Complete!'], 'the final object\'s fields');
is($j->{learning_path}{curriculum}{title}, 'Python for Data Science in 8 Weeks',
   'and the learning path: curriculum, resources, career');
ok($j->{learning_path}{resources}{path_valid} && $j->{learning_path}{career}{job_market},
   'the resources (validated) and the career insights');
my $blocking = header($head, 'X-Job-Id');

# /result/data: the job of the lp_job cookie, its steps' outputs
my $data;
for (1 .. 50) {
    ($st, undef, $body) = http_get($port, 'GET', '/result/data',
        headers => { Cookie => "session=demo-token; lp_job=$blocking" });
    $data = eval { decode_json($body) } || {};
    last if ($data->{state} // '') ne 'running';
    sleep 0.1;
}
is($st, 200, 'GET /result/data: the last job of the cookie');
is_deeply([map { "$_->{name}:$_->{state}" } @{ $data->{steps} || [] }],
          ['curriculum:done', 'resources:done', 'career:done'], 'its three steps, done');

($st, undef, $body) = http_get($port, 'GET', '/result/data',
    headers => { Authorization => 'Bearer demo-token-2', Cookie => "lp_job=$blocking" });
is($st, 404, 'another user cannot read it (404)');
ok(eval { decode_json($body)->{error} }, 'as {"error": ...}');

# --- 4. a drop, resumed on a second instance of the same configuration

$B = "$top/build/example-learning-path-b";
my $portB = free_port();
remove_tree($B);
make_path("$B/logs", "$B/html");
system('cp', '-r', "$prefix/conf", "$B/conf") == 0 or die;
system('cp', "$prefix/html/index.html", "$B/html/") == 0 or die;
my $conf = slurp("$B/conf/nginx.conf");
$conf =~ s/\Q$prefix\E/$B/g;
$conf =~ s/listen 127\.0\.0\.1:$port;/listen 127.0.0.1:$portB;/ or die;
open my $cf, '>', "$B/conf/nginx.conf" or die;
print $cf $conf;
close $cf;
system('nginx', '-p', $B, '-c', 'conf/nginx.conf', '-e', 'logs/error.log',
       $> == 0 ? ('-g', 'user root;') : ()) == 0 or die 'second nginx';

# what the page has read when the network drops: up to the 30% event
($st, $head, $body) = post_stream($port, '/generate-stream', until => qr/"progress":30/);
my @first = events($body);
is_deeply([map { $_->{data}{progress} } @first], [10, 30], 'instance A: 10, 30, then the drop');
$job = header($head, 'X-Job-Id');

# the page waits a second before it reconnects; another instance knows
# the job once A has written it to Redis (every 100 ms)
sleep 1;

($st, $head, $body) = post_stream($portB, '/generate-stream',
    headers => { 'Last-Event-ID' => $first[-1]{id} }, body => '');
is($st, 200, 'the page posts again with Last-Event-ID, to instance B');
is_deeply([map { $_->{data} } events($body)], [@stages[2, 3], $done],
          'B sends 60, 80, 100: nothing lost, nothing twice');
is(header($head, 'X-Job-Id'), $job, 'the same job');

($st) = post_stream($portB, '/generate-stream',
    headers => { 'Last-Event-ID' => $first[-1]{id},
                 Authorization => 'Bearer demo-token-2' }, body => '');
is($st, 404, 'another user cannot resume it');

# --- 5. Cancel: the page aborts and sends DELETE

($st, $head, $body) = post_stream($port, '/generate-stream', until => qr/"progress":30/);
$job = header($head, 'X-Job-Id');
sleep 0.3;      # a click, later than Redis's 100 ms flush
($st, undef, $body) = http_get($portB, 'DELETE', "/jobs/$job", headers => { Authorization => $A });
ok($st == 200 || $st == 202, "DELETE /jobs/ID on the other instance: $st");
$j = job_json($port, $job);
is($j->{state}, 'cancelled', 'the job is cancelled');
my $reqs = mock_requests();
sleep 1.5;
is(mock_requests(), $reqs, 'and asks the model nothing more');

# --- 6. the provider fails at the resources step (the mock answers 503
#        once to the topic "Provider Outage Drill")

($st, $head, $body) = post_stream($port, '/generate-stream',
    body => form(%form, topic => 'Provider Outage Drill'));
$job = header($head, 'X-Job-Id');
@ev = events($body);
is_deeply([map { $_->{data} } @ev[0 .. 2]], [@stages[0 .. 2]], 'failure: 10, 30, 60');
is(scalar @ev, 4, 'then one last event');
like($ev[-1]{data}{error} // '', qr/^step "resources": .*503/,
     'the error event {"error": ...} that the page shows, naming the step');
is_deeply([sort keys %{ $ev[-1]{data} }], ['error'], 'and nothing else');

$j = job_json($portB, $job);
is($j->{state}, 'failed', 'the job, read on the other instance: failed');
my %steps = map { $_->{name} => $_ } @{ $j->{steps} || [] };
is($steps{curriculum}{state}, 'done', 'the curriculum is kept');
is($steps{curriculum}{output}{title}, 'Python for Data Science in 8 Weeks', 'with its output');
isnt($steps{resources}{state}, 'done', 'resources did not finish');

$reqs = mock_requests();
($st, $head, $body) = http_get($portB, 'POST', "/jobs/$job", timeout => 15,
                               headers => { Authorization => $A });
is($st, 200, 'Retry: POST /jobs/ID (instance B) continues it');
my $next = header($head, 'X-Job-Id');
isnt($next, $job, 'as a new job');
like(header($head, 'Set-Cookie') // '', qr/^lp_job=\Q$next\E;/, 'which /result will show');
is_deeply([map { $_->{data} } events($body)], [@stages[2, 3], $done],
          'from the resources step: 60, 80, 100');
is(mock_requests() - $reqs, 2, 'two model calls (resources, career): the curriculum is not asked again');

($st) = http_get($port, 'POST', "/jobs/$job", headers => { Authorization => 'Bearer demo-token-2' });
is($st, 404, 'another user cannot continue it');

done_testing();
