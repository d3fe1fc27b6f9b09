# llm_status with the Redis store: 200 while Redis answers, 503 while it
# is down (and the memory store's status stays 200), 200 again when it is
# back; the Redis store's metrics: writes and flushes that succeeded, then
# failed while Redis was down.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port http_get sse_events
                       start_redis stop_redis);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;
plan skip_all => 'redis-server is needed'
    unless grep { -x "$_/redis-server" } split /:/, $ENV{PATH};

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my $port = free_port();
my $rport = free_port();
my $up = "http://127.0.0.1:$mock/v1/chat/completions";
my $redis_pid = start_redis($rport);

END { local $?; stop_redis($redis_pid) }

my $root = start_nginx('status',
    "daemon on;\nmaster_process on;\nworker_processes 1;\n"
    . "worker_shutdown_timeout 1s;", <<"HTTP");
    server {
        listen 127.0.0.1:$port;

        llm_store redis://127.0.0.1:$rport/2 ttl=1m prefix=t102:;

        location = /health {
            llm_status;
        }
        location = /health-memory {
            llm_store memory;
            llm_status;
        }
        location = /g {
            llm_model  m;
            llm_prompt "hi";
            llm_pass   $up?tokens=5&tps=0&ttft=0;
        }
        location = /metrics {
            llm_metrics;
        }
    }
HTTP

END { stop_nginx($root) if $root }

sub status {
    my ($uri) = @_;
    my ($st, $h, $body) = http_get($port, 'GET', $uri);
    my $j = eval { decode_json($body) } // {};
    return ($st, $j);
}

sub metric {
    my ($name) = @_;
    my ($st, $h, $body) = http_get($port, 'GET', '/metrics');
    my ($v) = $body =~ /^\Q$name\E (\S+)$/m;
    return $v // -1;
}

sub wait_for {
    my ($cond) = @_;
    for (1 .. 100 * $slow) {
        return 1 if $cond->();
        sleep 0.1;
    }
    return 0;
}

# 1. Redis up

my ($st, $j) = status('/health');
is($st, 200, 'Redis up: 200');
is($j->{status}, 'ok', 'status ok');
is_deeply($j->{store}, { type => 'redis', reachable => JSON::PP::true },
          'the Redis store is reachable');
is_deeply($j->{thread_pool}, { name => 'default', ok => JSON::PP::true },
          'the thread pool is there');
is($j->{jobs_running}, 0, 'no job running');
my ($zone) = grep { $_->{name} eq 'llm_metrics' } @{ $j->{zones} || [] };
ok($zone && $zone->{used} > 0 && $zone->{used} <= $zone->{size},
   'the metrics zone and its use');

my ($s2, $h2, $body) = http_get($port, 'GET', '/g');
my @ev = sse_events($body);
is($ev[-1]{event}, 'complete', 'a stream saved to Redis');

ok(wait_for(sub { metric('llm_store_flushes_total{result="ok"}') > 0 }),
   'a flush to Redis counted');
cmp_ok(metric('llm_store_writes_total{store="redis"}'), '>', 0,
       'Redis writes counted');
is(metric('llm_store_flush_seconds_count'),
   metric('llm_store_flushes_total{result="ok"}')
   + metric('llm_store_flushes_total{result="failed"}'),
   'every flush in the latency histogram');
is(metric('llm_store_write_failures_total{store="redis"}'), 0,
   'no write failed');

# 2. Redis down: 503 for its store, the memory store still healthy

stop_redis($redis_pid);
undef $redis_pid;

($st, $j) = status('/health');
is($st, 503, 'Redis down: 503');
is($j->{status}, 'unavailable', 'status unavailable');
is($j->{store}{reachable}, JSON::PP::false, 'the store is not reachable');

($st, $j) = status('/health-memory');
is($st, 200, 'the memory store stays healthy');
is($j->{store}{type}, 'memory', 'it is the memory store');

($s2, $h2, $body) = http_get($port, 'GET', '/g');
ok(wait_for(sub {
       metric('llm_store_write_failures_total{store="redis"}') > 0
   }), 'writes that Redis did not take counted as failures');
cmp_ok(metric('llm_store_flushes_total{result="failed"}'), '>', 0,
       'and the flushes that failed');

# 3. Redis back

$redis_pid = start_redis($rport);

ok(wait_for(sub { (status('/health'))[0] == 200 }),
   'Redis back: 200 again');

done_testing();
