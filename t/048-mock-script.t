# The mock model server's scripted replies (util/llm-mock.c): a second
# mock started with --script, talked to directly.  Rules chosen by the
# conversation's text, replies and statuses in order, JSON and UTF-8
# replies intact through the stream, the rules' and the request's pace,
# the query form (reply, reply_N, status_N per tag), both providers' APIs,
# and /stats/reset restarting the counts.

use strict;
use warnings;
use utf8;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(free_port);
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Socket::INET;
use JSON::PP;
use Time::HiRes qw(time sleep);

my $bin = "$FindBin::Bin/../build/llm-mock";

plan skip_all => 'build/llm-mock is missing (make)' unless -x $bin;

binmode Test::More->builder->$_, ':encoding(UTF-8)'
    for qw(output failure_output todo_output);

my $json = JSON::PP->new->utf8->canonical;          # bytes
my $text = JSON::PP->new->canonical->space_after;    # characters
my $dir = tempdir(CLEANUP => 1);

my $verdict_fail = { verdict => 'fail', score => 0.25 };
my $verdict_pass = { verdict => 'pass',
                     notes => ["line\nbreak", "tab\there", 'quote " and \\',
                               'é ☃ 😀'] };

my @rules = (
    { match => 'verdict please',
      replies => [ $text->encode($verdict_fail),
                   $text->encode($verdict_pass) ] },
    { match => 'flaky step', statuses => [ 500, 200 ],
      replies => [ 'never seen', 'recovered at last' ] },
    { match => 'utf8 please', reply => 'héllo wörld ☃ 😀 ünïcødé',
      token_size => 1 },
    { match => 'slow step', reply => 'slow and steady', ttft => 300,
      tps => 10 },
    { match => 'in the system', reply => 'system matched' },
    { match => 'always down', status => 503 },
    { reply => 'default answer' },
);

open my $f, '>:raw', "$dir/script.json" or die $!;
print $f $json->encode(\@rules);
close $f;

# the mock: as fast as possible unless a rule or a request says otherwise

my $port = free_port();
my $pid = fork() // die "fork: $!";

if ($pid == 0) {
    open STDERR, '>', "$dir/mock.log";
    exec $bin, '--listen', "127.0.0.1:$port", '--ttft', 0, '--tps', 0,
         '--script', "$dir/script.json";
    exit 127;
}

END { if ($pid) { kill 'TERM', $pid; waitpid $pid, 0; } }

for (1 .. 100) {
    last if IO::Socket::INET->new("127.0.0.1:$port");
    sleep 0.05;
}

my $http = HTTP::Tiny->new(timeout => 10);
my $base = "http://127.0.0.1:$port";

# POST to either API; a stream is assembled from its deltas

