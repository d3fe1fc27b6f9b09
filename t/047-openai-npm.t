# The official OpenAI client from npm ("openai") against a location with
# `llm_format openai`: a stream to the end with usage, a blocking
# completion, an upstream failure raised as an APIError (streaming and
# not), a refusal before the stream, and an abort that cancels upstream.

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};
my $modules = "$FindBin::Bin/../build/npm/node_modules";

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;
plan skip_all => 'node or the npm openai package is missing'
    unless -d "$modules/openai" && `node --version 2>/dev/null`;

my $port = free_port();
my $mockurl = "http://127.0.0.1:$mock/v1/chat/completions";
my $root = start_nginx('openai', "daemon on;\nmaster_process off;", <<"HTTP");
    server {
        listen 127.0.0.1:$port;

        location = /ok/v1/chat/completions {
            llm_pass   $mockurl?mode=echo&tps=100;
            llm_system "rules";
            llm_model  served;
            llm_format openai;
        }

        location = /anthropic/v1/chat/completions {
            llm_pass     http://127.0.0.1:$mock/v1/messages?tokens=5&tps=0;
            llm_provider anthropic;
            llm_model    claude;
            llm_format   openai;
        }

        location = /failing/v1/chat/completions {
            llm_pass   $mockurl?mode=status&status=429;
            llm_model  m;
            llm_format openai;
        }

        location = /slow/v1/chat/completions {
            llm_pass   $mockurl?tokens=500&tps=20&ttft=0&tag=oa-abort;
            llm_model  m;
            llm_format openai;
            llm_on_disconnect cancel;
        }
    }
HTTP

my $js = <<'JS';
const OpenAI = require('openai');
const base = process.argv[2];
const msgs = [{ role: 'user', content: 'hello "there"' }];
const client = p => new OpenAI({ baseURL: base + p + '/v1', apiKey: 'k',
                                 maxRetries: 0 });
(async () => {
  const out = {};

  const s = await client('/ok').chat.completions.create({
    model: 'asked', messages: msgs, stream: true,
    stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null, model = null, ids = new Set();
  for await (const c of s) {
    ids.add(c.id); model = c.model;
    if (c.choices.length) {
      text += c.choices[0].delta.content || '';
      finish = c.choices[0].finish_reason || finish;
    }
    if (c.usage) usage = c.usage;
  }
  out.stream = { text, finish, usage: !!(usage && usage.total_tokens),
                 model, ids: ids.size };

  const b = await client('/ok').chat.completions.create({
    model: 'asked', messages: msgs });
  out.blocking = { text: b.choices[0].message.content,
                   finish: b.choices[0].finish_reason,
                   object: b.object, usage: !!b.usage.total_tokens };

  const a = await client('/anthropic').chat.completions.create({
    model: 'x', messages: msgs, stream: true });
  let at = '', af = null;
  for await (const c of a) {
    if (c.choices.length) {
      at += c.choices[0].delta.content || '';
      af = c.choices[0].finish_reason || af;
    }
  }
  out.anthropic = { length: at.length, finish: af };

  try {
    const e = await client('/failing').chat.completions.create({
      model: 'x', messages: msgs, stream: true });
    for await (const c of e) { }
    out.stream_error = 'none';
  } catch (e) {
    out.stream_error = { name: e.constructor.name, message: e.message };
  }

  try {
    await client('/failing').chat.completions.create({
      model: 'x', messages: msgs });
    out.blocking_error = 'none';
  } catch (e) {
    out.blocking_error = { name: e.constructor.name, status: e.status };
  }

  try {
    await client('/ok').chat.completions.create({ model: 'x', messages: [] });
    out.refusal = 'none';
  } catch (e) {
    out.refusal = { name: e.constructor.name, status: e.status,
                    message: e.message };
  }

  const ac = new AbortController();
  let n = 0;
  try {
    const s2 = await client('/slow').chat.completions.create({
      model: 'x', messages: msgs, stream: true }, { signal: ac.signal });
    for await (const c of s2) { if (++n === 3) ac.abort(); }
    out.abort = { quiet: true, chunks: n };
  } catch (e) {
    out.abort = { name: e.constructor.name, chunks: n };
  }

  console.log(JSON.stringify(out));
})().catch(e => console.log(JSON.stringify({ fatal: String(e) })));
JS

open my $f, '>', "$root/client.js" or die $!;
print $f $js;
close $f;

my $out = `NODE_PATH=$modules timeout 30 node $root/client.js 'http://127.0.0.1:$port'`;
my ($line) = $out =~ /^(\{.*\})$/m;
my $r = eval { JSON::PP::decode_json($line // '') } || {};

diag($out) if $r->{fatal} || !$line;

is($r->{stream}{text}, 'rules|hello "there"',
   'a stream: the deltas make the text (system prompt, then the messages)');
is($r->{stream}{finish}, 'stop', 'its last chunk has the finish reason');
ok($r->{stream}{usage}, 'the usage chunk comes when asked for');
is($r->{stream}{model}, 'served', "the location's model is reported");
is($r->{stream}{ids}, 1, 'every chunk has the same completion id');

is($r->{blocking}{object}, 'chat.completion', 'no "stream": a completion');
is($r->{blocking}{text}, 'rules|hello "there"', 'with the whole text');
is($r->{blocking}{finish}, 'stop', 'and the finish reason');
ok($r->{blocking}{usage}, 'and usage');

ok($r->{anthropic}{length} > 0, 'an Anthropic upstream streams as OpenAI');
is($r->{anthropic}{finish}, 'stop', 'end_turn becomes stop');

is(ref $r->{stream_error} && $r->{stream_error}{name}, 'APIError',
   'an upstream failure mid-stream is raised as an APIError')
    or diag(explain($r->{stream_error}));
like(ref $r->{stream_error} ? $r->{stream_error}{message} : '',
     qr/429|upstream/, 'with the upstream error');

is(ref $r->{blocking_error} && $r->{blocking_error}{status}, 502,
   'a failed blocking completion is a 502 APIError')
    or diag(explain($r->{blocking_error}));

is(ref $r->{refusal} && $r->{refusal}{status}, 400,
   'a bad request is a 400 with an OpenAI error object')
    or diag(explain($r->{refusal}));
like(ref $r->{refusal} ? $r->{refusal}{message} : '', qr/messages/,
     'whose message the client reports');

# the client library ends the iteration quietly (or raises its abort error)
ok(ref $r->{abort} && ($r->{abort}{quiet}
                       || ($r->{abort}{name} // '') eq 'APIUserAbortError'),
   'an abort ends the stream on the client')
    or diag(explain($r->{abort}));
is(ref $r->{abort} && $r->{abort}{chunks}, 3, 'with no chunk after it');

# the mock saw the upstream request end early: cancelled, not finished
my $stats = '';
for (1 .. 50) {
    $stats = `curl -s 'http://127.0.0.1:$mock/stats?tag=oa-abort'`;
    last if $stats =~ /"streams_aborted":\s*1/;
    select(undef, undef, undef, 0.1);
}
like($stats, qr/"streams_aborted":\s*1/,
     'and the upstream request is cancelled');

stop_nginx($root);
unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();

use JSON::PP ();
