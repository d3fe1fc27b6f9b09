# A failed pipeline continued by a POST on its job location: a new job
# that starts at the first unfinished step and reuses every stored output
# (the finished steps are not asked again), answered like the original
# request (a stream, or 202 in the background); what cannot be continued.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $port = free_port();
my $up = "http://127.0.0.1:$mock/v1/chat/completions?tps=0&ttft=0";
my $run = "c$$";

# the second step fails on its first call, and answers after that
my $root = start_nginx('continue', "daemon on;\nmaster_process off;",
                       <<"HTTP");
    llm_pipeline batches {
        step first {
            pass   "$up&tag=$run-first&reply=one";
            prompt "First";
            stream on;
        }
        step second {
            pass   "$up&tag=$run-second&status_1=500&reply=two";
            prompt "Second after \$llm_step_first";
            stream on;
        }
        step third {
            pass   "$up&tag=$run-third&mode=echo";
            prompt "\$llm_step_first+\$llm_step_second+\$llm_input_topic";
            stream on;
        }
    }

    llm_pipeline modules {
        step each {
            pass    "$up&tag=$run-each&status_3=500&reply=done";
            prompt  "module \$llm_item";
            foreach \$llm_input_list;
        }
    }

    server {
        listen 127.0.0.1:$port;

        location = /modules {
            llm_model    m;
            llm_pipeline modules;
        }

        location = /generate {
            llm_model    m;
            llm_pipeline batches;
        }

        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_model m;
            llm_job   \$id;
        }

        location = /single {
            llm_pass   "$up&reply=x";
            llm_model  m;
            llm_prompt "hi";
        }
    }
HTTP

sub calls {
    my ($tag) = @_;
    my (undef, undef, $body) = http_get($mock, 'GET', "/stats?tag=$run-$tag");
    my $s = eval { decode_json($body) } || {};
    return $s->{requests} // -1;
}

my ($status, $head, $body) = http_get($port, 'GET', '/generate?topic=tea');
my @ev = sse_events($body);
my ($job) = ($ev[0]{id} // '') =~ /^([\w-]+):/;

is($ev[-1]{event}, 'error', 'the first run fails at the second step');
like($ev[-1]{data}, qr/"code":"upstream_status".*"text":"one"/,
     'keeping the first step\'s text');

($status, undef, $body) = http_get($port, 'GET', "/jobs/$job",
                                   headers => { Accept => 'application/json' });
my $j = eval { decode_json($body) } || {};
is($j->{steps}[0]{state}, 'done', 'the job shows the first step done');
is($j->{steps}[0]{output}, 'one', 'with its output');
ok($j->{steps}[0]{usage}{output_tokens} > 0, 'its usage');
ok(defined $j->{steps}[0]{duration}, 'and its duration');
isnt($j->{steps}[1]{state}, 'done', 'and the second not done');

# continue: the second step answers now

($status, $head, $body) = http_get($port, 'POST', "/jobs/$job");
@ev = sse_events($body);
my ($next) = ($ev[0]{id} // '') =~ /^([\w-]+):/;

is($status, 200, 'POST on the job continues it as a stream');
isnt($next, $job, 'as a new job');
my @started = map { decode_json($_->{data})->{step} }
              grep { $_->{event} eq 'step_start' } @ev;
is_deeply(\@started, ['second', 'third'],
          'from the first unfinished step');
is($ev[-1]{event}, 'complete', 'to the end');
like($ev[-1]{data}, qr/"text":"two\|one\+two\+tea"/,
     'with the stored output and the inputs of the first run');
is(calls('first'), 1, 'the finished step was not asked again');
is(calls('second'), 2, 'the failed step was');

# a repeated step goes on after the elements it had done

($status, undef, $body) = http_get($port, 'GET',
                                   '/modules?list=%5B%22a%22%2C%22b%22%2C%22c%22%5D');
@ev = sse_events($body);
($job) = ($ev[0]{id} // '') =~ /^([\w-]+):/;
is($ev[-1]{event}, 'error', 'the third element fails');

($status, undef, $body) = http_get($port, 'POST', "/jobs/$job");
@ev = sse_events($body);
my @items = map { decode_json($_->{data})->{item} }
            grep { $_->{event} eq 'step_start' } @ev;
is_deeply(\@items, ['c'], 'the continued run asks for the third only');
($next) = ($ev[0]{id} // '') =~ /^([\w-]+):/;
(undef, undef, $body) = http_get($port, 'GET', "/jobs/$next",
                                 headers => { Accept => 'application/json' });
$j = eval { decode_json($body) } || {};
is_deeply($j->{steps}[0]{output}, ['done', 'done', 'done'],
          'and its output has all three');
is(calls('each'), 4, 'four calls in all');

# what cannot be continued

($status, undef, $body) = http_get($port, 'POST', "/jobs/$next");
is($status, 409, 'a completed pipeline cannot be continued');
like($body, qr/"code":"cannot_continue"/, 'says so');

($status, undef, $body) = http_get($port, 'GET', '/single');
my ($single) = ((sse_events($body))[0]{id} // '') =~ /^([\w-]+):/;
($status) = http_get($port, 'POST', "/jobs/$single");
is($status, 409, 'nor a job that is not a pipeline\'s');

($status) = http_get($port, 'POST', '/jobs/AAAAAAAAAAAAAAAAAAAAAA');
is($status, 404, 'an unknown job is not found');

stop_nginx($root);
unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts');

done_testing();
