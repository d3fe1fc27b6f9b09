# The Dockerfile, built and run with a container engine (podman, or docker
# with a daemon; CONTAINER_ENGINE picks one): the image installs the
# module's Debian package (make deb) into Debian's nginx; its entry point
# serves /generate, /pipeline and the demo page with the mock model; the
# system configuration in the image loads the module; a stop is graceful.
#
# Skips when no engine can run a container here, or when the base images
# (debian:bookworm, debian:bookworm-slim) are not in the engine's store and
# cannot be pulled: util/debian-image.sh makes them from Debian's mirror.
# Containers use the host's network (--network host): the machine needs no
# container networking, and the ports are the test's free ports.  Where
# podman's defaults cannot run a container (the development VM: cgroups v1
# and v2 mixed, which crun refuses; no CAP_SYS_RESOURCE, so no limits
# above the hard ones), /etc/containers/containers.conf sets
#
#   [containers]
#   default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
#   [engine]
#   runtime = "runc"

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep);
use Cwd ();
use FindBin;
use lib "$FindBin::Bin/lib";
use LLM::TestServer qw(free_port http_get sse_events);

my $top = Cwd::abs_path("$FindBin::Bin/..");

sub which {
    my ($name) = @_;
    my ($p) = grep { -x "$_/$name" } split /:/, $ENV{PATH};
    return $p ? "$p/$name" : undef;
}

my $engine = $ENV{CONTAINER_ENGINE} || (which('podman') ? 'podman' : 'docker');
my $image = 'ngx-llm-test';
my $name = "ngx-llm-test-$$";

plan skip_all => "no container engine ($engine) is installed" unless which($engine);
plan skip_all => "$engine cannot run here: " . (split /\n/, `$engine info 2>&1`)[-1]
    if system("$engine info > /dev/null 2>&1") != 0;
for my $base (qw(debian:bookworm debian:bookworm-slim)) {
    next if system("$engine image inspect $base > /dev/null 2>&1") == 0
            || system("$engine pull $base > /dev/null 2>&1") == 0;
    plan skip_all => "$base cannot be pulled here: make it with"
                     . " ENGINE=$engine util/debian-image.sh";
}
plan skip_all => "$engine cannot run a container here: "
                 . (split /\n/, `$engine run --rm --network host debian:bookworm true 2>&1`)[-1]
    if system("$engine run --rm --network host debian:bookworm true > /dev/null 2>&1") != 0;

# --- build

my $log = "$top/build/docker-build.log";
is(system("$engine build --network host -t $image '$top' > '$log' 2>&1"), 0,
   "$engine build (log: build/docker-build.log)")
    or BAIL_OUT(`tail -n 30 '$log'`);

my $dpkg = `$engine run --rm --network host $image dpkg-query -W -f='\${Status} \${Version}' libnginx-mod-http-llm`;
like($dpkg, qr/^install ok installed \d/, "the image has the package: $dpkg");
my $t = `$engine run --rm --network host $image nginx -t 2>&1`;
is($?, 0, 'nginx -t in the image: the system configuration loads the module') or diag($t);

# --- run: the entry point with the mock model

my $port = free_port();
my $mock = free_port();
my $id = `$engine run -d --network host --name $name -e PORT=$port -e LLM_MOCK_PORT=$mock -e LLM_LISTEN=127.0.0.1 $image`;
is($?, 0, "$engine run") or diag($id);

END {
    local $?;
    system("$engine rm -f $name > /dev/null 2>&1");
}

my ($st, $head, $body);
for (1 .. 200) {
    ($st, $head, $body) = http_get($port, 'GET', '/');
    last if $st;
    sleep 0.1;
}
is($st, 200, 'the demo page');
like($body, qr/Drop connection/, 'is examples/index.html');

($st, $head, $body) = http_get($port, 'GET', '/generate?theme=a+lighthouse');
my @ev = sse_events($body);
is_deeply([map { $_->{event} } @ev[0, -1]], ['start', 'complete'], '/generate streams to complete')
    or diag($body);

($st, $head, $body) = http_get($port, 'GET', '/pipeline?topic=streaming');
@ev = sse_events($body);
is_deeply([map { $_->{data} =~ /"step":"(\w+)"/ ? $1 : () } grep { $_->{event} eq 'step' } @ev],
          [qw(outline draft review draft review)],
          '/pipeline runs the outline, the draft, the review (from the mock script)')
    or diag($body);
is($ev[-1]{event}, 'complete', 'to complete');

# --- stop: SIGQUIT (STOPSIGNAL), nginx's graceful stop

is(system("$engine stop -t 20 $name > /dev/null"), 0, "$engine stop");
is(`$engine inspect -f '{{.State.ExitCode}}' $name`, "0\n", 'the container exited with 0');
like(`$engine logs $name 2>&1`, qr/gracefully shutting down/, 'nginx shut down gracefully');

done_testing();
