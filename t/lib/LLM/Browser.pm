package LLM::Browser;

# The plumbing of the tests that drive headless Chromium (t/091, t/096,
# t/099): Debian's chromium, driven from a node script by the npm package
# puppeteer-core (util/test.sh installs it into build/npm).

use strict;
use warnings;
use Exporter 'import';
use Test::More;
use JSON::PP;
use File::Temp qw(tempdir);
use Cwd ();
use File::Basename qw(dirname);

our @EXPORT_OK = qw(which need_browser run_browser);

my $top = Cwd::abs_path(dirname(__FILE__) . '/../../..');
my $pptr = "$top/build/npm/node_modules/puppeteer-core";
my $chromium;

# the path of a program in PATH, or undef
sub which {
    my ($name) = @_;
    my ($p) = grep { -x "$_/$name" } split /:/, $ENV{PATH};
    return $p ? "$p/$name" : undef;
}

# skips the whole file unless chromium (or $CHROMIUM), node and
# build/npm's puppeteer-core are installed
sub need_browser {
    $chromium = $ENV{CHROMIUM} || which('chromium');

    plan skip_all => 'chromium is not installed (apt-get install -y chromium)'
        unless $chromium && -x $chromium;
    plan skip_all => 'node is not installed' unless which('node');
    plan skip_all => 'puppeteer-core is not installed '
                     . '(npm install --prefix build/npm puppeteer-core@24)'
        unless -d $pptr;
}

# run_browser(script, args => [...], env => {...}, timeout => seconds):
# runs the node script (60 s at most by default) with `puppeteer` and
# `launch()` (a headless Chromium) defined before it; the script prints
# one line of JSON, its outcome.  Returns (that JSON decoded, or undef;
# everything the script printed, stderr too).
sub run_browser {
    my ($script, %o) = @_;

    my $dir = tempdir(CLEANUP => 1);
    open my $js, '>', "$dir/drive.js" or die "$dir/drive.js: $!";
    print $js <<'JS', $script;
const puppeteer = require(process.env.PPTR);
const launch = () => puppeteer.launch({
  executablePath: process.env.CHROMIUM, headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
JS
    close $js;

    local %ENV = (%ENV, PPTR => $pptr, CHROMIUM => $chromium, %{ $o{env} || {} });
    my $cmd = join ' ', map { quotemeta }
              'timeout', $o{timeout} // 60, 'node', "$dir/drive.js", @{ $o{args} || [] };
    my $got = `$cmd 2>&1`;

    my ($line) = $got =~ /^(\{.*\})$/m;
    return (eval { decode_json($line // '') }, $got);
}

1;
