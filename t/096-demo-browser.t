# The demo page (examples/index.html) as `make demo` serves it
# (util/demo.sh, with the mock model server), in headless Chromium driven
# by puppeteer-core, as t/091 drives the learning-path app:
#
#   - one prompt read with fetch, its connection dropped by the page's
#     "Drop connection" button after the first delta, resumed with a
#     Last-Event-ID header;
#   - the pipeline read with EventSource, dropped in the middle of the
#     draft, resumed with ?last_event_id=; its steps, the review sending
#     the draft back, the progress bar at 100%;
#   - Cancel during the pipeline's first step: DELETE on the job.
#
# Each stream's events are compared with the job as nginx stored it (its
# JSON and its whole stream, read again from the job location): every
# event once, in order, no text lost or repeated.  The page after the
# pipeline is saved as a screenshot: $DEMO_SCREENSHOT (docs/demo.png is
# made so), else build/demo.png.
#
# Skips unless chromium (or $CHROMIUM), node and build/npm's
# puppeteer-core are installed (util/bootstrap.sh, util/test.sh).

use strict;
use warnings;
use Test::More;
use Cwd ();
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(http_get);
use LLM::Example qw(example_ports start_example wait_example events read_job);
use LLM::Browser qw(need_browser run_browser);

my $top = Cwd::abs_path("$FindBin::Bin/..");
my $shot = Cwd::abs_path($ENV{DEMO_SCREENSHOT} || "$top/build/demo.png");

plan skip_all => 'build/llm-mock is not built' unless -x "$top/build/llm-mock";
need_browser();

my $port = example_ports();

my $demo = start_example('demo', $port);
my $run = wait_example($demo);
unless ($run =~ /^demo: open /m) {
    diag($run);
    BAIL_OUT('util/demo.sh did not start');
}

my ($out, $got) = run_browser(<<'JS', args => [$port], env => { SHOT => $shot }, timeout => 120);
const port = +process.argv[2];

async function newPage(browser, out, name) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 900 });
  const log = out[name] = { errors: [], requests: [] };
  page.on('pageerror', (e) => log.errors.push(String(e)));
  page.on('response', (r) => {
    const q = r.request(), u = new URL(r.url());
    log.requests.push({ method: q.method(), path: u.pathname, query: u.search,
                        last_event_id: q.headers()['last-event-id'] || null,
                        status: r.status() });
  });
  await page.goto(`http://127.0.0.1:${port}/`);
  return page;
}

async function generate(page, mode, transport) {
  await page.click(`input[name=mode][value=${mode}]`);
  await page.select('#transport', transport);
  await page.click('#start');
}

const until = (page, fn, arg) => page.waitForFunction(fn, { timeout: 20000, polling: 20 }, arg);

async function over(page, log) {
  await until(page, () => !/^(streaming|reconnecting)$/.test(window.demo.state));
  Object.assign(log, await page.evaluate(() => ({
    demo: window.demo,
    stats: Object.fromEntries(['state', 'job', 'ttft', 'tps', 'duration', 'counts']
      .map((id) => [id, document.getElementById(id).textContent])),
    bar: document.getElementById('bar').style.width,
    steps: [...document.querySelectorAll('#steps li')]
      .map((li) => li.className + ' ' + li.firstChild.textContent),
    blocks: [...document.querySelectorAll('#out .block')]
      .map((b) => b.className + ' ' + (b.querySelector('h3') || {}).textContent),
  })));
}

(async () => {
  const out = {};
  const browser = await launch();
  try {
    /* 1. one prompt, fetch, dropped after the first delta */
    let page = await newPage(browser, out, 'fetch');
    await generate(page, 'generate', 'fetch');
    await until(page, () => window.demo.text.length > 0);
    await page.click('#drop');
    await over(page, out.fetch);
    await page.close();

    /* 2. the pipeline, EventSource, dropped in the draft */
    page = await newPage(browser, out, 'es');
    await generate(page, 'pipeline', 'eventsource');
    await until(page, () => window.demo.text.length > 0);
    await page.click('#drop');
    await over(page, out.es);
    /* the bar's width has a transition: at its end */
    await until(page, () => document.getElementById('bar').offsetWidth
                            === document.getElementById('bar').parentNode.clientWidth);
    await page.screenshot({ path: process.env.SHOT, fullPage: true });
    await page.close();

    /* 3. Cancel as the outline starts */
    page = await newPage(browser, out, 'cancel');
    await generate(page, 'pipeline', 'fetch');
    await until(page, () => window.demo.events.some((e) => e.type === 'step_start'));
    await page.click('#cancel');
    await over(page, out.cancel);
    await page.close();
  } catch (e) {
    out.failure = String(e.stack || e);
  }
  await browser.close();
  console.log(JSON.stringify(out));
})();
JS
ok($out && !$out->{failure}, 'the browser ran the three scenarios') or diag($got);
$out ||= {};

