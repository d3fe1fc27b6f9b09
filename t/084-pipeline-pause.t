# Pause and resume of a running pipeline (POST ?action=pause|resume on
# its job location): the pause takes effect when the running step ends,
# the job then waits (no upstream call, "paused" in its JSON and a
# "paused" event in its log) until it is resumed ("resumed", the next
# step starts) or its llm_pause_timeout expires (cancelled with
# pause_timeout, to be continued by POST).  Asked on the worker running
# the job, on the other worker (memory store) and on another instance
# (Redis); a paused job outlives its client's disconnect policy; what
# cannot be paused.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events start_redis stop_redis wait_for
                       request_on);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $run = "p$$";
my $redis_pid;

END { local $?; stop_redis($redis_pid) }

my $up = "http://127.0.0.1:$mock/v1/chat/completions";

# "first" streams 20 words at 20 a second; the others answer at once
sub pipeline {
    my ($name, $tag) = @_;
    $tag //= $name;

    return <<"CONF";
    llm_pipeline $name {
        step first {
            pass   "$up?tokens=20&tps=20&ttft=0&tag=$tag-1$run";
            prompt "one";
            stream on;
        }
        step second {
            pass   "$up?tps=0&ttft=0&tag=$tag-2$run&reply=two";
            prompt "two after \$llm_step_first";
            stream on;
        }
        step third {
            pass   "$up?tps=0&ttft=0&tag=$tag-3$run&reply=three";
            prompt "three";
            stream on;
        }
    }
CONF
}

sub calls {
    my ($port, $tag) = @_;
    my (undef, undef, $b) = http_get($mock, 'GET', "/stats?tag=$tag$run");
    return (eval { decode_json($b) } || {})->{requests} // -1;
}

sub job_json {
    my ($port, $job) = @_;
    my (undef, undef, $b) = http_get($port, 'GET', "/jobs/$job",
                                     headers => { Accept => 'application/json' });
    return eval { decode_json($b) } || {};
}

