# CORS from a real browser origin (docs/cors.md): headless Chromium loads a
# page from one origin (a small node server) and calls nginx on another
# port, through locations that include examples/cors.conf:
#
#   - fetch POST with a JSON body (a preflight first), streamed to the end;
#   - a resume with a Last-Event-ID header (a preflight too);
#   - EventSource;
#   - DELETE on the job location (a preflight), which cancels the stream;
#
# and, so that the test can fail, the same calls blocked by the browser:
# to locations without the file (the preflight gets 405, EventSource gets
# no Access-Control-Allow-Origin), and from an origin the map does not
# list.  nginx's access log shows the preflights and that no blocked POST
# or DELETE was sent.  docs/cors.md shows examples/cors.conf as it is.
#
# Skips unless chromium (or $CHROMIUM), node and build/npm's
# puppeteer-core are installed.

use strict;
use warnings;
use Test::More;
use Cwd ();
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port);
use LLM::Example qw(slurp read_job);
use LLM::Browser qw(need_browser run_browser);

my $top = Cwd::abs_path("$FindBin::Bin/..");
my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is unset (util/test.sh starts the mock)' unless $mock;
need_browser();

my $cors = slurp("$top/examples/cors.conf");
my ($body) = $cors =~ /^(add_header.*)\z/ms;
ok($body && index(slurp("$top/docs/cors.md"), $body) >= 0,
   'docs/cors.md shows examples/cors.conf as it is');

my ($api, $page, $other) = (free_port(), free_port(), free_port());
my $up = "http://127.0.0.1:$mock/v1/chat/completions";

my $root = start_nginx('cors', '', <<"HTTP");
    log_format cors '\$request_method \$uri \$status \$http_origin';

    map \$http_origin \$cors_origin {
        default                    "";
        "http://127.0.0.1:$page"   \$http_origin;
    }

    server {
        listen 127.0.0.1:$api;
        access_log logs/cors.log cors;

        location = /generate {
            include    $top/examples/cors.conf;
            llm_pass   $up;
            llm_model  mock-model;
            llm_prompt "Write a story about \$llm_input_theme";
        }

        location ~ "^/jobs/(?<job>[A-Za-z0-9_-]{22})\$" {
            include    $top/examples/cors.conf;
            llm_job    \$job;
        }

        # the same without CORS
        location = /plain/generate {
            llm_pass   $up;
            llm_model  mock-model;
            llm_prompt "Write a story about \$llm_input_theme";
        }

        location ~ "^/plain/jobs/(?<job>[A-Za-z0-9_-]{22})\$" {
            llm_job    \$job;
        }
    }
HTTP

END { stop_nginx($root) if $root }

my ($out, $got) = run_browser(<<'JS', args => [$api, $page, $other], timeout => 120);
const http = require('http');
const [api, page, other] = process.argv.slice(2).map(Number);
const B = `http://127.0.0.1:${api}`;

/* the front-end's origin: an empty page */
const serve = (port) => new Promise((ok) => http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/html' });
  res.end('<!doctype html><title>front-end</title>');
}).listen(port, '127.0.0.1', ok));

/* run in the page: each call's outcome, or the error the browser gave */
function calls(B) {
  const events = (text) => text.split('\n\n').map((f) => /^event: (.*)$/m.exec(f))
                               .filter(Boolean).map((m) => m[1]);
  const ids = (text) => [...text.matchAll(/^id: (.*)$/mg)].map((m) => m[1]);
  const caught = (p) => p.catch((e) => ({ blocked: e.name + ': ' + e.message }));
  const post = (path) => caught(fetch(B + path, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ theme: 'a lighthouse' }) }).then(async (r) => {
      const text = await r.text();
      return { status: r.status, events: events(text), ids: ids(text) };
    }));
  const es = (path) => new Promise((ok) => {
    const s = new EventSource(B + path + '?theme=a+lighthouse');
    const got = [];
    for (const t of ['start', 'delta', 'complete', 'error']) {
      s.addEventListener(t, (m) => {
        if (m.data === undefined) {      /* the connection's error, not an event */
          s.close();
          return ok({ events: got, blocked: 'EventSource error' });
        }
        if (got[got.length - 1] !== t) got.push(t);
        if (t === 'complete' || t === 'error') { s.close(); ok({ events: got }); }
      });
    }
  });
  /* a stream read until its start event, then DELETE through jobs */
  const cancel = (jobs) => caught((async () => {
    const r = await fetch(B + '/generate', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ theme: 'a lighthouse' }) });
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let text = '', job = null, del = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
      const m = !job && /"job":"([\w-]{22})"/.exec(text);
      if (m) {
        job = m[1];
        del = await caught(fetch(B + jobs + job, { method: 'DELETE' })
          .then(async (d) => ({ status: d.status, state: (await d.json()).state })));
      }
    }
    return { job, del, events: events(text) };
  })());
  return { post, es, cancel, caught, events, ids };
}

