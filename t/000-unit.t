#!/usr/bin/perl

# The C unit tests of the upstream parser and the providers: runs
# build/llm-unit (made by "make"), whose output is TAP already.

use strict;
use warnings;

use FindBin;

my $unit = "$FindBin::Bin/../build/llm-unit";

if (!-x $unit) {
    print "1..0 # SKIP build/llm-unit not built\n";
    exit 0;
}

exec $unit or die "exec $unit: $!\n";
