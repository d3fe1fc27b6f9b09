# examples/learning-path/ in headless Chromium (Debian's chromium, driven
# by the npm package puppeteer-core): its index.html, the app's own fetch
# reader loop and progress modal, against the example as util/example.sh
# runs it.  The progress bar reaches 100% and the page follows
# redirect_url to /result, which shows the path; a network drop in the
# middle (a proxy between the browser and nginx cuts the connection as
# the 60% event comes) is recovered without losing or repeating an
# event; Cancel hides the modal and cancels the job; with streaming
# unchecked the regular POST leads to the same result page.
#
# Skips unless chromium (or $CHROMIUM), node and build/npm's
# puppeteer-core are installed:
#   apt-get install -y chromium
#   npm install --prefix build/npm puppeteer-core@24

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep time);
use Cwd ();
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(http_get);
use LLM::Example qw(example_ports start_example wait_example);
use LLM::Browser qw(which need_browser run_browser);

my $top = Cwd::abs_path("$FindBin::Bin/..");

plan skip_all => 'build/llm-mock is not built' unless -x "$top/build/llm-mock";
plan skip_all => 'redis-server is not installed' unless which('redis-server');
need_browser();

my $port = example_ports();

# --- util/example.sh learning-path, until the end of the test

my $ex = start_example('learning-path', $port);
my $run = wait_example($ex);
unless ($run =~ /serving on/) {
    diag($run);
    BAIL_OUT('util/example.sh learning-path did not start');
}

# --- the browser, through a proxy that drops the connection once

my $t1 = time;
my ($out, $got) = run_browser(<<'JS', args => [$port]);
const net = require('net');
const target = +process.argv[2];

/* a network between the page and nginx that fails once: the chunk that
   carries the 60% event never arrives, the connection is gone */
let cut = 0;
const proxy = net.createServer((client) => {
  const up = net.connect(target, '127.0.0.1');
  client.on('data', (d) => up.write(d));
  up.on('data', (d) => {
    if (!cut && /"progress":60/.test(d.toString())) {
      cut = 1;
      client.destroy();
      up.destroy();
      return;
    }
    client.write(d);
  });
  client.on('error', () => up.destroy());
  up.on('error', () => client.destroy());
  client.on('end', () => up.end());
  up.on('end', () => client.end());
});

async function newPage(browser, out, name) {
  const page = await browser.newPage();
  const log = out[name] = { console: [], errors: [], requests: [] };
  page.on('console', (m) => log.console.push(m.text()));
  page.on('pageerror', (e) => log.errors.push(String(e)));
  page.on('response', (r) => log.requests.push(
    r.request().method() + ' ' + new URL(r.url()).pathname + ' ' + r.status()));
  /* the bar's width, each time it changes */
  await page.evaluateOnNewDocument(() => {
    document.addEventListener('DOMContentLoaded', () => {
      const bar = document.getElementById('progress-bar');
      new MutationObserver(() => console.log('bar ' + bar.style.width))
        .observe(bar, { attributes: true, attributeFilter: ['style'] });
    });
  });
  return page;
}

async function result(page, log) {
  await page.waitForFunction(() => location.pathname === '/result'
      && document.querySelectorAll('#result li').length > 0,
    { timeout: 10000, polling: 50 });
  log.title = await page.$eval('#result-title', (e) => e.textContent);
  log.items = await page.$$eval('#result li', (l) => l.length);
}

