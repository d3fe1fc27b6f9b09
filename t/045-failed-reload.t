# A reload with a broken configuration keeps the running one: a worker the
# master starts afterwards (here after a crash) still writes its jobs to
# the Redis store.

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx nginx_pid free_port error_log
                       http_get sse_events);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};
my $redis = $ENV{TEST_NGINX_REDIS_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT and TEST_NGINX_REDIS_PORT are needed'
    . ' (run with make test)'
    unless $mock && $redis;

my $port = free_port();
my $root = start_nginx('reload',
                       "daemon on;\nmaster_process on;\nworker_processes 1;",
                       <<"HTTP");
    llm_store redis://127.0.0.1:$redis prefix=t045:;

    server {
        listen 127.0.0.1:$port;
        location = /g {
            llm_pass   http://127.0.0.1:$mock/v1/chat/completions?tokens=5&tps=0&ttft=0;
            llm_model  m;
            llm_prompt "hi";
        }
    }
HTTP

my $master = nginx_pid($root);

# a HUP that comes before the master blocks signals (it logs "start worker
# processes" after that) is seen only with the next signal: wait for it
for (1 .. 100) {
    last if error_log($root) =~ /start worker process /;
    sleep 0.05;
}

# break the configuration and ask for a reload: it must be refused
my $conf = "$root/conf/nginx.conf";
open my $in, '<', $conf or die $!;
my $good = do { local $/; <$in> };
close $in;

open my $out, '>', $conf or die $!;
print $out $good =~ s/llm_store redis:\S+ prefix=t045:;/llm_store nowhere;/r;
close $out;

kill 'HUP', $master;

for (1 .. 50) {
    last if error_log($root) =~ /invalid store "nowhere"/;
    sleep 0.1;
}

like(error_log($root), qr/invalid store "nowhere" in "llm_store"/,
     'the broken reload is refused');

# the worker dies; the master starts another one with the running config
my ($worker) = `ps -o pid= --ppid $master` =~ /(\d+)/;
ok($worker, 'a worker runs');
kill 'KILL', $worker;
sleep 1;

my ($st, $h, $body) = http_get($port, 'GET', '/g');
my @ev = sse_events($body);
is($ev[-1]{event}, 'complete', 'the new worker streams');

my ($job) = ($ev[0]{id} // '') =~ /^([\w-]+):/;

my $state = '';
for (1 .. 30) {
    sleep 0.1;
    $state = `redis-cli -p $redis HGET 't045:{$job}:job' state`;
    chomp $state;
    last if $state eq 'completed';
}
is($state, 'completed', 'and its job is in Redis');

open $out, '>', $conf or die $!;
print $out $good;
close $out;

stop_nginx($root);

my @bad = grep { !/worker process $worker exited on signal 9/ }
          error_log($root) =~ /^.*\[(?:alert|crit)\].*$/mg;
is(scalar @bad, 0, 'no other alerts') or diag(@bad);

done_testing();
