# Fault matrix, upstream: a model server answering 429 with Retry-After,
# trickling one byte a second (before and after the first token), never
# ending, sending one 10 MB token, sending invalid UTF-8.  For each: what
# the client sees (its events, the final event's code), what the store
# keeps (the job as JSON), and that no worker crashed.  (4xx/5xx pages,
# cuts, hangs and invalid JSON: t/030-errors.t, t/020-framing.t,
# t/040-client.t.)
#
# The model server is a small forking HTTP server in this test, each path
# one behaviour.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log http_get
                       sse_events);

my $slow = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;

sub chunk { sprintf('%x', length $_[0]) . "\r\n$_[0]\r\n" }

sub delta {
    my ($text) = @_;
    return 'data: {"choices":[{"delta":{"content":"' . $text
           . "\"}}]}\n\n";
}

my $done = 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}'
           . "\n\ndata: [DONE]\n\n";

# What each path answers; the head is sent first for a stream.
my $sse = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
          . "Connection: close\r\n\r\n";

# invalid UTF-8, raw or escaped, inside a token
my @utf8 = (['a lone continuation byte', "a\x80b"],
            ['a cut sequence', "c\xe2\x82"],
            ['an overlong "/"', "d\xc0\xafe"],
            ['a surrogate', "f\xed\xa0\x80g"],
            ['a byte UTF-8 never has', "h\xffi"],
            ['an escaped lone surrogate', 'j\\udc00k'],
            ['an escaped lone high surrogate', 'l\\ud83dm']);

my %answer = (
    '/429' => sub {
        my ($c) = @_;
        my $b = '{"error":{"message":"Rate limit reached","type":"requests"}}';
        print $c "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n"
                 . "Content-Type: application/json\r\n"
                 . 'Content-Length: ' . length($b) . "\r\n"
                 . "Connection: close\r\n\r\n$b";
    },

    # one byte a second, a token never whole
    '/trickle-first' => sub {
        my ($c) = @_;
        print $c $sse;
        for my $b (split //, delta('never whole') x 10) {
            print $c $b or return;
            sleep 1;
        }
    },

    '/trickle' => sub {
        my ($c) = @_;
        print $c $sse, delta('first');
        for my $b (split //, delta('never whole') x 10) {
            print $c $b or return;
            sleep 1;
        }
    },

    # tokens as fast as the reader takes them, until it goes
    '/never' => sub {
        my ($c) = @_;
        my $d = delta('x' x 1000) x 64;
        print $c $sse;
        1 while print $c $d;
    },

    '/token10m' => sub {
        my ($c) = @_;
        print $c $sse, delta('before'), delta('y' x (10 * 1024 * 1024)),
                 $done;
    },

    # good text, then a bad sequence (see @utf8)
    '/utf8' => sub {
        my ($c, $n) = @_;
        print $c $sse, delta('ok'), delta($utf8[$n][1]), $done;
    },
);

sub start_server {
    my ($port) = @_;

    my $l = IO::Socket::INET->new(Listen => 64, LocalAddr => '127.0.0.1',
                                  LocalPort => $port, ReuseAddr => 1)
        or die "server: $!";

    my $pid = fork() // die "fork: $!";

    if ($pid) {
        close $l;
        return $pid;
    }

    setpgrp(0, 0);
    $SIG{CHLD} = 'IGNORE';
    $SIG{PIPE} = 'IGNORE';

    while (1) {
        my $c = $l->accept or next;

        if (fork() == 0) {
            close $l;
            $c->autoflush(1);

            my $req = '';
            while ($req !~ /\r\n\r\n/) {
                sysread($c, $req, 65536, length $req) or POSIX::_exit(0);
            }

            my ($path, $n) = $req =~ m{^POST (/[\w-]+)(?:/(\d+))?};
            ($answer{$path} || sub {})->($c, $n);
            POSIX::_exit(0);
        }

        close $c;
    }
}


my $uport = free_port();
my $server_pid = start_server($uport);

# the server and the children serving its connections
END {
    local $?;
    if ($server_pid) {
        kill 'KILL', -$server_pid;
        waitpid $server_pid, 0;
    }
}

my $port = free_port();

my $root = start_nginx('fault_upstream',
                       "daemon on;\nmaster_process on;\nworker_processes 1;",
                       <<"HTTP");
    llm_model     m;
    llm_prompt    "hi";
    llm_heartbeat 1s;

    server {
        listen 127.0.0.1:$port;

        location ~ ^/g(?<path>/[\\w/-]+)\$ {
            llm_pass                "http://127.0.0.1:$uport\$path";
            llm_first_token_timeout 3s;
            llm_idle_timeout        2s;
            llm_timeout             6s;
        }
        location = /never {
            llm_pass "http://127.0.0.1:$uport/never";
        }
        location ~ ^/jobs/(?<id>[\\w-]+)\$ {
            llm_job \$id;
        }
    }
