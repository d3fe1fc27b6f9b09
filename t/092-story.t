# examples/story/ as `make example NAME=story` runs it (util/example.sh:
# the mock model answering from its mock.json, a private Redis), driven
# the way the app's useSSEStoryGeneration hook drives it: a GET with the
# token in the query, data-only events told apart by "type".  The event
# flow shape by shape (workflow and node events, progress, content
# chunks, safety_check, metadata, the complete story object), FastAPI's
# refusals (401, 403, 422, 405), CORS, the concurrent-streams-per-user
# limit, EventSource's reconnect with Last-Event-ID on a second instance
# of the same rendered configuration, a story the safety check sends
# back once, Stop (DELETE), the blocking twin, and a provider failing at
# the safety check: what the hook sees, what the job keeps, and the POST
# that continues it without writing the story again.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
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

my $prefix = "$top/build/example-story";

# --- util/example.sh story, until the end of the test

my $ex = start_example('story', $port);

my $B;       # the second instance's prefix

END {
    local $?;
    if ($B && open my $f, '<', "$B/logs/nginx.pid") {
        my $p = <$f>;
        kill 'QUIT', $p + 0 if $p;
    }
}

my $out = wait_example($ex);
unless ($out =~ /serving on/) {
    diag($out);
    BAIL_OUT('util/example.sh story did not start');
}

sub header {
    my ($head, $name) = @_;
    my ($v) = $head =~ /^\Q$name\E:\s*(.*?)\r?$/mi;
    return $v;
}

my $stream = '/api/v1/stories/generate/stream';

sub query {
    my (%q) = (child_id => 1, theme => 'adventure', chapter_number => 1,
               title => 'The Magic Forest', token => 'demo-token', @_);
    return join '&', map { my $v = $q{$_}; $v =~ s/ /+/g; "$_=$v" }
                     grep { defined $q{$_} } sort keys %q;
}

sub get_stream {
    my ($p, %o) = @_;
    my %h = (Accept => 'text/event-stream', %{ $o{headers} || {} });
    return http_get($p, 'GET', "$stream?" . query(%{ $o{query} || {} }),
                    timeout => 15, headers => \%h,
                    $o{until} ? (until => $o{until}) : ());
}

# a compact picture of an event: its type and what tells it apart
sub shape {
    my ($d) = @_;
    my $t = $d->{type} // '?';
    return "node:$d->{node}:$d->{status}" if $t eq 'node';
    return "progress:$d->{progress}{stage}" if $t eq 'progress';
    return "safety_check:$d->{status}:$d->{score}" if $t eq 'safety_check';
    return $t;
}

# shapes with the runs of content chunks as one "content*"
sub flow {
    my @s;
    for (map { shape($_->{data}) } @_) {
        next if $_ eq 'content' && @s && $s[-1] eq 'content*';
        push @s, $_ eq 'content' ? 'content*' : $_;
    }
    return \@s;
}

sub text_of { join '', map { $_->{data}{chunk} } grep { $_->{data}{type} eq 'content' } @_ }

