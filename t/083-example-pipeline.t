# examples/pipeline/ as `make example NAME=pipeline` runs it (with the
# mock model server answering from examples/pipeline/mock.json): the
# outline, the draft streamed, the review that sends it back once, then
# approves it; the job location shows the steps.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(sse_events);
use LLM::Example qw(example_ports run_example);

my $top = "$FindBin::Bin/..";

plan skip_all => 'build/llm-mock is not built' unless -x "$top/build/llm-mock";

# three ports in a row: nginx, the mock, a Redis the example does not use
my $port = example_ports();

my $out = run_example('pipeline', $port);
my @ev = sse_events($out);

my @steps = map { decode_json($_->{data})->{step} . '#'
                  . decode_json($_->{data})->{attempt} }
            grep { $_->{event} eq 'step' } @ev;

is_deeply(\@steps, ['outline#1', 'draft#1', 'review#1', 'draft#2',
                    'review#2'],
          'outline, draft, a review that sends the draft back, then both again')
    or diag($out);

my @checks = map { decode_json($_->{data})->{next} // 'pass' }
             grep { $_->{event} eq 'check' } @ev;
is_deeply(\@checks, ['draft', 'pass'], 'the checks: back to draft, then pass');

ok((grep { $_->{event} eq 'delta' } @ev) > 2, 'the draft streams');
is($ev[-1]{event}, 'complete', 'the stream ends complete');

my @pct = map { decode_json($_->{data})->{progress} }
          grep { $_->{event} eq 'progress' } @ev;
is_deeply([@pct[0 .. 2]], [0, 20, 80], 'progress from the weights (1, 3, 1)');

like($out, qr/example: curl -sN 'http:\/\/127\.0\.0\.1:$port\/generate/,
     'it prints the command that drives it');

my $pidfile = "$top/build/example-pipeline/logs/nginx.pid";
my $npid = -e $pidfile ? `cat $pidfile` + 0 : 0;

# a stopped master may wait a moment to be reaped (by tini under make test)
for (1 .. 50) {
    last unless $npid && kill(0, $npid);
    select(undef, undef, undef, 0.1);
}

ok(!$npid || !kill(0, $npid), 'and stops what it started');

done_testing();