(async () => {
  await serve(page);
  await serve(other);
  const out = {};
  const browser = await launch();
  try {
    const tab = await browser.newPage();
    await tab.goto(`http://127.0.0.1:${page}/`);
    const run = (body) => tab.evaluate(`(async () => {
      const { post, es, cancel, caught, events, ids } = (${calls})('${B}');
      return ${body};
    })()`);

    out.post = await run(`await post('/generate')`);
    const after = out.post.ids && out.post.ids[1];
    out.resume = await run(`await caught(fetch('${B}/generate', { headers: { 'Last-Event-ID': '${after}' } })
      .then(async (r) => { const t = await r.text(); return { status: r.status, events: events(t), ids: ids(t) }; }))`);
    out.es = await run(`await es('/generate')`);
    out.cancel = await run(`await cancel('/jobs/')`);
    out.job = await run(`await caught(fetch('${B}/jobs/${out.cancel.job}').then((r) => r.json()))`);

    out.plain_post = await run(`await post('/plain/generate')`);
    out.plain_es = await run(`await es('/plain/generate')`);
    out.plain_delete = await run(`await cancel('/plain/jobs/')`);

    await tab.goto(`http://127.0.0.1:${other}/`);
    out.other_post = await run(`await post('/generate')`);
    out.other_es = await run(`await es('/generate')`);
  } catch (e) {
    out.failure = String(e.stack || e);
  }
  await browser.close();
  console.log(JSON.stringify(out));
  process.exit(0);
})();
JS
ok($out && !$out->{failure}, 'the browser made its calls') or diag($got);
$out ||= {};

my $A = "http://127.0.0.1:$page";
my $C = "http://127.0.0.1:$other";
my $log = slurp("$root/logs/cors.log");
sub logged { my ($re) = @_; scalar grep { /$re/ } split /\n/, $log }

# --- allowed

my $p = $out->{post} || {};
is($p->{status}, 200, 'fetch POST JSON from another origin: 200');
is_deeply([@{ $p->{events} || [] }[0, -1]], ['start', 'complete'], 'read to the end');
ok(logged(qr{^OPTIONS /generate 204 \Q$A\E$}), 'after a preflight (OPTIONS 204)');
ok(logged(qr{^POST /generate 200 \Q$A\E$}), 'then the POST');

my $r = $out->{resume} || {};
is($r->{status}, 200, 'a resume with a Last-Event-ID header: 200');
my ($pjob) = ($p->{ids}[0] // '') =~ /^(.+):1$/;
my ($rjob, $first) = ($r->{ids}[0] // '') =~ /^(.+):(\d+)$/;
is($rjob, $pjob, 'of the same job');
cmp_ok($first // 0, '>', 2, "from after the event it names, $p->{ids}[1]");
is($r->{events}[-1], 'complete', 'to the end');

is_deeply($out->{es}{events}, ['start', 'delta', 'complete'], 'EventSource: start, deltas, complete');
ok(!$out->{es}{blocked}, 'not blocked');

my $c = $out->{cancel} || {};
like($c->{del}{status} // '', qr/^20[02]$/, "DELETE from another origin: $c->{del}{status}");
is($c->{events}[-1], 'error', 'the stream ends with its error event');
is(read_job($api, "/jobs/$c->{job}")->{state}, 'cancelled', 'the job is cancelled');
ok(logged(qr{^OPTIONS /jobs/\Q$c->{job}\E 204 \Q$A\E$}), 'after a preflight');
is($out->{job}{state}, 'cancelled', 'the page reads the job as JSON');

# --- blocked: no CORS in the location

like($out->{plain_post}{blocked} // '', qr/^TypeError/, "no CORS: fetch POST blocked ($out->{plain_post}{blocked})");
ok(logged(qr{^OPTIONS /plain/generate 405 }), 'its preflight got 405');
ok(!logged(qr{^POST /plain/}), 'and the POST was never sent');
is($out->{plain_es}{blocked}, 'EventSource error', 'no CORS: EventSource fails');
is_deeply($out->{plain_es}{events}, [], 'with no event read');

my $d = $out->{plain_delete} || {};
like($d->{del}{blocked} // '', qr/^TypeError/, 'no CORS: DELETE blocked');
ok(!logged(qr{^DELETE /plain/}), 'never sent');
is($d->{events}[-1], 'complete', 'the stream went on to complete');

# --- blocked: an origin the map does not list

like($out->{other_post}{blocked} // '', qr/^TypeError/, 'another origin: fetch POST blocked');
ok(logged(qr{^OPTIONS /generate 204 \Q$C\E$}), 'its preflight got no Allow-Origin');
ok(!logged(qr{^POST /generate \d+ \Q$C\E$}), 'the POST was never sent');
is($out->{other_es}{blocked}, 'EventSource error', 'another origin: EventSource fails');

done_testing();
