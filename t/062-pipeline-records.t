# A pipeline's job as the stores keep it: payload events (step_start,
# progress, step, check) whose JSON lies in the job's meta, and the
# pipeline's state.  Until pipelines run here, such jobs are planted in
# Redis as this module writes them (docs/jobs.md) and read back: resumed
# in the default, a template and the openai format, byte for byte and
# each event once; shown as JSON with their steps; followed while they
# grow; and refused when they do not hold together.
#
# One nginx instance (a master and one worker) and a private redis-server
# that this test starts.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events start_redis stop_redis);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;
plan skip_all => 'redis-server and redis-cli are needed'
    unless grep { -x "$_/redis-server" && -x "$_/redis-cli" }
                split /:/, $ENV{PATH};

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $rport = free_port();
my $redis_pid = start_redis($rport);

END { local $?; stop_redis($redis_pid) }

sub r {
    open my $fh, '-|', 'redis-cli', '-p', $rport, '-n', 4, '--raw', @_
        or die $!;
    my $out = do { local $/; <$fh> } // '';
    close $fh;
    $out =~ s/\n\z//;
    return $out;
}


# the payloads and the state, as a pipeline hands them up

my @pl = (
    '{"step":"outline","index":1,"total":2,"stage":"plan","message":"Outlining \"it\"","attempt":1,"time":1764672000000}',
    '{"progress":40,"stage":"plan","message":"half way","step":"outline","index":1,"total":2,"completed":0,"eta":3.5,"elapsed":1.25}',
    '{"step":"outline","index":1,"total":2,"attempt":1,"output":{"title":"Cats\nand dogs","parts":[1,2]},"preview":"Cats","duration":1.5,"usage":{"input_tokens":3,"output_tokens":2}}',
    '{"step":"outline","passed":false,"field":"parts","expected":3,"actual":2,"attempt":1,"next":"draft"}',
);

# keys in a fixed order: the outputs are compared as text
my $state = JSON::PP->new->canonical->encode({
    pipeline => 'article', inputs => { topic => 'cats' }, step => 1,
    stopped_at => 'draft',
    steps => [
        { name => 'outline', state => 'done', attempts => 1,
          output => { title => 'Cats', parts => [1, 2] },
          started => 1, finished => 2, duration => 1.5 },
        { name => 'draft', state => 'skipped', attempts => 0,
          output => undef },
    ],
});

my $n = 0;