proxy.listen(0, '127.0.0.1', async () => {
  const via = proxy.address().port;
  const out = {};
  const browser = await launch();
  try {
    /* 1. generate, with a drop in the middle */
    let page = await newPage(browser, out, 'stream');
    await page.goto(`http://127.0.0.1:${via}/`);
    await page.click('#generate');
    await result(page, out.stream);
    out.stream.cut = cut;
    await page.close();

    /* 2. Cancel after the 30% event */
    page = await newPage(browser, out, 'cancel');
    await page.goto(`http://127.0.0.1:${target}/`);
    await page.click('#generate');
    await page.waitForFunction(() => document.getElementById('progress-bar').style.width === '30%',
                               { timeout: 5000, polling: 20 });
    await new Promise((r) => setTimeout(r, 300));
    const deleted = page.waitForResponse((r) => r.request().method() === 'DELETE',
                                         { timeout: 5000 });
    await page.click('#cancel-generation');
    await deleted;
    out.cancel.hidden = await page.$eval('#progress-modal', (e) => e.classList.contains('hidden'));
    out.cancel.usable = await page.$eval('#generate', (e) => !e.disabled);
    await page.close();

    /* 3. "Enable real-time progress updates" unchecked: the regular POST */
    page = await newPage(browser, out, 'regular');
    await page.goto(`http://127.0.0.1:${target}/`);
    await page.click('#use-streaming');
    await page.click('#generate');
    await result(page, out.regular);
    await page.close();
  } catch (e) {
    out.failure = String(e);
  }
  await browser.close();
  proxy.close();
  console.log(JSON.stringify(out));
  process.exit(0);
});
JS
ok($out && !$out->{failure}, sprintf 'the browser ran the three scenarios (%.1f s)', time - $t1)
    or diag($got);
$out ||= {};

my $s = $out->{stream} || {};
my @msgs = map { /^SSE message: (.*)$/ ? decode_json($1) : () } @{ $s->{console} || [] };

is_deeply(\@msgs, [
    { progress => 10, message => 'Analyzing your topic and requirements...' },
    { progress => 30, message => 'Building curriculum structure with AI...' },
    { progress => 60, message => 'Finding the best learning resources...' },
    { progress => 80, message => 'Adding career insights and job market data...' },
    { progress => 100, done => JSON::PP::true, redirect_url => '/result', message => 'Complete!' },
], 'the page handled 10, 30, 60, 80, 100: every event once, in order')
    or diag(explain($s->{console}));

is($s->{cut}, 1, 'the connection was dropped as the 60% event came');
my @again = grep { /^SSE reconnect after / } @{ $s->{console} || [] };
is(scalar @again, 1, 'the page reconnected once');
like($again[0] // '', qr/^SSE reconnect after [A-Za-z0-9_-]{22}:3$/,
     'with Last-Event-ID: the 30% event (JOB:3)');
is_deeply([grep { m{^POST /generate-stream} } @{ $s->{requests} || [] }],
          ['POST /generate-stream 200', 'POST /generate-stream 200'],
          'two POSTs: the generation, the resume');
my @bar = grep { /^bar / } @{ $s->{console} || [] };
is($bar[-1], 'bar 100%', 'the progress bar reached 100%');
is($s->{title}, 'Python for Data Science in 8 Weeks', 'then /result shows the path');
is($s->{items}, 8, 'its four milestones and four resources');
is_deeply($s->{errors}, [], 'no script errors');

my $c = $out->{cancel} || {};
my ($del) = grep { /^DELETE / } @{ $c->{requests} || [] };
like($del // '', qr{^DELETE /jobs/[A-Za-z0-9_-]{22} 20[02]$}, "Cancel sent $del");
ok($c->{hidden}, 'the modal is hidden');
ok($c->{usable}, 'the form is usable again');
my ($job) = ($del // '') =~ m{/jobs/(\S+)};
my $state;
for (1 .. 30) {
    my (undef, undef, $body) = http_get($port, 'GET', "/jobs/$job",
                                        headers => { Authorization => 'Bearer demo-token' });
    $state = eval { decode_json($body)->{state} } // '';
    last if $state ne 'running';
    sleep 0.1;
}
is($state, 'cancelled', 'the job is cancelled');
ok(!(grep { /SSE message: .*"progress":100/ } @{ $c->{console} || [] }),
   'and the page saw no completion');

my $r = $out->{regular} || {};
is_deeply([grep { m{^POST /generate} } @{ $r->{requests} || [] }],
          ['POST /generate 200'], 'streaming unchecked: one regular POST /generate');
is($r->{title}, 'Python for Data Science in 8 Weeks', 'which leads to the same result page');

done_testing();
