# The job API (llm_job): a job as JSON, as a stream, cancelled with DELETE;
# background (Prefer: respond-async) and blocking (Accept: application/json)
# requests; expiry; the owner binding; a full memory zone.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $port = free_port();
my $up = "http://127.0.0.1:$mock/v1/chat/completions";
my $run = $$;

my $root = start_nginx('jobs', "daemon on;\nmaster_process off;", <<"HTTP");
    llm_model  m;
    llm_prompt "hi";

    server {
        listen 127.0.0.1:$port;

        location = /g {
            llm_pass    $up?tokens=10&tps=50&ttft=0&tag=\$arg_tag;
            llm_job_url /jobs/\$llm_job_id;
        }
        location = /slow {
            llm_pass    $up?tokens=200&tps=20&ttft=0&tag=\$arg_tag;
        }
        location = /fail {
            llm_pass    $up?mode=cut&after=3&tps=50&ttft=0;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_job \$id;
        }

        location = /mine {
            llm_job_owner \$http_x_user;
            llm_pass    $up?tokens=5&tps=50&ttft=0;
        }
        location ~ ^/myjobs/(?<id>[\\w-]+)\$ {
            llm_job_owner \$http_x_user;
            llm_job \$id;
        }
    }

    server {
        listen 127.0.0.1:$port;
        server_name short;
        llm_store memory zone=short:1m ttl=1s;

        location = /g {
            llm_pass $up?tokens=3&tps=0&ttft=0;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_job \$id;
        }
    }

    server {
        listen 127.0.0.1:$port;
        server_name tiny;
        llm_store memory zone=tiny:64k;

        location = /big {
            llm_pass $up?tokens=400&tps=0&ttft=0&token_size=256;
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_job \$id;
        }
    }
HTTP

sub job_of {
    my ($body) = @_;
    my @ev = sse_events($body);
    return @ev ? ($ev[0]{id} =~ /^([\w-]+):/)[0] : undef;
}

sub json_of {
    my ($body) = @_;
    return eval { decode_json($body) } || {};
}

my ($st, $h, $body, $j);

# GET as JSON

($st, $h, $body) = http_get($port, 'GET', '/g');
my $id = job_of($body);

($st, $h, $body) = http_get($port, 'GET', "/jobs/$id");
$j = json_of($body);
is($st, 200, 'GET job: 200');
is($j->{job}, $id, 'its id');
is($j->{state}, 'completed', 'its state');
like($j->{text}, qr/^Once upon a time/, 'its text');
is($j->{finish_reason}, 'stop', 'its finish reason');
is($j->{usage}{output_tokens}, 10, 'its usage');
ok($j->{created} && $j->{finished} >= $j->{created}, 'its times');

# GET as a stream, and from a Last-Event-ID

($st, $h, $body) = http_get($port, 'GET', "/jobs/$id",
                            headers => { Accept => 'text/event-stream' });
my @ev = sse_events($body);
is($ev[0]{event}, 'start', 'as a stream: from the start');
is($ev[-1]{event}, 'complete', 'to the end');

my $n = $j->{events};
my $before = $n - 1;

($st, $h, $body) = http_get($port, 'GET', "/jobs/$id",
                            headers => { Accept => 'text/event-stream',
                                         'Last-Event-ID' => "$id:$before" });
@ev = sse_events($body);
is(scalar @ev, 1, 'from a Last-Event-ID: only what follows');
is($ev[0]{id}, "$id:$n", 'the final event');

# an EventSource left open after the final event reconnects: 204 stops it

($st, $h, $body) = http_get($port, 'GET', "/jobs/$id",
                            headers => { Accept => 'text/event-stream',
                                         'Last-Event-ID' => "$id:$n" });
is($st, 204, 'resuming after the final event: 204');

($st) = http_get($port, 'GET', '/g',
                 headers => { 'Last-Event-ID' => "$id:$n" });
is($st, 204, 'also on the generation location');

# unknown ids

($st, $h, $body) = http_get($port, 'GET', '/jobs/AAAAAAAAAAAAAAAAAAAAAA');
is($st, 404, 'unknown job: 404');
like($body, qr/"code":"job_not_found"/, 'job_not_found');

($st) = http_get($port, 'GET', '/jobs/short');
is($st, 404, 'not an id: 404');

($st, $h) = http_get($port, 'PUT', "/jobs/$id");
is($st, 405, 'PUT on a job: 405');
like($h, qr/^Allow: GET, POST, DELETE/mi, 'Allow');

# DELETE: the upstream stops, the attached stream gets its final event

my $pid = fork;
if ($pid == 0) {
    my (undef, undef, $b) = http_get($port, 'GET', "/slow?tag=del$run");
    open my $f, '>', "/tmp/llm-del-$run" or exit 1;
    print $f $b;
    exit 0;
}

my $running;
for (1 .. 50) {
    sleep 0.1;
    my $s = `curl -s 'http://127.0.0.1:$mock/stats?tag=del$run'`;
    last if ($running) = $s =~ /"tokens_sent":([1-9]\d*)/;
}

# the job id from the error log, as the stream is read by the child
my ($del) = error_log($root) =~ /job ([\w-]{22}) started.*tag=del$run/;

($st, $h, $body) = http_get($port, 'DELETE', "/jobs/$del");
$j = json_of($body);
is($st, 200, 'DELETE: 200');
is($j->{state}, 'cancelled', 'the job is cancelled');
is($j->{error}{code}, 'cancelled', 'with code cancelled');

