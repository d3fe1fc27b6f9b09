#!/usr/bin/env bash
# The harness behind `make test` / `make valgrind`: runs t/*.t with prove.
#
#   util/test.sh                     selftests of t/lib, then prove -r t/
#   util/test.sh t/010-stream.t      just these files (or prove options)
#   make test TESTS=t/010-stream.t   the same through make
#
# It picks free loopback ports, starts a private redis-server and, when
# build/llm-mock exists, the mock model server, exports the TEST_NGINX_*
# variables the suite uses (each one left alone when already set), chooses
# the runner (the real Test::Nginx when installed, else -I t/lib), runs
# prove under `tini -s` (which reaps the daemonised nginx processes), and
# stops everything it started on exit, failure or Ctrl-C.  The exit status
# is prove's.  See t/README.
set -u

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
build=$top/build
mkdir -p "$build"

say() { echo "test.sh: $*" >&2; }

pids=()
cleanup() {
    local pid f
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    pids=()
    [ "${1:-}" = exit ] && [ -n "${TEST_NGINX_NO_CLEAN:-}" ] && return
    # an nginx left running by an interrupted run (only if it still is one)
    for f in t/servroot/logs/nginx.pid t/servroot_selftest/logs/nginx.pid; do
        pid=$(cat "$f" 2>/dev/null) || continue
        case "$pid" in ''|*[!0-9]*) continue ;; esac
        if grep -q nginx "/proc/$pid/cmdline" 2>/dev/null; then
            kill -QUIT "$pid" 2>/dev/null
            sleep 0.5
            kill -KILL "$pid" 2>/dev/null
        fi
        rm -f "$f"
    done
}
trap 'cleanup exit' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

used_ports=" "
free_port() {
    local p
    while :; do
        p=$(perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Listen => 1,
              LocalAddr => "127.0.0.1", LocalPort => 0)->sockport') || exit 1
        case "$used_ports" in *" $p "*) continue ;; esac
        used_ports="$used_ports$p "
        echo "$p"
        return
    done
}

wait_port() {    # wait_port PORT PID NAME: until PORT accepts or PID dies
    local _
    for _ in $(seq 1 200); do
        if perl -MIO::Socket::INET -e 'exit !IO::Socket::INET->new(
               PeerAddr => "127.0.0.1", PeerPort => $ARGV[0], Timeout => 1)' "$1"
        then
            return 0
        fi
        kill -0 "$2" 2>/dev/null || { say "$3 exited (see its log in build/)"; exit 1; }
        sleep 0.05
    done
    say "$3 does not accept connections on port $1"
    exit 1
}

cleanup start    # leftovers of an interrupted run

# ----------------------------------------------------------------- nginx

export TEST_NGINX_BINARY=${TEST_NGINX_BINARY:-/usr/sbin/nginx}
[ -n "${TEST_NGINX_SERVER_PORT:-}" ] || TEST_NGINX_SERVER_PORT=$(free_port)
used_ports="$used_ports$TEST_NGINX_SERVER_PORT "
export TEST_NGINX_SERVER_PORT

if [ -z "${TEST_NGINX_LOAD_MODULES+set}" ]; then
    TEST_NGINX_LOAD_MODULES=
    for so in "$build/ngx_http_llm_module.so" /usr/lib/nginx/modules/ngx_http_echo_module.so; do
        if [ -f "$so" ]; then
            TEST_NGINX_LOAD_MODULES="$TEST_NGINX_LOAD_MODULES${TEST_NGINX_LOAD_MODULES:+ }$so"
        else
            say "warning: $so is missing (make module; apt-get install libnginx-mod-http-echo)"
        fi
    done
fi
export TEST_NGINX_LOAD_MODULES

if [ -n "${TEST_NGINX_USE_VALGRIND:-}" ]; then
    # bundled runner only: scales client timeouts and start/stop waits
    export TEST_NGINX_TIMEOUT_SCALE=${TEST_NGINX_TIMEOUT_SCALE:-5}
    command -v valgrind > /dev/null || { say "valgrind is not installed"; exit 1; }
fi

# ---------------------------------------------------------------- runner

real_tn=$(perl -MTest::Nginx::Socket -e 'print $INC{"Test/Nginx/Socket.pm"}' 2>/dev/null)
if [ -n "$real_tn" ] && [ "${real_tn#"$top/t/lib/"}" = "$real_tn" ]; then
    runner=()
    say "runner: Test::Nginx::Socket from $real_tn"
    # Debian's nginx logs start-up errors (bad config) to stderr, a stock
    # build to <prefix>/logs/error.log, where --- must_die + --- error_log
    # look; the bundled runner passes -e itself, the real one needs a wrapper.
    if "$TEST_NGINX_BINARY" -V 2>&1 | grep -q -- '--error-log-path=stderr'; then
        printf '#!/bin/sh\nexec %s -e logs/error.log "$@"\n' "$TEST_NGINX_BINARY" \
            > "$build/nginx-e"
        chmod +x "$build/nginx-e"
        export TEST_NGINX_BINARY=$build/nginx-e
        if [ "${TEST_NGINX_USE_VALGRIND:-}" = 1 ]; then    # through the wrapper
            TEST_NGINX_USE_VALGRIND="--tool=memcheck --leak-check=full"
            TEST_NGINX_USE_VALGRIND+=" --show-possibly-lost=no --trace-children=yes"
            TEST_NGINX_USE_VALGRIND+=" --gen-suppressions=all --num-callers=100"
            [ -f valgrind.suppress ] &&
                TEST_NGINX_USE_VALGRIND+=" --suppressions=valgrind.suppress"
        fi
    fi