HTTP


# a stream, its events, the final one's data, and the job as JSON

sub run {
    my ($uri, %o) = @_;

    my ($s, $h, $body) = http_get($port, 'GET', $uri,
                                  timeout => 30 * $slow, %o);
    my @ev = sse_events($body);
    my ($job) = ($ev[0]{id} // '') =~ /^([\w-]+):/;
    my $last = eval { decode_json($ev[-1]{data}) } || {};

    my (undef, undef, $j) = http_get($port, 'GET', "/jobs/" . ($job // ''),
                                     headers => { Accept =>
                                                  'application/json' });

    return ($s, $h, $body, \@ev, $last, eval { decode_json($j) } || {});
}

my ($s, $h, $body, $ev, $last, $job);


# 429 with Retry-After

($s, $h, $body, $ev, $last, $job) = run('/g/429');
is($s, 200, '429: the stream has begun');
is($ev->[-1]{event}, 'error', '  it ends with an error event');
is($last->{code}, 'upstream_status', '  upstream_status');
is($last->{message}, 'Rate limit reached', '  with the provider\'s message');
is($job->{state}, 'failed', '  the job: failed');
is($job->{error}{code}, 'upstream_status', '  with the same code');

($s, $h, $body) = http_get($port, 'GET', '/g/429',
                           headers => { Accept => 'application/json' });
is($s, 502, '429, blocking: 502');
is((eval { decode_json($body) } || {})->{error}{code}, 'upstream_status',
   '  upstream_status');


# one byte a second before the first token: the first token timeout

($s, $h, $body, $ev, $last, $job) = run('/g/trickle-first');
is($ev->[-1]{event}, 'error', 'trickle before the first token: an error');
is($last->{code}, 'first_token_timeout', '  first_token_timeout');
is($last->{text}, '', '  no text');
like($body, qr/^: ping\n\n/m, '  heartbeats meanwhile');
is($job->{error}{code}, 'first_token_timeout', '  the job says so too');


# one byte a second after it: bytes keep the idle timeout off, the total
# timeout ends it

($s, $h, $body, $ev, $last, $job) = run('/g/trickle');
is($ev->[-1]{event}, 'error', 'trickle after the first token: an error');
is($last->{code}, 'timeout', '  timeout (llm_timeout), not idle_timeout');
is($last->{text}, 'first', '  with the text so far');
is($job->{state}, 'failed', '  the job: failed');
is($job->{text}, 'first', '  with its text');


# never ending: the default llm_max_text (8m) ends it

($s, $h, $body, $ev, $last, $job) = run('/never');
is($ev->[-1]{event}, 'error', 'never ending: an error');
is($last->{code}, 'text_limit', '  text_limit (llm_max_text 8m)');
ok(length($last->{text} // '') > 0
   && length($last->{text}) <= 8 * 1024 * 1024,
   '  with the text up to the limit (' . length($last->{text} // '') . ')');
is($job->{error}{code}, 'text_limit', '  the job says so too');
is(length($job->{text} // ''), length($last->{text} // ''),
   '  and keeps the same text');


# one 10 MB token: over the bound of a line (256 KB)

($s, $h, $body, $ev, $last, $job) = run('/g/token10m');
is($ev->[-1]{event}, 'error', 'one 10 MB token: an error');
is($last->{code}, 'upstream_invalid', '  upstream_invalid');
is($last->{text}, 'before', '  with the text before it');
is($job->{state}, 'failed', '  the job: failed');
is($job->{text}, 'before', '  with the same text');


# invalid UTF-8: refused as unparsable, nothing of it reaches the client
# or the store

for my $n (0 .. $#utf8) {
    ($s, $h, $body, $ev, $last, $job) = run("/g/utf8/$n");
    my @bad = grep { !eval { decode_json($_->{data}); 1 } } @$ev;
    my $t = "invalid UTF-8, $utf8[$n][0]";

    is(scalar @bad, 0, "$t: every event is JSON in valid UTF-8")
        or diag(map { "$_->{data}\n" } @bad);
    is($ev->[-1]{event}, 'error', '  the stream ends with an error');
    is($last->{code}, 'upstream_invalid', '  upstream_invalid');
    is($last->{text}, 'ok', '  with the text before it');
    is($job->{text}, 'ok', '  the job keeps the same text');
}


# no worker crashed

($s) = http_get($port, 'GET', '/jobs/AAAAAAAAAAAAAAAAAAAAAA');
is($s, 404, 'nginx still answers');

stop_nginx($root);

unlike(error_log($root), qr/exited on signal|\[(?:alert|crit|emerg)\]/,
       'no worker crashed, no alerts');

done_testing();