sub state_is {
    my ($port, $job, $state) = @_;
    return wait_for(sub { (job_json($port, $job)->{state} // '') eq $state },
                    10);
}

sub started {
    my ($port, $uri) = @_;
    my ($status, $head, $body) = http_get($port, 'POST', $uri,
                                          headers => { Prefer => 'respond-async' });
    my $j = eval { decode_json($body) } || {};
    my ($w) = $head =~ /^X-Worker: (\d+)/mi;
    return ($status, $j->{job}, $w);
}

sub kinds {
    my (@ev) = @_;
    return join ',', map { $_->{event} } grep { $_->{event} ne 'delta' } @ev;
}

sub server {
    my ($port, $extra) = @_;

    return <<"HTTP";
    $extra
    server {
        listen 127.0.0.1:$port reuseport;
        add_header X-Worker \$pid always;

        location = /whoami {
            return 200 "\$pid\\n";
        }
        location = /generate {
            llm_model    m;
            llm_pipeline pa;
        }
        location = /short {
            llm_model         m;
            llm_pipeline      pb;
            llm_pause_timeout 1s;
            llm_on_disconnect continue 1s;
        }
        location = /single {
            llm_pass   "$up?tps=0&ttft=0&reply=x";
            llm_model  m;
            llm_prompt "hi";
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_model m;
            llm_job   \$id;
        }
        location ~ ^/shaped/(?<id>[\\w-]+)\$ {
            llm_format shaped;
            llm_job    \$id;
        }
    }
HTTP
}

my $main = "daemon on;\nmaster_process on;\nworker_processes 2;\n"
           . "worker_shutdown_timeout 1s;";
my $port = free_port();
my $shaped = <<'FMT';
    llm_format shaped {
        paused   event=hold '{"waiting":"$llm_step","at":$llm_step_index}';
        resumed  event=go '{"go":"$llm_step"}';
        complete event=end '{"ok":true}';
        error    event=end '{"ok":false}';
    }
FMT
my $root = start_nginx('pause', $main,
                       $shaped . pipeline('pa') . pipeline('pb')
                       . server($port, ''));


# paused from the other worker (through the store), resumed on its own

my ($status, $job, $owner) = started($port, '/generate');
is($status, 202, 'a pipeline starts in the background');
ok(wait_for(sub { calls($port, 'pa-1') == 1 }, 5), 'its first step runs');

my ($st, undef, $b, $w) = request_on($port, 'POST',
                                     "/jobs/$job?action=pause",
                                     sub { $_[0] != $owner });
my $j = eval { decode_json($b) } || {};
is($st, 202, 'a pause asked on the other worker is accepted');
ok($j->{pause}, 'and shown as asked for');
isnt($w, $owner, 'on the other worker');

ok(state_is($port, $job, 'paused'), 'the job pauses');
$j = job_json($port, $job);
is($j->{steps}[0]{state}, 'done', 'once the running step is done');
is(calls($port, 'pa-2'), 0, 'before the next step starts');
sleep 1.5 * $slow;
is(job_json($port, $job)->{state}, 'paused', 'it stays paused');
is(calls($port, 'pa-2'), 0, 'and calls nobody');

($st, undef, $b) = request_on($port, 'POST', "/jobs/$job?action=pause",
                              sub { $_[0] == $owner });
$j = eval { decode_json($b) } || {};
is($st, 200, 'a second pause: 200, it is paused');
is($j->{state}, 'paused', 'and says so');

($st) = request_on($port, 'POST', "/jobs/$job?action=resume",
                  sub { $_[0] == $owner });
is($st, 200, 'a resume on the worker running the job');
ok(state_is($port, $job, 'completed'), 'the job goes on to the end');
is(calls($port, 'pa-2') . calls($port, 'pa-3'), '11',
   'each remaining step called once');

my (undef, undef, $body) = http_get($port, 'GET', "/jobs/$job",
                                    headers => { Accept => 'text/event-stream' });
my @ev = sse_events($body);
is(kinds(@ev), 'start,step_start,progress,step,paused,resumed,step_start,'
               . 'progress,step,step_start,progress,step,complete',
   'its log: paused after the first step, resumed before the second');
my ($p) = grep { $_->{event} eq 'paused' } @ev;
my $pd = eval { decode_json($p->{data}) } || {};
is_deeply([ @$pd{qw(step index total completed)} ], ['second', 2, 3, 1],
          'the paused event names the step that waits');
like($ev[-1]{data}, qr/"text":"[^"]+two[^"]*three"/,
     'the final text has every step');
is(job_json($port, $job)->{pause}, undef, 'a finished job is not pausing');

(undef, undef, $body) = http_get($port, 'GET', "/shaped/$job",
                                 headers => { Accept => 'text/event-stream' });
my $hold = 'event: hold\ndata: \{"waiting":"second","at":2\}\n\n';
my $go = 'event: go\ndata: \{"go":"second"\}\n\n';
like($body, qr/$hold.*$go.*event: end/s,
     'a format shapes the paused and resumed events');


# a stream sees the pause and the resume, and stays open between them

my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
syswrite($s, "GET /generate HTTP/1.0\r\nHost: localhost\r\n\r\n");
my $got = '';
while ($got !~ /event: delta/) {
    last unless sysread($s, my $buf, 65536);
    $got .= $buf;
}
my ($sjob) = $got =~ /^id: ([\w-]+):/m;

($status) = http_get($port, 'POST', "/jobs/$sjob?action=pause");
ok($status == 202 || $status == 200, 'a streaming job is paused');
while ($got !~ /event: paused/) {
    last unless sysread($s, my $buf, 65536);
    $got .= $buf;
}
like($got, qr/event: paused/, 'the stream gets the paused event');

($status) = http_get($port, 'POST', "/jobs/$sjob?action=resume");
ok($status == 202 || $status == 200, 'and resumed');
while (sysread($s, my $buf, 65536)) {
    $got .= $buf;
}
close $s;
@ev = sse_events((split /\r\n\r\n/, $got, 2)[1] // '');
is(kinds(@ev), 'start,step_start,progress,step,paused,resumed,step_start,'
               . 'progress,step,step_start,progress,step,complete',
   'the same stream goes on to the end');


# paused too long: cancelled with pause_timeout, continued by POST; a
# paused job outlives its client (llm_on_disconnect continue 1s)

($status, undef, $body) = http_get($port, 'GET', '/short',
                                   until => qr/event: delta/);
($job) = $body =~ /^id: ([\w-]+):/m;
($status) = http_get($port, 'POST', "/jobs/$job?action=pause");
is($status, 202, 'a pause asked during the first step');

ok(state_is($port, $job, 'paused'), 'the job pauses with nobody watching');
ok(state_is($port, $job, 'cancelled'), 'and ends when the pause expires');
$j = job_json($port, $job);
is($j->{error}{code}, 'pause_timeout', 'with the code pause_timeout');
is($j->{steps}[0]{state}, 'done', 'keeping the finished step');

($status, undef, $body) = http_get($port, 'POST', "/jobs/$job");
@ev = sse_events($body);
is($ev[-1]{event}, 'complete', 'a POST continues it to the end');
is(calls($port, 'pb-1'), 1, 'without asking the finished step again');


# a client that reads the paused job and leaves does not stop the expiry

($status, $job) = started($port, '/short');
http_get($port, 'POST', "/jobs/$job?action=pause");
ok(state_is($port, $job, 'paused'), 'a background job pauses');
http_get($port, 'GET', "/jobs/$job", headers => { Accept => 'text/event-stream' },
         until => qr/event: paused/, timeout => 2);
ok(state_is($port, $job, 'cancelled'),
   'a reader came and went: the pause still expires');
is(job_json($port, $job)->{error}{code}, 'pause_timeout', 'pause_timeout');


# the client leaves, the pause is asked after: the job is not cancelled

($status, undef, $body) = http_get($port, 'GET', '/short',
                                   until => qr/event: delta/);
($job) = $body =~ /^id: ([\w-]+):/m;
($status) = http_get($port, 'POST', "/jobs/$job?action=pause");
ok(state_is($port, $job, 'paused'), 'a job whose client left pauses');
http_get($port, 'POST', "/jobs/$job?action=resume");
ok(state_is($port, $job, 'completed'), 'and completes once resumed');


# cancel while paused

($status, $job) = started($port, '/generate');
http_get($port, 'POST', "/jobs/$job?action=pause");
ok(state_is($port, $job, 'paused'), 'paused');
($status) = http_get($port, 'DELETE', "/jobs/$job");
ok(state_is($port, $job, 'cancelled'), 'a paused job is cancelled');


# cancelled in the middle of a step: the step is kept as interrupted

($status, $job) = started($port, '/generate');
ok(wait_for(sub { (job_json($port, $job)->{steps}[0]{state} // '')
                  eq 'running' }, 5), 'a step runs');
http_get($port, 'DELETE', "/jobs/$job");
ok(state_is($port, $job, 'cancelled'), 'the job is cancelled');
$j = job_json($port, $job);
is($j->{steps}[0]{state}, 'interrupted', 'its running step: interrupted');
is($j->{steps}[1]{state}, 'pending', 'the next one: pending');


# what cannot be paused

($status, undef, $body) = http_get($port, 'GET', '/single');
($job) = $body =~ /^id: ([\w-]+):/m;
($status, undef, $body) = http_get($port, 'POST', "/jobs/$job?action=pause");
is($status, 409, 'a finished job cannot be paused');
like($body, qr/"code":"job_not_pausable"/, 'job_not_pausable');

($status, undef, $body) = http_get($port, 'POST', "/jobs/$job?action=stop");
is($status, 400, 'an unknown action: 400');
like($body, qr/"code":"invalid_action"/, 'invalid_action');

($status) = http_get($port, 'POST', '/jobs/AAAAAAAAAAAAAAAAAAAAAA?action=pause');
is($status, 404, 'an unknown job: 404');

unlike(error_log($root), qr/\[(?:alert|crit|emerg)\]|signal \d+/,
       'no worker crashed');

stop_nginx($root);


# two instances sharing Redis: paused and resumed from the other one

SKIP: {
    my $rport = free_port();
    $redis_pid = eval { start_redis($rport) };
    skip 'redis-server cannot start', 8 unless $redis_pid;

    my $store = "llm_store redis://127.0.0.1:$rport ttl=10m prefix=t084:;";
    my ($pa, $pb) = (free_port(), free_port());
    my $one = "daemon on;\nmaster_process on;\nworker_processes 1;";
    my $conf = $shaped . pipeline('pa', 'ra') . pipeline('pb', 'rb');
    my $ra = start_nginx('pause_a', $one, $conf . server($pa, $store));
    my $rb = start_nginx('pause_b', $one, $conf . server($pb, $store));

    ($status, $job) = started($pa, '/generate');
    ok(wait_for(sub { (job_json($pb, $job)->{state} // '') eq 'running' },
                5), 'the other instance sees the job');

    ($status, undef, $body) = http_get($pb, 'POST', "/jobs/$job?action=pause");
    is($status, 202, 'a pause asked on the other instance');
    ok(state_is($pb, $job, 'paused'), 'pauses the job');
    is(calls($pa, 'ra-2'), 0, 'before its next step');

    ($status) = http_get($pb, 'POST', "/jobs/$job?action=resume");
    is($status, 202, 'a resume from there');
    ok(state_is($pb, $job, 'completed'), 'lets it complete');

    # paused and resumed on the instance running it: stays resumed

    ($status, $job) = started($pa, '/generate');
    http_get($pa, 'POST', "/jobs/$job?action=pause");
    http_get($pa, 'POST', "/jobs/$job?action=resume");
    ok(state_is($pb, $job, 'completed'),
       'a pause and a resume on the running instance: it completes');
    unlike(error_log($ra) . error_log($rb),
           qr/\[(?:alert|crit|emerg)\]|signal \d+/, 'no worker crashed');

    stop_nginx($ra);
    stop_nginx($rb);
}

done_testing();