sub call {
    my ($api, $text, %o) = @_;

    my $stream = !$o{blocking};
    my %body = (model => 'mock-model',
                messages => [ { role => 'user', content => $text } ],
                stream => $stream ? JSON::PP::true : JSON::PP::false);
    my %hdr = ('Content-Type' => 'application/json');

    if ($api eq 'openai') {
        unshift @{ $body{messages} }, { role => 'system',
                                        content => $o{system} }
            if $o{system};
        $body{stream_options} = { include_usage => JSON::PP::true };
    } else {
        $body{system} = [ { type => 'text', text => $o{system} } ]
            if $o{system};
        $hdr{'anthropic-version'} = '2023-06-01';
    }

    $body{max_tokens} = $o{max_tokens} // 1000;

    my $path = $api eq 'openai' ? '/v1/chat/completions' : '/v1/messages';
    my $t = time;
    my $r = $http->post($base . $path . ($o{query} // ''),
                        { headers => \%hdr, content => $json->encode(\%body) });
    my %res = (status => $r->{status}, raw => $r->{content},
               elapsed => time - $t, deltas => [], bad => 0);

    if ($r->{status} != 200) {
        $res{error} = eval { $json->decode($r->{content}) };
        return \%res;
    }

    if (!$stream) {
        my $d = $json->decode($r->{content});
        $res{text} = $api eq 'openai' ? $d->{choices}[0]{message}{content}
                                      : $d->{content}[0]{text};
        $res{finish} = $api eq 'openai' ? $d->{choices}[0]{finish_reason}
                                        : $d->{stop_reason};
        $res{tokens} = $api eq 'openai' ? $d->{usage}{completion_tokens}
                                        : $d->{usage}{output_tokens};
        return \%res;
    }

    for my $line (split /\n/, $r->{content}) {
        next unless $line =~ /^data: (\{.*)$/;
        my $raw = $1;
        my $copy = $raw;
        if (!utf8::decode($copy)) { $res{bad}++; next; }
        my $ev = eval { $json->decode($raw) };
        if (!$ev) { $res{bad}++; next; }

        if ($api eq 'openai') {
            my $c = $ev->{choices}[0];
            push @{ $res{deltas} }, $c->{delta}{content}
                if $c && length($c->{delta}{content} // '');
            $res{finish} = $c->{finish_reason} if $c && $c->{finish_reason};
            $res{tokens} = $ev->{usage}{completion_tokens} if $ev->{usage};
        } else {
            push @{ $res{deltas} }, $ev->{delta}{text}
                if $ev->{type} eq 'content_block_delta';
            if ($ev->{type} eq 'message_delta') {
                $res{finish} = $ev->{delta}{stop_reason};
                $res{tokens} = $ev->{usage}{output_tokens};
            }
        }
    }

    $res{text} = join '', @{ $res{deltas} };
    return \%res;
}

sub reset_counts { $http->post("$base/stats/reset") }


# a JSON verdict: the replies in order, then the last one again

my $r = call(openai => 'Judge this. verdict please.');
is($r->{status}, 200, 'a rule matched by the text of a user message');
is_deeply(eval { $text->decode($r->{text}) },
          $verdict_fail, '1st call: the first reply, JSON intact')
    or diag($r->{raw});
cmp_ok(scalar @{ $r->{deltas} }, '>', 1, 'streamed in several deltas');
is($r->{tokens}, scalar @{ $r->{deltas} }, 'the usage counts the tokens');
is($r->{finish}, 'stop', 'and the stream ends normally');

$r = call(openai => 'verdict please, again');
is_deeply(eval { $text->decode($r->{text}) },
          $verdict_pass,
          '2nd call: the second reply, escapes and UTF-8 intact')
    or diag($r->{raw});
is($r->{bad}, 0, 'every event is valid UTF-8 JSON');

$r = call(openai => 'verdict please, a third time');
is_deeply(eval { $text->decode($r->{text}) },
          $verdict_pass, '3rd call: the last reply again');

# statuses in order: a failure, then a success

$r = call(openai => 'run the flaky step');
is($r->{status}, 500, 'flaky step, 1st call: 500');
is($r->{error}{error}{type}, 'mock_error', 'an OpenAI error body')
    or diag($r->{raw});
$r = call(openai => 'run the flaky step');
is($r->{status}, 200, 'flaky step, 2nd call: 200');
is($r->{text}, 'recovered at last', 'with the second reply');
$r = call(openai => 'run the flaky step', blocking => 1);
is($r->{status}, 200, '3rd call: the last status again');
is($r->{text}, 'recovered at last', 'blocking: the reply in one message');
is($r->{tokens}, 3, 'and its usage: a word a token');

# UTF-8: 1-byte tokens still carry whole characters

$r = call(openai => 'utf8 please');
is($r->{text}, 'héllo wörld ☃ 😀 ünïcødé', 'a UTF-8 reply arrives whole');
is_deeply([ grep { length != 1 } @{ $r->{deltas} } ], [],
          'token_size 1: one character a token, none split');
is($r->{bad}, 0, 'every event is valid UTF-8');

$r = call(openai => 'x', query => '?reply=%C3%A9%C3%A9%C3%A9&token_size=3');
is_deeply($r->{deltas}, [ 'éé', 'é' ],
          'token_size 3 over 2-byte characters: cut after a whole one');

$r = call(openai => 'x', query => '?reply=h%C3%A9llo%20w%C3%B6rld%0Anext');
is_deeply($r->{deltas}, [ 'héllo', ' wörld', "\nnext" ],
          'by default a word a token, with the white space before it');

# pace: the rule's, else the request's

$r = call(openai => 'the slow step');
is($r->{text}, 'slow and steady', 'a slow rule');
cmp_ok($r->{elapsed}, '>=', 0.45, 'at its ttft and tps (300 ms + 2 x 100 ms)');

$r = call(openai => 'anything else', query => '?ttft=300');
is($r->{text}, 'default answer', 'a rule without "match" matches the rest');
cmp_ok($r->{elapsed}, '>=', 0.28, "at the request's pace when it has none");

# the Anthropic API: its system prompt is part of the text

$r = call(anthropic => 'hello', system => 'rules in the system prompt');
is($r->{status}, 200, 'anthropic: 200');
is($r->{text}, 'system matched', 'anthropic: "system" is matched');
is($r->{finish}, 'end_turn', 'anthropic: the stream ends normally');
is($r->{tokens}, 2, 'anthropic: output_tokens');

$r = call(openai => 'hello', system => 'rules in the system prompt');
is($r->{text}, 'system matched', 'openai: the system message is matched');

$r = call(anthropic => 'is it always down?');
is($r->{status}, 503, 'anthropic: a scripted status');
is($r->{error}{type}, 'error', 'in an Anthropic error body');
is($r->{error}{error}{type}, 'api_error', 'of type api_error');

$r = call(anthropic => 'verdict please', blocking => 1);
is_deeply(eval { $text->decode($r->{text}) },
          $verdict_pass, 'anthropic, blocking: the rule keeps counting');

$r = call(anthropic => 'utf8 please', max_tokens => 4);
is($r->{text}, 'héll', 'max_tokens cuts the reply');
is($r->{finish}, 'max_tokens', 'and says so');

# /stats/reset restarts the counts

is(reset_counts()->{status}, 200, 'POST /stats/reset');
$r = call(openai => 'verdict please');
is_deeply(eval { $text->decode($r->{text}) },
          $verdict_fail, 'the first reply again after a reset');
is(call(openai => 'flaky step')->{status}, 500,
   'the first status again after a reset');
is(call(openai => 'flaky step')->{status}, 200, 'then the second');
is($http->get("$base/reset")->{status}, 200, 'GET /reset');
is(call(openai => 'flaky step')->{status}, 500, 'restarts them too');

# the query form: reply, reply_N and status_N, counted per tag

my $q = '?tag=qa&reply=plain%20%26%20simple&reply_2=the%20second&status_3=429';
is(call(openai => 'anything', query => $q)->{text}, 'plain & simple',
   'reply= (URL-encoded), over the script');
is(call(openai => 'anything', query => $q)->{text}, 'the second',
   'reply_2= for the 2nd request of the tag');
$r = call(anthropic => 'anything', query => $q);
is($r->{status}, 429, 'status_3= for the 3rd');
is($r->{error}{error}{message}, 'mock error 429', 'an Anthropic error body');
is(call(anthropic => 'anything', query => $q)->{text}, 'plain & simple',
   'the 4th: reply= again');

$q = '?tag=qb&reply_1=first%20of%20qb&status_2=500&reply=later';
is(call(openai => 'x', query => $q)->{text}, 'first of qb',
   'another tag counts from 1');
is(call(openai => 'x', query => $q)->{status}, 500,
   'a failure on the 2nd attempt');
is(call(openai => 'x', query => $q)->{text}, 'later', 'then the reply');

$http->post("$base/stats/reset?tag=qb");
is(call(openai => 'x', query => $q)->{text}, 'first of qb',
   '/stats/reset?tag= restarts the count of a tag');

is(call(openai => 'verdict please', query => '?status=200&reply=q')->{text},
   'q', 'the query wins over a matching rule');
is(call(openai => 'x', query => '?reply=%FF')->{status}, 400,
   'a reply that is not UTF-8 is refused');
is(call(openai => 'x', query => '?tag=qc&status_1=99')->{status}, 400,
   'so is a bad status_N');

# the other modes still apply to a scripted reply

$r = call(openai => 'x',
          query => '?reply=a%20b%20c%20d&mode=cut&after=2&chunked=0');
is($r->{text}, 'a b', 'mode=cut cuts a reply after N tokens');
is($r->{finish}, undef, 'without an end');

$r = call(openai => 'x', system => 'sys', query => '?mode=echo');
is($r->{text}, 'sys|x', 'mode=echo still echoes');

# a script that is not valid stops the mock at once

for my $bad ('[{"match": 1}]', '[{"mtach": "x"}]', '[{"statuses": []}]',
             '[{"status": 99}]', '{"match": "x"}', '[{"tps": -1}]', '[')
{
    open my $b, '>', "$dir/bad.json" or die $!;
    print $b $bad;
    close $b;
    my $p = free_port();
    my $out = `timeout 5 $bin --listen 127.0.0.1:$p --script $dir/bad.json 2>&1`;
    is($? >> 8, 1, "a bad script is refused: $bad")
        or diag($out);
}

done_testing();