# the page's events against the job's: its JSON, and its whole stream
# read again from the job location (deltas may be merged there)
sub same_as_job {
    my ($name, $s) = @_;
    my $d = $s->{demo} || {};
    my $job = $d->{job} // '';
    my $j = read_job($port, "/jobs/$job");
    my (undef, undef, $body) = http_get($port, 'GET', "/jobs/$job",
                                        headers => { Accept => 'text/event-stream' });
    my @all = events($body);
    my @seen = @{ $d->{events} || [] };

    my @seq = map { /:(\d+)$/ ? $1 : -1 } map { $_->{id} } @seen;
    is_deeply(\@seq, [sort { $a <=> $b } @seq], "$name: the ids only increase");
    my %n;
    is_deeply([grep { $n{$_}++ } @seq], [], "$name: no id twice");
    is($seq[-1], $j->{events}, "$name: up to the job's last event ($j->{events})");

    is_deeply([map { "$_->{id} $_->{type}" } grep { $_->{type} ne 'delta' } @seen],
              [map { "$_->{id} $_->{event}" } grep { $_->{event} ne 'delta' } @all],
              "$name: every event but the deltas, as the job has them");
    is($d->{text}, $j->{text}, "$name: the deltas make the job's text");
    is($d->{text}, join('', map { $_->{data}{text} } grep { $_->{event} eq 'delta' } @all),
       "$name: which the job's stream has too");
    ok(length $d->{text}, "$name: a text of " . length($d->{text}) . ' bytes');
    is_deeply($s->{errors}, [], "$name: no script errors");
    return ($d, $j);
}

# --- 1. fetch: the resume after a drop sends Last-Event-ID

my $f = $out->{fetch} || {};
my ($d, $j) = same_as_job('fetch', $f);
is($j->{state}, 'completed', 'fetch: the job completed');
is($d->{state}, 'completed', 'fetch: so says the page');
is(scalar @{ $d->{resumes} || [] }, 1, 'fetch: the page resumed once');
my @gen = grep { $_->{path} eq '/generate' } @{ $f->{requests} || [] };
is_deeply([map { "$_->{method} $_->{status} " . ($_->{last_event_id} // '-') } @gen],
          ['POST 200 -', "GET 200 $d->{resumes}[0]"],
          'fetch: a POST, then a GET with Last-Event-ID: the last event before the drop');
like($f->{stats}{ttft} // '', qr/^\d+\.\d\d s$/, "fetch: time to first token shown ($f->{stats}{ttft})");
like($f->{stats}{tps} // '', qr/^\d+\.\d$/, "fetch: tokens per second shown ($f->{stats}{tps})");
is($f->{stats}{job}, $d->{job}, 'fetch: the job id shown');
is($f->{bar}, '100%', 'fetch: the bar at 100%');

# --- 2. EventSource: the pipeline, the resume with ?last_event_id=

my $e = $out->{es} || {};
($d, $j) = same_as_job('EventSource', $e);
is($j->{state}, 'completed', 'EventSource: the pipeline completed');
is(scalar @{ $d->{resumes} || [] }, 1, 'EventSource: the page resumed once');
my @pipe = grep { $_->{path} eq '/pipeline' } @{ $e->{requests} || [] };
is_deeply([map { "$_->{method} $_->{status} $_->{query}" } @pipe],
          ['GET 200 ?topic=a%20lighthouse%20keeper',
           "GET 200 ?last_event_id=" . ($d->{resumes}[0] // '') =~ s/:/%3A/r],
          'EventSource: the stream, then its resume after the last event before the drop');
is_deeply($e->{steps}, ['done outline', 'done draft', 'done review'],
          'EventSource: the three steps, done');
is_deeply($e->{blocks}, ['block sent-back draft', 'block draft - attempt 2'],
          'EventSource: the first draft sent back by the review, the second kept');
is($e->{bar}, '100%', 'EventSource: the bar at 100%');
like($e->{stats}{tps} // '', qr/^\d+\.\d$/, "EventSource: tokens per second shown ($e->{stats}{tps})");
ok(-s $shot, "the screenshot: $shot");

# --- 3. Cancel

my $c = $out->{cancel} || {};
my $cd = $c->{demo} || {};
my ($del) = grep { $_->{method} eq 'DELETE' } @{ $c->{requests} || [] };
like(($del->{path} // '') . ' ' . ($del->{status} // ''), qr{^/jobs/\Q$cd->{job}\E 20[02]$},
     'Cancel: DELETE on the job, 200 (or 202 from the other worker)');
is($cd->{state}, 'cancelled', 'Cancel: the page says cancelled');
is($cd->{events}[-1]{type}, 'error', 'Cancel: after the final error event');
is(read_job($port, "/jobs/$cd->{job}")->{state}, 'cancelled', 'Cancel: the job is cancelled');
isnt($c->{bar}, '100%', 'Cancel: the bar stopped short');
is_deeply($c->{errors}, [], 'Cancel: no script errors');

done_testing();