# a job id of our own: its hash, text, meta, state and events as given
sub plant {
    my (%o) = @_;
    my $id = sprintf 'pipe%018d', ++$n;
    my $now = int(time * 1000);
    my $meta = $o{meta} // join '', @pl;

    my @off;
    my $at = 0;
    for (@pl) { push @off, $at; $at += length }

    my %h = (state => 'completed', created => $now, updated => $now,
             finished => $now, owner => '', background => 0, cancel => 0,
             watched => 0, finish => 'stop', in => 3, out => 2, code => '',
             message => '', nevents => 7, textlen => 5,
             metalen => length $meta, sv => 3,
             %{ $o{hash} || {} });

    r('HSET', "t062:{$id}:job", %h);
    r('SET', "t062:{$id}:text", $o{text} // 'hello');
    r('SET', "t062:{$id}:meta", $meta) if length $meta;
    r('SET', "t062:{$id}:pstate", $o{state} // $state)
        unless $o{no_state};

    my $events = $o{events}
                 || [['1-0', 0, 0, 0],
                     ['2-0', 4, $off[0], length $pl[0]],
                     ['3-0', 7, $off[1], length $pl[1]],
                     ['4-0', 1, 0, 5],
                     ['5-0', 5, $off[2], length $pl[2]],
                     ['6-0', 6, $off[3], length $pl[3]],
                     ['7-0', 2, 0, 0]];

    for my $e (@$events) {
        r('XADD', "t062:{$id}:events", $e->[0],
          t => $e->[1], o => $e->[2], l => $e->[3]);
    }

    return $id;
}

my $port = free_port();

my $ng = start_nginx('pipe_rec',
    "daemon on;\nmaster_process on;\nworker_processes 1;", <<"HTTP");
    llm_store redis://127.0.0.1:$rport/4 ttl=10m prefix=t062:;

    llm_format pipe {
        start      '{"t":"start"}';
        step_start event=step_start '{"step":\$llm_step,"i":\$llm_step_index,"of":\$llm_steps_total,"note":"Running \$llm_step: \$llm_message","attempt":\$llm_attempt}';
        progress   '{"p":\$llm_progress,"stage":\$llm_stage,"eta":\$llm_eta,"done":\$llm_completed,"missing":\$llm_output}';
        delta      '{"d":\$llm_delta}';
        step       '{"step":\$llm_step,"out":\$llm_output,"title":\${llm_output.title},"d":\$llm_duration,"pre":\$llm_preview,"x":\$llm_item,"it":\$llm_iteration,"its":\$llm_iterations}';
        check      '{"passed":\$llm_passed,"e":\$llm_event,"next":\${llm_event.next},"step":\$llm_step}';
        complete   '{"outputs":\$llm_outputs,"title":\${llm_outputs.outline.title},"stopped":\$llm_stopped_at,"steps":\$llm_steps,"p":\$llm_progress}';
        error      '{"e":\$llm_error_code}';
    }

    server {
        listen 127.0.0.1:$port;
        llm_retry 2s;

        location ~ "^/jobs/(?<job>[A-Za-z0-9_-]{22})\$" {
            llm_job \$job;
        }
        location ~ "^/tpl/(?<job>[A-Za-z0-9_-]{22})\$" {
            llm_job    \$job;
            llm_format pipe;
        }
        location ~ "^/oai/(?<job>[A-Za-z0-9_-]{22})\$" {
            llm_job    \$job;
            llm_format openai;
        }
    }
HTTP

my $sse = { Accept => 'text/event-stream' };

sub log_since {
    my ($from) = @_;
    return substr(error_log($ng), $from);
}


# 1. the default format: every event, byte for byte

my $id = plant();
my ($s, $h, $body) = http_get($port, 'GET', "/jobs/$id", headers => $sse);

my $want = "retry: 2000\n\n"
    . "id: $id:1\nevent: start\ndata: {\"job\":\"$id\"}\n\n"
    . "id: $id:2\nevent: step_start\ndata: $pl[0]\n\n"
    . "id: $id:3\nevent: progress\ndata: $pl[1]\n\n"
    . "id: $id:4\nevent: delta\ndata: {\"text\":\"hello\"}\n\n"
    . "id: $id:5\nevent: step\ndata: $pl[2]\n\n"
    . "id: $id:6\nevent: check\ndata: $pl[3]\n\n"
    . "id: $id:7\nevent: complete\ndata: {\"text\":\"hello\","
    . "\"finish_reason\":\"stop\",\"usage\":{\"input_tokens\":3,"
    . "\"output_tokens\":2,\"total_tokens\":5}}\n\n";

is($s, 200, 'a planted pipeline job is read');
is($body, $want, '  its payload events as they are, in order, with ids');

# a resume replays what follows, each event once

($s, $h, $body) = http_get($port, 'GET', "/jobs/$id",
                           headers => { %$sse, 'Last-Event-ID' => "$id:3" });

my $tail = $want;
$tail =~ s/^.*?(?=id: \Q$id\E:4\n)//s;
is($body, "retry: 2000\n\n$tail", 'a resume after a payload event: the rest once');

($s, $h, $body) = http_get($port, 'GET', "/jobs/$id",
                           headers => { %$sse, 'Last-Event-ID' => "$id:5" });
my @ev = sse_events($body);
is(join(',', map { $_->{event} } @ev), 'check,complete',
   'a resume after a step event');


# a stream trimmed (by an older version's MAXLEN, or by hand) that starts
# with a payload event: the gap is one delta with the text it covered, the
# payload events in it are lost

my $o2 = length($pl[0]) + length($pl[1]);
my $trim = plant(events => [['5-0', 5, $o2, length $pl[2]],
                            ['6-0', 1, 2, 3], ['7-0', 2, 0, 0]]);

($s, $h, $body) = http_get($port, 'GET', "/jobs/$trim", headers => $sse);

is($body, "retry: 2000\n\n"
    . "id: $trim:1\nevent: start\ndata: {\"job\":\"$trim\"}\n\n"
    . "id: $trim:4\nevent: delta\ndata: {\"text\":\"he\"}\n\n"
    . "id: $trim:5\nevent: step\ndata: $pl[2]\n\n"
    . "id: $trim:6\nevent: delta\ndata: {\"text\":\"llo\"}\n\n"
    . "id: $trim:7\nevent: complete\ndata: {\"text\":\"hello\","
    . "\"finish_reason\":\"stop\",\"usage\":{\"input_tokens\":3,"
    . "\"output_tokens\":2,\"total_tokens\":5}}\n\n",
   'a trimmed stream that starts with a payload event');


# 2. a template format: the kinds and their variables

($s, $h, $body) = http_get($port, 'GET', "/tpl/$id", headers => $sse);

my $outputs = '{"outline":{"parts":[1,2],"title":"Cats"}}';
my $steps = encode_json(decode_json($state)->{steps});

# JSON::PP's key order is not jansson's: compare the steps as data
my ($got_steps) = $body =~ /"steps":(\[.*\]),"p":null\}\n\n\z/;
is_deeply(decode_json($got_steps // 'null'), decode_json($steps),
          'a template: $llm_steps is the state\'s steps');
$body =~ s/"steps":\[.*\],"p":null\}\n\n\z/"steps":STEPS,"p":null}\n\n/;

