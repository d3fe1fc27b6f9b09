# A client that stops reading: the stream must not queue per client, and
# when the client reads again the deltas it missed arrive merged, with the
# same text and the last merged event's id.  Plain TAP (it needs a client
# that does not read, which Test::Nginx::Socket has no section for); it
# uses the same TEST_NGINX_* environment as the rest of the suite.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVBUF pack_sockaddr_in inet_aton);
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(start_nginx stop_nginx free_port error_log);

my $mock = $ENV{TEST_NGINX_MOCK_PORT};

plan skip_all => 'TEST_NGINX_MOCK_PORT is not set (run with make test)'
    unless $mock;

my $port = free_port();

my $root = start_nginx('slow', "daemon on;\nmaster_process off;", <<"HTTP");
    server {
        listen 127.0.0.1:$port sndbuf=4k;
        location = /g {
            llm_pass   http://127.0.0.1:$mock/v1/chat/completions?tokens=2000&tps=1000&ttft=0&token_size=64;
            llm_model  m;
            llm_prompt "hi";
        }
    }
HTTP

# a small receive window, set before connecting so that it is advertised
my $s;
for (1 .. 50) {
    $s = IO::Socket::INET->new(Proto => 'tcp') or die $!;
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, pack('i', 4096));
    last if $s->connect(pack_sockaddr_in($port, inet_aton('127.0.0.1')));
    close $s;
    undef $s;
    sleep 0.1;
}
ok($s, 'connected');

syswrite($s, "GET /g HTTP/1.0\r\nHost: localhost\r\n\r\n");

# do not read while the whole generation is produced
sleep 3;

my $resp = '';
$s->blocking(1);
while (1) {
    my $n = sysread($s, my $buf, 65536);
    last unless $n;
    $resp .= $buf;
}
close $s;

stop_nginx($root);

my ($body) = $resp =~ /\r\n\r\n(.*)\z/s;
$body //= '';

my @events = $body =~ /^id: (\S+)\nevent: (\w+)\ndata: (.*)\n\n/mg;
my (@ids, @types, @data);
while (my ($id, $type, $data) = splice @events, 0, 3) {
    push @ids, $id; push @types, $type; push @data, $data;
}

is($types[0], 'start', 'starts with start');
is($types[-1], 'complete', 'ends with complete');

my @deltas = grep { $types[$_] eq 'delta' } 0 .. $#types;
my $text = join '', map { $data[$_] =~ /^\{"text":"(.*)"\}$/ ? $1 : '' } @deltas;
my ($full) = $data[-1] =~ /^\{"text":"(.*?)","finish_reason"/;

ok(defined $full && length($full) == 2000 * 64, 'the full text is complete')
    or diag("length " . length($full // ''));
is($text, $full, 'the deltas add up to the full text');
cmp_ok(scalar @deltas, "<", 1000, 'missed deltas were merged ('
       . scalar(@deltas) . ' delta events for 2000 tokens)');

my @seq = map { /:(\d+)$/ ? $1 : 0 } @ids;
my $increasing = 1;
for (1 .. $#seq) { $increasing = 0 if $seq[$_] <= $seq[$_ - 1] }
ok($increasing, 'event ids only increase');

unlike(error_log($root), qr/\[(alert|crit|emerg)\]/, 'no alerts in the error log');

done_testing();

