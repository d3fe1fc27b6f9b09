# make deb (util/deb.sh): the package's fields and files, then the package
# in the system nginx.  An nginx started the way Debian's runs (the
# system's nginx binary and prefix, a configuration that includes
# /etc/nginx/modules-enabled/*.conf) before the install, reloaded after it
# with a location that streams from the mock; the system configuration
# passes nginx -t; remove moves the enabling link aside as Debian's module
# packages do, purge leaves nothing.
#
# It installs a package into this machine (root, dpkg), and purges it at
# the end.  Skips when not root, or when this machine already has the
# module in the system nginx (installed by hand or by the package: it is
# not the test's to replace).  The rest of the suite loads build/'s module
# with configurations of its own, which never include modules-enabled.

use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep);
use Cwd ();
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(free_port http_get sse_events);

my $top = Cwd::abs_path("$FindBin::Bin/..");
my $pkg = 'libnginx-mod-http-llm';
my $so = '/usr/lib/nginx/modules/ngx_http_llm_module.so';
my $link = '/etc/nginx/modules-enabled/50-mod-http-llm.conf';
my $nginx = '/usr/sbin/nginx';
my $mock = $ENV{TEST_NGINX_MOCK_PORT};

sub installed { `dpkg-query -W -f='\${Status}' $pkg 2>/dev/null` =~ / installed$/ }

plan skip_all => 'not root: installing a package needs it' unless $> == 0;
plan skip_all => 'TEST_NGINX_MOCK_PORT is unset (util/test.sh starts the mock)' unless $mock;
plan skip_all => 'nginx-dev is not installed'
    unless -f '/usr/share/nginx/src/debian/libnginx-mod.abisubstvars';
plan skip_all => "$pkg is installed on this machine: not the test's to replace"
    if installed();
plan skip_all => "$so or $link exists: a module installed by hand is left alone"
    if -e $so || -l $link || -l "$link.removed";

my $dir = tempdir(CLEANUP => 1);
my $port = free_port();

# --- the package