# the job as JSON once the store's copy is no longer running
sub job_json {
    my ($p, $id, $token) = @_;
    return read_job($p, "/api/v1/stories/jobs/$id",
        headers => { Authorization => 'Bearer ' . ($token // 'demo-token') });
}

my $story = 'Once upon a time, in a magical forest where the trees hummed softly, '
          . 'there lived a brave little fox named Pip.';

my @full = ('node:workflow:started',
            'node:generate_content:started', 'progress:generate_content',
            'content*', 'node:generate_content:completed',
            'node:safety_check:started', 'progress:safety_check',
            'safety_check:approved:0.95', 'node:safety_check:completed',
            'progress:metadata', 'metadata', 'complete');

# --- 1. the example's own request (request.sh), as example.sh printed it

like($out, qr{example: curl -sN 'http://127\.0\.0\.1:$port$stream\?child_id=1&theme=adventure&chapter_number=1&title=The\+Magic\+Forest&token=demo-token'},
     'example.sh prints the EventSource URL of request.sh');

my ($ran) = $out =~ /\n\n(retry: .*?)\nexample: serving on/s;
my @ev = events($ran);
is_deeply(flow(@ev), \@full, 'its events: the seed\'s event flow, progress included')
    or diag(explain([map { $_->{data} } @ev]));
ok(!(grep { defined $_->{event} } @ev), 'all data-only (onmessage, the "type" decides)');
ok((grep { $_->{data}{type} eq 'content' } @ev) > 3, 'the story streams in chunks');

my %e = map { shape($_->{data}) => $_->{data} } @ev;
is_deeply($e{'progress:generate_content'},
          { type => 'progress', progress => { stage => 'generate_content',
                                              description => 'Generating story content...' } },
          'progress: {"type", "progress": {"stage", "description"}}');
is_deeply($e{'safety_check:approved:0.95'},
          { type => 'safety_check', status => 'approved', score => 0.95 },
          'safety_check: {"type", "status": "approved", "score"}');
is_deeply($e{metadata},
          { type => 'metadata', estimated_reading_time => 5, vocabulary_level => 'beginner',
            educational_elements => ['Reading comprehension', 'Decision making'] },
          'metadata: estimated_reading_time, vocabulary_level, educational_elements');

my $s = $e{complete}{story} || {};
is_deeply([sort keys %$s],
          [sort qw(success story_content choices choice_question educational_elements
                   estimated_reading_time safety_score content_approved vocabulary_level)],
          'complete: the story object with the seed\'s fields');
is(text_of(@ev), $s->{story_content}, 'story_content is the streamed text');
like($s->{story_content}, qr/^\Q$story\E/, 'the story');
is_deeply([@$s{qw(success content_approved safety_score estimated_reading_time vocabulary_level)}],
          [JSON::PP::true, JSON::PP::true, 0.95, 5, 'beginner'], 'its values');
is(scalar @{ $s->{choices} || [] }, 2, 'two choices');
is($s->{choice_question}, 'Which way should Pip go?', 'and the choice question');

# --- 2. headers, CORS, refusals

my ($st, $head, $body) = get_stream($port, headers => { Origin => 'http://localhost:5173' });
is($st, 200, 'GET with the token in the query: 200');
like(header($head, 'Content-Type'), qr{^text/event-stream}, 'text/event-stream');
is(header($head, 'Cache-Control'), 'no-cache', 'Cache-Control: no-cache');
is(header($head, 'X-Accel-Buffering'), 'no', 'X-Accel-Buffering: no');
is(header($head, 'Access-Control-Allow-Origin'), 'http://localhost:5173',
   'CORS for the front-end\'s origin');
is_deeply(flow(events($body)), \@full, 'the same flow');

($st, $head) = get_stream($port, headers => { Origin => 'http://evil.example' },
                          until => qr/"workflow"/);
is(header($head, 'Access-Control-Allow-Origin'), undef, 'no CORS for another origin');

($st, $head) = http_get($port, 'OPTIONS', '/api/v1/stories/generate',
    headers => { Origin => 'http://localhost:3000',
                 'Access-Control-Request-Method' => 'POST',
                 'Access-Control-Request-Headers' => 'authorization,content-type' });
is($st, 204, 'a preflight is answered by nginx (204)');
like(header($head, 'Access-Control-Allow-Headers') // '', qr/Authorization/, 'allowing Authorization');

my @refusals = (
    [{ token => undef },            401, { detail => 'Could not validate credentials' }, 'no token'],
    [{ token => 'forged' },         401, { detail => 'Could not validate credentials' }, 'a bad token'],
    [{ child_id => 3 },             403, { detail => 'Not enough permissions for this child' },
                                         'another user\'s child'],
    [{ child_id => undef },         422, undef, 'child_id missing'],
    [{ child_id => 'x' },           422, undef, 'child_id not an integer'],
    [{ theme => undef },            422, undef, 'theme missing'],
    [{ chapter_number => 'two' },   422, undef, 'chapter_number not an integer'],
);
for my $r (@refusals) {
    my ($q, $want, $json, $what) = @$r;
    ($st, $head, $body) = get_stream($port, query => $q);
    is($st, $want, "$what: $want");
    my $d = eval { decode_json($body) };
    if ($json) {
        is_deeply($d, $json, '  FastAPI\'s {"detail": ...}');
    } else {
        is(ref $d->{detail}, 'ARRAY', '  FastAPI\'s validation detail');
    }
}

($st) = http_get($port, 'POST', "$stream?" . query());
is($st, 405, 'POST on the stream: 405');

($st, undef, $body) = http_get($port, 'GET', '/api/v1/health');
is($st, 200, 'GET /api/v1/health');

# --- 3. concurrent streams per user (3); another user is not affected

my @held;
for (1 .. 3) {
    my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die;
    syswrite($c, "GET $stream?" . query() . " HTTP/1.0\r\nHost: x\r\n\r\n");
    my $got = '';
    while ($got !~ /\r\n\r\n/) {
        sysread($c, my $buf, 4096) or last;
        $got .= $buf;
    }
    like($got, qr{^HTTP/1\.1 200}, "stream $_ of user 1 open");
    push @held, $c;
}
($st, undef, $body) = get_stream($port);
is($st, 429, 'a fourth one: 429');
is_deeply(eval { decode_json($body) }, { detail => 'Too many concurrent story streams' },
          '{"detail": ...}');
($st) = get_stream($port, query => { child_id => 3, token => 'demo-token-2' },
                   until => qr/"workflow"/);
is($st, 200, 'user 2 meanwhile: 200');
close $_ for @held;
sleep 0.2;
($st) = get_stream($port, until => qr/"workflow"/);
is($st, 200, 'user 1 again once they are closed');

# --- 4. a drop, and EventSource's reconnect on a second instance

$B = "$top/build/example-story-b";
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

($st, $head, $body) = get_stream($port, until => qr/(?:"content".*){5}/s);
my @first = events($body);
ok((grep { $_->{data}{type} eq 'content' } @first) >= 5, 'instance A: five chunks, then the drop');
sleep 1;    # EventSource waits (retry: 3000 in a browser) before it reconnects
($st, $head, $body) = get_stream($portB, headers => { 'Last-Event-ID' => $first[-1]{id} });
is($st, 200, 'the reconnect with Last-Event-ID (same URL) to instance B: 200');
my @rest = events($body);
is_deeply(flow(@first, @rest), \@full, 'the flow, whole, across the two');
my %seen;
ok(!(grep { defined $_->{id} && $seen{$_->{id}}++ } @first, @rest), 'no event twice');
is(text_of(@first, @rest), $rest[-1]{data}{story}{story_content}, 'no chunk lost');

($st, undef, $body) = get_stream($portB, query => { child_id => 3, token => 'demo-token-2' },
                                 headers => { 'Last-Event-ID' => $first[-1]{id} });
is($st, 404, 'another user cannot resume it');
is(ref eval { decode_json($body) }, 'HASH', '{"detail": ...}');

# --- 5. the safety check rejects a spooky story once

($st, undef, $body) = get_stream($port, query => { child_id => 2, theme => 'spooky' });
@ev = events($body);
is_deeply(flow(@ev), [
    'node:workflow:started',
    'node:generate_content:started', 'progress:generate_content', 'content*',
    'node:generate_content:completed',
    'node:safety_check:started', 'progress:safety_check',
    'safety_check:rejected:0.4', 'node:safety_check:completed',
    'node:generate_content:started', 'progress:generate_content', 'content*',
    'node:generate_content:completed',
    'node:safety_check:started', 'progress:safety_check',
    'safety_check:approved:0.95', 'node:safety_check:completed',
    'progress:metadata', 'metadata', 'complete'],
    'rejected (0.4), written again, approved (0.95)');
my $final = $ev[-1]{data}{story}{story_content} // '';
like($final, qr/shy ghost called Boo/, 'complete carries the approved version');
unlike($final, qr/screamed/, 'not the rejected one');

# --- 6. Stop: the hook closes the EventSource and DELETEs the job

($st, $head, $body) = get_stream($port, until => qr/"content"/);
my ($job) = (events($body))[0]{id} =~ /^([^:]+)/;
sleep 0.3;      # a click, later than Redis's 100 ms flush
($st, undef, $body) = http_get($portB, 'DELETE', "/api/v1/stories/jobs/$job",
                               headers => { Authorization => 'Bearer demo-token' });
ok($st == 200 || $st == 202, "DELETE on the other instance: $st");
my $j = job_json($port, $job);
is($j->{state}, 'cancelled', 'the job is cancelled');
is($j->{error}{code}, 'cancelled', 'with the code cancelled');

# a follower sees it end as the hook's error event
($st, undef, $body) = http_get($port, 'GET', "/api/v1/stories/jobs/$job",
    headers => { Accept => 'text/event-stream', Authorization => 'Bearer demo-token' });
@ev = events($body);
is_deeply([@{ $ev[-1]{data} }{qw(type error_code)}], ['error', 'cancelled'],
          'the job\'s stream ends {"type": "error", "error_code": "cancelled"}');

# --- 7. the blocking twin

($st, $head, $body) = http_get($port, 'POST', '/api/v1/stories/generate', timeout => 15,
    headers => { Authorization => 'Bearer demo-token',
                 'Content-Type' => 'application/json',
                 Accept => 'application/json, text/plain, */*' },
    body => '{"child_id": 1, "theme": "adventure", "chapter_number": 1}');
is($st, 200, 'POST /api/v1/stories/generate (axios\'s Accept): 200');
$s = eval { decode_json($body) } || {};
is_deeply([sort keys %$s],
          [sort qw(success story_content choices choice_question educational_elements
                   estimated_reading_time safety_score content_approved vocabulary_level)],
          'the story object');
like($s->{story_content} // '', qr/^\Q$story\E/, 'the story');

# --- 8. the provider fails at the safety check (the mock answers 503
#        once for the theme "outage drill")

($st, undef, $body) = get_stream($port, query => { theme => 'outage drill' });
@ev = events($body);
is_deeply(flow(@ev), [@full[0 .. 6], 'error'],
          'failure: the story streams, the safety check starts, then an error');
is_deeply([sort keys %{ $ev[-1]{data} }], [qw(error_code message type)],
          'error: {"type", "message", "error_code"}');
is($ev[-1]{data}{error_code}, 'upstream_status', 'error_code: upstream_status');
like($ev[-1]{data}{message}, qr/^step "safety_check": .*503/, 'the message names the node');
my $partial = text_of(@ev);
($job) = $ev[0]{id} =~ /^([^:]+)/;

$j = job_json($portB, $job);
is($j->{state}, 'failed', 'the job, on the other instance: failed');
my %steps = map { $_->{name} => $_ } @{ $j->{steps} || [] };
is($steps{generate_content}{state}, 'done', 'the story is kept');
is($steps{generate_content}{output}, $partial, 'all of it');

my $reqs = mock_requests();
($st, $head, $body) = http_get($portB, 'POST', "/api/v1/stories/jobs/$job", timeout => 15,
                               headers => { Authorization => 'Bearer demo-token' });
is($st, 200, 'Retry: POST on the job (instance B) continues it');
@ev = events($body);
isnt(($ev[0]{id} =~ /^([^:]+)/)[0], $job, 'as a new job');
is_deeply(flow(@ev), ['node:workflow:started', @full[5 .. 11]],
          'from the safety check: approved, metadata, complete');
is($ev[-1]{data}{story}{story_content}, $partial, 'the story kept, not written again');
is(mock_requests() - $reqs, 2, 'two model calls (safety_check, metadata)');

($st) = http_get($port, 'POST', "/api/v1/stories/jobs/$job",
                 headers => { Authorization => 'Bearer demo-token-2' });
is($st, 404, 'another user cannot continue it');

done_testing();
