#!/usr/bin/perl

# The inputs in fuzz/regressions/TARGET/, each of which once made a fuzz
# target fail (docs/reliability.md, "Fuzzing"), replayed through the
# targets that "make fuzz" builds in build/fuzz/, with ASan and UBSan
# stopping at the first report: each target must pass all of its inputs.
# A target that is not built is skipped.

use strict;
use warnings;

use File::Basename;
use FindBin;
use Test::More;

my $top = "$FindBin::Bin/..";
my @dirs = grep { -d } glob "$top/fuzz/regressions/*";

plan skip_all => 'no fuzz/regressions/' unless @dirs;

$ENV{ASAN_OPTIONS} = 'detect_leaks=1:abort_on_error=1';
$ENV{UBSAN_OPTIONS} = 'print_stacktrace=1:halt_on_error=1';

for my $dir (@dirs) {
    my $target = basename($dir);
    my $bin = "$top/build/fuzz/$target";
    my @inputs = glob "$dir/*";

    SKIP: {
        skip "build/fuzz/$target is not built (make fuzz)", 1 unless -x $bin;

        my $out = qx($bin @inputs 2>&1);
        is($?, 0, "$target: " . scalar(@inputs) . " regression input(s)")
            or diag($out);
    }
}

done_testing();