my $made = `cd '$top' && make -s deb 2>&1`;
my ($deb) = $made =~ /^built (\S+\.deb)$/m;
ok($? == 0 && $deb && -f $deb, 'make deb built ' . ($deb // 'nothing')) or diag($made);
my $arch = `dpkg --print-architecture`;
chomp $arch;
like($deb // '', qr{/build/${pkg}_\d+\.\d+\.\d+-1_\Q$arch\E\.deb$}, 'named PACKAGE_VERSION_ARCH.deb');

my %f = map { /^(\S+): (.*)$/ ? ($1, $2) : () } split /\n/, `dpkg-deb -f '$deb'`;
my ($abi) = `dpkg-query -W -f='\${Provides}' nginx` =~ /(nginx-abi-[\w.-]+)/;
ok($abi, "the installed nginx provides $abi");
my @dep = split /,\s*/, $f{Depends} // '';
is($dep[0], $abi, "Depends: $abi first, the ABI of the nginx it was built for");
for my $lib (qw(libcurl4 libjansson4 libhiredis0.14 libc6)) {
    ok((grep { /^\Q$lib\E( |$)/ } @dep), "Depends: $lib");
}
is($f{Package}, $pkg, "Package: $pkg");
is($f{Architecture}, $arch, "Architecture: $arch");
is($f{Section}, 'httpd', 'Section: httpd, as the nginx modules');

my @files = map { (split ' ', $_, 6)[5] } split /\n/, `dpkg-deb -c '$deb'`;
for my $file ('./usr/lib/nginx/modules/ngx_http_llm_module.so',
              './usr/share/nginx/modules-available/mod-http-llm.conf',
              "./usr/share/doc/$pkg/copyright") {
    ok((grep { $_ eq $file } @files), "ships $file");
}
ok(!(grep { m{^\./etc/} } @files), 'nothing in /etc: postinst makes the link');

# --- an nginx like the system's, running before the install

open my $c, '>', "$dir/nginx.conf" or die;
print $c <<"CONF";
include /etc/nginx/modules-enabled/*.conf;
pid $dir/nginx.pid;
error_log $dir/error.log info;
events {}
http {
    access_log off;
    client_body_temp_path $dir/body;
    server {
        listen 127.0.0.1:$port;
        location = /health { return 200 "ok\\n"; }
        include $dir/llm.conf;
    }
}
CONF
close $c;
open $c, '>', "$dir/llm.conf" or die;
close $c;

is(system($nginx, '-c', "$dir/nginx.conf", '-e', "$dir/error.log"), 0,
   'an nginx with the system modules runs')
    or BAIL_OUT('nginx did not start');

sub master { open my $p, '<', "$dir/nginx.pid" or return 0; my $n = <$p>; return ($n // 0) + 0 }

my $ran;
END {
    local $?;
    my $m = master();
    kill 'QUIT', $m if $m;
    system("dpkg --purge $pkg > /dev/null 2>&1") if $ran && installed();
}

# a GET, again while the answer is none or 404 (until nginx has started,
# until a reload has taken effect): its status and body
sub get {
    my ($uri) = @_;
    my ($st, $body);
    for (1 .. 100) {
        ($st, undef, $body) = http_get($port, 'GET', $uri);
        last if $st && $st != 404;
        sleep 0.05;
    }
    return ($st, $body);
}

is((get('/health'))[0], 200, 'it answers');

# --- install

$ran = 1;
my $log = `dpkg -i '$deb' 2>&1`;
is($?, 0, 'dpkg -i') or diag($log);
ok(installed(), "$pkg is installed");
ok(-f $so, "$so is there");
is(readlink($link), '/usr/share/nginx/modules-available/mod-http-llm.conf',
   "postinst enabled it: $link");
is(`cat /usr/share/nginx/modules-available/mod-http-llm.conf`,
   "load_module modules/ngx_http_llm_module.so;\n", 'with the load_module line');

my $t = `$nginx -t 2>&1`;
is($?, 0, 'nginx -t: the system configuration loads it') or diag($t);

# --- reload with a generation endpoint, and stream

open $c, '>', "$dir/llm.conf" or die;
print $c <<"CONF";
location = /generate {
    llm_pass   http://127.0.0.1:$mock/v1/chat/completions;
    llm_model  mock-model;
    llm_prompt "Write a story about \$llm_input_theme";
}
CONF
close $c;

ok(kill('HUP', master()), 'reload');
my ($st, $body) = get('/generate?theme=a+lighthouse');
my @ev = sse_events($body);
is($st, 200, 'the reloaded nginx streams');
is_deeply([map { $_->{event} } @ev[0, -1]], ['start', 'complete'], 'from start to complete')
    or diag($body);
ok((grep { $_->{event} eq 'delta' } @ev) > 1, 'through deltas');
unlike(`cat $dir/error.log`, qr/\[(emerg|alert|crit)\]/, 'no emerg, alert or crit in the log');

kill 'QUIT', master();
for (1 .. 100) { last unless kill 0, master(); sleep 0.05 }

# --- remove, then purge

$log = `dpkg -r $pkg 2>&1`;
is($?, 0, 'dpkg -r') or diag($log);
ok(!-e $so, 'the module is gone');
ok(!-e $link && -l "$link.removed", 'the link is moved aside (.removed), as Debian does');
$t = `$nginx -t 2>&1`;
is($?, 0, 'nginx -t still passes') or diag($t);

$log = `dpkg --purge $pkg 2>&1`;
is($?, 0, 'dpkg --purge') or diag($log);
ok(!installed(), 'not installed any more');
ok(!-l "$link.removed" && !-e '/usr/share/nginx/modules-available/mod-http-llm.conf',
   'nothing left');

done_testing();