waitpid($pid, 0);
open my $f, '<', "/tmp/llm-del-$run";
my $streamed = do { local $/; <$f> };
unlink "/tmp/llm-del-$run";

@ev = sse_events($streamed // '');
is($ev[-1]{event}, 'error', 'the attached stream ends with an error event');
like($ev[-1]{data}, qr/"code":"cancelled"/, 'code cancelled');

sleep 0.3;
like(`curl -s 'http://127.0.0.1:$mock/stats?tag=del$run'`,
     qr/"streams_aborted":1/, 'the upstream request stopped');

# background: 202 at once, the job runs with nobody attached

($st, $h, $body) = http_get($port, 'POST', "/g?tag=bg$run",
                            headers => { 'Content-Type' => 'application/json',
                                         Prefer => 'respond-async' },
                            body => '{}');
$j = json_of($body);
is($st, 202, 'background: 202');
like($j->{job} // '', qr/^[\w-]{22}$/, 'with the job id');
is($j->{url}, "/jobs/$j->{job}", 'and its URL (llm_job_url)');
like($h, qr{^Location: /jobs/$j->{job}}mi, 'Location');

my $bg = $j->{job};
for (1 .. 50) {
    sleep 0.1;
    (undef, undef, $body) = http_get($port, 'GET', "/jobs/$bg");
    last if json_of($body)->{state} ne 'running';
}
is(json_of($body)->{state}, 'completed', 'the background job completes');

# blocking: the final job as JSON, 502 when it failed

($st, $h, $body) = http_get($port, 'GET', '/g',
                            headers => { Accept => 'application/json' });
$j = json_of($body);
is($st, 200, 'blocking: 200');
like($h, qr{^Content-Type: application/json}mi, 'JSON');
is($j->{state}, 'completed', 'completed');
like($j->{text}, qr/^Once upon a time/, 'the whole text');

($st, $h, $body) = http_get($port, 'GET', '/fail',
                            headers => { Accept => 'application/json' });
$j = json_of($body);
is($st, 502, 'blocking, failed: 502');
is($j->{error}{code}, 'upstream_truncated', 'the error');
like($j->{text}, qr/^Once upon a/, 'and the partial text');

# the owner binding: a leaked id alone does not open another user's job

($st, $h, $body) = http_get($port, 'GET', '/mine',
                            headers => { 'X-User' => 'alice' });
my $mine = job_of($body);

($st) = http_get($port, 'GET', "/myjobs/$mine",
                 headers => { 'X-User' => 'alice' });
is($st, 200, 'the owner reads the job');

($st) = http_get($port, 'GET', "/myjobs/$mine",
                 headers => { 'X-User' => 'mallory' });
is($st, 404, 'another user gets 404');

($st) = http_get($port, 'GET', "/myjobs/$mine");
is($st, 404, 'no user: 404');

($st) = http_get($port, 'DELETE', "/myjobs/$mine",
                 headers => { 'X-User' => 'mallory' });
is($st, 404, 'another user cannot cancel');

($st) = http_get($port, 'GET', '/mine',
                 headers => { 'X-User' => 'mallory',
                              'Last-Event-ID' => "$mine:1" });
is($st, 404, 'nor resume');

unlike(error_log($root), qr/alice/, 'the owner value is not logged');

# ttl: a finished job expires

($st, $h, $body) = http_get($port, 'GET', '/g',
                            headers => { Host => 'short' });
my $short = job_of($body);

($st) = http_get($port, 'GET', "/jobs/$short", headers => { Host => 'short' });
is($st, 200, 'before the ttl: found');

sleep 1.5;

($st, $h, $body) = http_get($port, 'GET', '/g',
                            headers => { Host => 'short',
                                         'Last-Event-ID' => "$short:1" });
is($st, 404, 'after the ttl: 404 (job_not_found)');

# a full zone: the oldest finished jobs go, a running job is never cut
# silently

my @big;
for (1 .. 3) {
    ($st, $h, $body) = http_get($port, 'GET', '/big',
                                headers => { Host => 'tiny' });
    push @big, job_of($body);
    @ev = sse_events($body);
    is($ev[-1]{event}, 'complete', "big job $_ streams in full");
}

# jobs whose stored copies were cut keep running while the zone churns
my @kids;
for my $k (1 .. 4) {
    my $pid = fork;
    if ($pid == 0) {
        my (undef, undef, $b) = http_get($port, 'GET', '/big',
                                         headers => { Host => 'tiny' });
        my @e = sse_events($b);
        exit(@e && $e[-1]{event} eq 'complete' ? 0 : 1);
    }
    push @kids, $pid;
}

my $full = 0;
for (@kids) {
    waitpid($_, 0);
    $full++ if $? == 0;
}
is($full, 4, 'four big jobs at once over a full zone all complete');

like(error_log($root), qr/memory store is full/,
     'the error log says the zone is full');

($st) = http_get($port, 'GET', "/jobs/$big[0]", headers => { Host => 'tiny' });
is($st, 404, 'the oldest finished job made room');

($st, $h, $body) = http_get($port, 'GET', "/jobs/$big[-1]",
                            headers => { Host => 'tiny' });
$j = json_of($body);
ok($st == 404 || $j->{state} eq 'completed'
   || ($j->{error}{code} // '') eq 'store_full',
   'the newest is complete or says store_full');

stop_nginx($root);

unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();