is($body, "retry: 2000\n\n"
    . "id: $id:1\ndata: {\"t\":\"start\"}\n\n"
    . "id: $id:2\nevent: step_start\ndata: {\"step\":\"outline\",\"i\":1,"
    . "\"of\":2,\"note\":\"Running outline: Outlining \\\"it\\\"\","
    . "\"attempt\":1}\n\n"
    . "id: $id:3\ndata: {\"p\":40,\"stage\":\"plan\",\"eta\":3.5,"
    . "\"done\":0,\"missing\":null}\n\n"
    . "id: $id:4\ndata: {\"d\":\"hello\"}\n\n"
    . "id: $id:5\ndata: {\"step\":\"outline\",\"out\":{\"title\":"
    . "\"Cats\\nand dogs\",\"parts\":[1,2]},\"title\":\"Cats\\nand dogs\","
    . "\"d\":1.5,\"pre\":\"Cats\",\"x\":null,\"it\":null,\"its\":null}\n\n"
    . "id: $id:6\ndata: {\"passed\":false,\"e\":$pl[3],\"next\":\"draft\","
    . "\"step\":\"outline\"}\n\n"
    . "id: $id:7\ndata: {\"outputs\":$outputs,\"title\":\"Cats\","
    . "\"stopped\":\"draft\",\"steps\":STEPS,\"p\":null}\n\n",
   '  every kind and variable, escaped, one line each');

for my $line ($body =~ /^data: (.*)$/mg) {
    my $ok = eval { decode_json($line =~ s/STEPS/[]/r); 1 };
    ok($ok, "  JSON: $line") or last;
}


# 3. the openai format sends none of them; the ids keep their places

($s, $h, $body) = http_get($port, 'GET', "/oai/$id", headers => $sse);
my @ids = $body =~ /^id: \S+:(\d+)$/mg;
is(join(',', @ids), '1,4,7', 'openai: no payload events');
unlike($body, qr/outline/, '  nothing of them');


# 4. the job as JSON: its pipeline and steps

($s, $h, $body) = http_get($port, 'GET', "/jobs/$id",
                           headers => { Accept => 'application/json' });
my $j = eval { decode_json($body) } || {};

is($s, 200, 'the job as JSON');
is($j->{pipeline}, 'article', '  its pipeline');
is_deeply($j->{steps}, decode_json($state)->{steps}, '  its steps');
is($j->{text}, 'hello', '  its text');

my $plain = plant(meta => '', no_state => 1,
                  events => [['1-0', 0, 0, 0], ['2-0', 1, 0, 5],
                             ['3-0', 2, 0, 0]],
                  hash => { nevents => 3, sv => 0 });
($s, $h, $body) = http_get($port, 'GET', "/jobs/$plain",
                           headers => { Accept => 'application/json' });
$j = eval { decode_json($body) } || {};
ok(!exists $j->{pipeline} && !exists $j->{steps},
   'a job without a pipeline shows none');


# 5. a followed job: what it gains in Redis reaches the stream once (it
#    has more events than text: payload events are not deltas)

my $run = plant(hash => { state => 'running', finished => 0, nevents => 2,
                          sv => 1, textlen => 0 },
                text => '',
                meta => $pl[0],
                events => [['1-0', 0, 0, 0], ['2-0', 4, 0, length $pl[0]]]);

my $st = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
syswrite($st, "GET /tpl/$run HTTP/1.0\r\nHost: localhost\r\n"
              . "Accept: text/event-stream\r\n\r\n");

sub read_until {
    my ($re, $got) = @_;
    while ($$got !~ $re) {
        my $rin = '';
        vec($rin, fileno($st), 1) = 1;
        last unless select($rin, undef, undef, 10 * $slow);
        last unless sysread($st, my $buf, 65536);
        $$got .= $buf;
    }
}

my $got = '';
read_until(qr/event: step_start/, \$got);
like($got, qr/event: step_start/, 'a running pipeline job is followed');

my $o1 = length $pl[0];
r('APPEND', "t062:{$run}:meta", $pl[1]);
r('XADD', "t062:{$run}:events", '3-0', t => 7, o => $o1, l => length $pl[1]);
r('HSET', "t062:{$run}:job", updated => int(time * 1000));

read_until(qr/"p":40/, \$got);
like($got, qr/"p":40/, '  a progress event reaches it');

$o2 = $o1 + length $pl[1];
r('APPEND', "t062:{$run}:meta", $pl[2]);
r('XADD', "t062:{$run}:events", '4-0', t => 5, o => $o2, l => length $pl[2]);
r('XADD', "t062:{$run}:events", '5-0', t => 2, o => 0, l => 0);
r('SET', "t062:{$run}:pstate", $state);
r('HSET', "t062:{$run}:job", state => 'completed', sv => 2,
  updated => int(time * 1000), finished => int(time * 1000));

