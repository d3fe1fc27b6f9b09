# A real SSE client from npm (the "eventsource" package, as Node apps use
# it): named events, ids, and a resume with Last-Event-ID after a drop.

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
plan skip_all => 'node or the npm eventsource package is missing'
    unless -d "$modules/eventsource" && `node --version 2>/dev/null`;

my $port = free_port();
my $root = start_nginx('npm', "daemon on;\nmaster_process off;", <<"HTTP");
    server {
        listen 127.0.0.1:$port;
        location = /generate {
            llm_pass   http://127.0.0.1:$mock/v1/chat/completions?tokens=30&tps=50&ttft=0;
            llm_model  m;
            llm_prompt "Write about \$llm_input_theme";
        }
    }
HTTP

my $js = <<'JS';
const EventSource = require('eventsource');
const url = process.argv[2];
let text = '', last = null, n = 0, first = null;
const es = new EventSource(url);
es.addEventListener('start', e => { first = e.lastEventId; });
es.addEventListener('delta', e => {
  text += JSON.parse(e.data).text; last = e.lastEventId;
  if (++n !== 5) return;
  es.close();
  const again = new EventSource(url, { headers: { 'Last-Event-ID': last } });
  again.addEventListener('delta', e2 => { text += JSON.parse(e2.data).text; });
  again.addEventListener('complete', e2 => {
    const d = JSON.parse(e2.data);
    console.log(JSON.stringify({ first, last, resumed: e2.lastEventId,
                                 match: d.text === text, finish: d.finish_reason }));
    again.close();
  });
  again.onerror = e2 => { console.log(JSON.stringify({ error: e2.status || 'network' })); again.close(); };
});
es.onerror = e => { if (n < 5) { console.log(JSON.stringify({ error: e.status || 'network' })); es.close(); } };
JS

open my $f, '>', "$root/client.js" or die $!;
print $f $js;
close $f;

my $out = `NODE_PATH=$modules timeout 20 node $root/client.js 'http://127.0.0.1:$port/generate?theme=sea'`;
my ($line) = $out =~ /^(\{.*\})$/m;
my $r = eval { JSON::PP::decode_json($line // '') } || {};

like($r->{first} // '', qr/^[\w-]{22}:1$/, 'the client sees the start event id');
like($r->{last} // '', qr/:\d+$/, 'and delta ids');
ok($r->{match}, 'after a drop and a resume with Last-Event-ID the text is whole')
    or diag($out);
is($r->{finish}, 'stop', 'the complete event arrives');

stop_nginx($root);
unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();

use JSON::PP ();