else
    runner=(-I t/lib)
    say "runner: bundled t/lib/Test/Nginx/Socket.pm"
fi

# --------------------------------------------------------------- services

# real npm clients: eventsource for t/046, openai for t/047, puppeteer-core
# to drive Chromium for t/091 (each file skips when its package could not
# be installed)
for pkg in eventsource@2 openai@5 puppeteer-core@24; do
    if command -v npm > /dev/null \
       && [ ! -d "$build/npm/node_modules/${pkg%@*}" ]
    then
        npm install --silent --no-audit --no-fund --prefix "$build/npm" \
            "$pkg" > /dev/null 2>&1 \
            || say "warning: npm install $pkg failed: its test will skip"
    fi
done


if [ -z "${TEST_NGINX_REDIS_PORT:-}" ]; then
    if command -v redis-server > /dev/null; then
        TEST_NGINX_REDIS_PORT=$(free_port)
        redis-server --port "$TEST_NGINX_REDIS_PORT" --bind 127.0.0.1 \
            --save '' --appendonly no --daemonize no \
            > "$build/redis.log" 2>&1 &
        pids+=($!)
        wait_port "$TEST_NGINX_REDIS_PORT" $! redis-server
        export TEST_NGINX_REDIS_PORT
    else
        say "warning: redis-server is not installed; TEST_NGINX_REDIS_PORT is unset"
    fi
fi

if [ -z "${TEST_NGINX_MOCK_PORT:-}" ] && [ -x "$build/llm-mock" ]; then
    TEST_NGINX_MOCK_PORT=$(free_port)
    help=$("$build/llm-mock" --help 2>&1)
    if [[ $help == *--listen* ]]; then
        args=(--listen "127.0.0.1:$TEST_NGINX_MOCK_PORT")
    else
        args=(--port "$TEST_NGINX_MOCK_PORT")
    fi
    if [[ $help == *--blackhole* ]] && [ -z "${TEST_NGINX_BLACKHOLE_PORT:-}" ]; then
        TEST_NGINX_BLACKHOLE_PORT=$(free_port)
        args+=(--blackhole "127.0.0.1:$TEST_NGINX_BLACKHOLE_PORT")
        export TEST_NGINX_BLACKHOLE_PORT
    fi
    [[ $help == *--quiet* ]] && args+=(--quiet)
    "$build/llm-mock" "${args[@]}" > "$build/llm-mock.log" 2>&1 &
    pids+=($!)
    wait_port "$TEST_NGINX_MOCK_PORT" $! llm-mock
    export TEST_NGINX_MOCK_PORT
elif [ -z "${TEST_NGINX_MOCK_PORT:-}" ]; then
    say "warning: $build/llm-mock is missing (make); TEST_NGINX_MOCK_PORT is unset"
fi

env | grep '^TEST_NGINX_' | sort | sed 's/^/test.sh: /' >&2

# ------------------------------------------------------------------ run

if [ $# -gt 0 ]; then
    args=("$@")
elif [ -n "${TESTS:-}" ]; then
    read -r -a args <<< "$TESTS"
else
    args=(-r t/)
    if [ ${#runner[@]} -gt 0 ] && [ -z "${SKIP_SELFTEST:-}" ]; then
        bash t/selftest/run.sh || { say "the bundled runner's selftests failed"; exit 1; }
    fi
fi

init=()
if command -v tini > /dev/null; then
    init=(tini -s -g --)    # -g: signals go to prove and the test scripts
else
    say "warning: tini is missing: nginx restarts will be slow (apt-get install tini)"
fi

# In the background, so that a signal runs the traps at once (bash defers
# them while a foreground command runs); cleanup stops it first.
"${init[@]}" prove "${runner[@]}" "${args[@]}" &
pids=($! "${pids[@]}")
wait "${pids[0]}"
status=$?

# the plain TAP tests leave one valgrind report per process: errors and
# definite leaks with a frame in this module fail the run (Test::Nginx
# blocks report on stderr); "possibly lost" configuration pools are nginx's
if [ -n "${TEST_NGINX_USE_VALGRIND:-}" ]; then
    bad=$(awk '
        /^==[0-9]+== [^ ]/ { if (hit) print blk; blk = $0; hit = 0;
                             want = /Invalid|uninitialised|Conditional|Mismatched|Syscall param|definitely lost/;
                             next }
        { blk = blk "\n" $0; if (want && /ngx_http_llm/) hit = 1 }
        END { if (hit) print blk }
    ' t/servroot*/logs/valgrind.*.log 2>/dev/null)
    if [ -n "$bad" ]; then
        say "valgrind reports about the module:"
        printf '%b\n' "$bad" >&2
        status=1
    fi
fi

exit $status