read_until(qr/\z(?!)/, \$got);   # to the end
close $st;

my (undef, $rest) = split /\r\n\r\n/, $got, 2;
@ids = ($rest // '') =~ /^id: \S+:(\d+)$/mg;
is(join(',', @ids), '1,2,3,4,5', '  each event once, in order');
like($rest, qr/"outputs":\Q$outputs\E/, '  the final event sees the new state');


# 6. records that do not hold together: an error, never the heap

my $l0 = length $pl[0];

my @bad = (
    ['a payload event beyond the meta',
     { events => [['1-0', 0, 0, 0], ['2-0', 4, 4000, 5], ['3-0', 2, 0, 0]] },
     qr/corrupt record in the store \(event outside the meta\)/],
    ['a payload length past the end of the meta',
     { events => [['1-0', 0, 0, 0], ['2-0', 5, 0, 65536], ['3-0', 2, 0, 0]] },
     qr/corrupt record in the store \(event outside the meta\)/],
    ['a payload offset and length that wrap',
     { events => [['1-0', 0, 0, 0], ['2-0', 6, 2, 4294967295],
                  ['3-0', 2, 0, 0]] },
     qr/corrupt record in the store \(event outside the meta\)/],
    ['payload events that go back in the meta',
     { events => [['1-0', 0, 0, 0], ['2-0', 4, 0, $l0], ['3-0', 4, 0, $l0],
                  ['4-0', 2, 0, 0]] },
     qr/corrupt record in the store \(event offset\)/],
    ['a payload that is not JSON',
     { meta => 'hello world',
       events => [['1-0', 0, 0, 0], ['2-0', 7, 0, 11], ['3-0', 2, 0, 0]] },
     qr/corrupt record in the store \(event payload\)/],
    ['a payload on two lines',
     { meta => "{\"a\":\n1}",
       events => [['1-0', 0, 0, 0], ['2-0', 7, 0, 8], ['3-0', 2, 0, 0]] },
     qr/corrupt record in the store \(event payload\)/],
    ['a state that is not JSON',
     { state => 'not json' },
     qr/corrupt record in the store \(pipeline state\)/],
    ['a state that is not an object',
     { state => '[1,2]' },
     qr/corrupt record in the store \(pipeline state\)/],
    ['a state without its version',
     { hash => { sv => 0 } }, qr/corrupt record \(pipeline state\)/],
    ['a version that is not a number',
     { hash => { sv => 'x' } }, qr/corrupt record \(sv\)/],
    ['an event type beyond the last',
     { events => [['1-0', 0, 0, 0], ['2-0', 10, 0, 5]] },
     qr/corrupt record \(event fields\)/],
);

for my $b (@bad) {
    my ($what, $rec, $logged) = @$b;
    my $from = length error_log($ng);
    my $bid = plant(%$rec);

    ($s, $h, $body) = http_get($port, 'GET', "/jobs/$bid", headers => $sse);

    is($s, 503, "$what: refused");
    like($body, qr/"code":"store_unavailable"/, '  with an error');
    unlike($body, qr/outline|hello/, '  and nothing of the job');

    my $l = log_since($from);
    like($l, $logged, '  logged');
    my @lines = $l =~ /corrupt record/g;
    is(scalar @lines, 1, '  once');
}


# 7. a followed job whose payloads go bad: its stream ends with
#    store_corrupt

$run = plant(hash => { state => 'running', finished => 0, nevents => 2,
                       sv => 1 },
             meta => $pl[0],
             events => [['1-0', 0, 0, 0], ['2-0', 4, 0, length $pl[0]]]);

$st = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die $!;
syswrite($st, "GET /jobs/$run HTTP/1.0\r\nHost: localhost\r\n"
              . "Accept: text/event-stream\r\n\r\n");

$got = '';
read_until(qr/event: step_start/, \$got);

my $from = length error_log($ng);

r('APPEND', "t062:{$run}:meta", '{"secret":1}');
r('XADD', "t062:{$run}:events", '3-0', t => 7, o => $o1 + 1, l => 11);
r('HSET', "t062:{$run}:job", updated => int(time * 1000));

read_until(qr/\z(?!)/, \$got);
close $st;

(undef, $rest) = split /\r\n\r\n/, $got, 2;
@ev = sse_events($rest // '');

is($ev[-1]{event}, 'error', 'a followed job whose meta goes bad ends');
like($ev[-1]{data}, qr/"code":"store_corrupt"/, '  with store_corrupt');
unlike($rest, qr/secret/, '  and nothing of what it did not trust');
my @lines = log_since($from) =~ /corrupt record/g;
is(scalar @lines, 1, '  logged once');

stop_nginx($ng);

unlike(error_log($ng), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();
