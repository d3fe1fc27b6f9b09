#!/usr/bin/env bash
# The benchmark: ngx_http_llm_module against the seeds' architecture (a
# FastAPI + uvicorn relay behind nginx with proxy_buffering off) and
# against the mock itself (the floor), all on one build/llm-mock.
#
#   bench/run.sh                 every scenario (make bench: bootstrap and
#                                build first); 10 to 11 minutes
#   BENCH_ONLY="1 3" bench/run.sh   some scenarios (the report keeps the
#                                   missing ones as "not run")
#   BENCH_QUICK=1 bench/run.sh   shorter holds and lower levels: a smoke
#                                test of the instrument, not figures
#   BENCH_MODULE=X.so            another build of the module (default:
#                                build/ngx_http_llm_module.so)
#
# Writes bench/results/<date>.md and bench/results/<date>.png; the raw
# JSON lines, configurations and logs stay in build/bench/.  Every process
# it starts is stopped on exit, failure and Ctrl-C included.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
bench=$top/bench
build=$top/build
work=$build/bench
results=$bench/results
day=$(date +%Y-%m-%d)

budget=${BENCH_BUDGET:-680}        # seconds for the scenarios
all="1 2 3 4 5 6 7 8 9"
only=${BENCH_ONLY:-$all}
quick=${BENCH_QUICK:-}
python=/usr/bin/python3            # Debian's, which has fastapi/uvicorn

t0=$(date +%s)

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }


# --- processes --------------------------------------------------------

pids=()        # everything started here, stopped by cleanup()

cleanup() {
    local p rc=$?
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for p in "${pids[@]}"; do
            kill -0 "$p" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget() {      # forget one pid of pids[]
    local p keep=()
    for p in "${pids[@]}"; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    pids=("${keep[@]}")
}

stop() {        # stop a process we started and wait for it
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}

free_port() {   # a free loopback port below the ephemeral range
    $python -c '
import random, socket
while True:
    p = random.randint(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break'
}

wait_http() {   # wait_http URL: until it answers (10 s)
    for _ in $(seq 100); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.1
    done
    die "$1 does not answer"
}

children() {    # children PID N [PATTERN]: N child pids, comma-separated
    local c n
    for _ in $(seq 100); do
        if [ -n "${3:-}" ]; then
            c=$(pgrep -d, -P "$1" -f "$3" || true)
        else
            c=$(pgrep -d, -P "$1" || true)
        fi
        n=$(echo "$c" | tr , '\n' | grep -c . || true)
        [ "$n" -ge "$2" ] && { echo "$c"; return; }
        sleep 0.1
    done
    die "fewer than $2 children of $1"
}

mock_idle() {   # until the mock has no stream open (5 s at most)
    local a
    for _ in $(seq 50); do
        a=$(curl -s --max-time 1 "http://127.0.0.1:$mock_port/stats" \
            | sed -n 's/.*"active":\([0-9-]*\).*/\1/p')
        [ "${a:-1}" -le 0 ] && return 0
        sleep 0.1
    done
    log "warning: the mock still has ${a:-?} streams open"
}


# --- set-up -----------------------------------------------------------

hard=$(ulimit -Hn)
ulimit -n "$hard"
nofile=$(ulimit -n)
[ "$nofile" -ge 4096 ] || die "ulimit -n is $nofile: not enough"

# streams one client can hold: one fd each; nginx takes two per stream
# (client and upstream), spread over two workers by reuseport
max_streams=$(( (nofile - 200) / 10000 * 10000 ))
[ "$max_streams" -gt 10000 ] && max_streams=10000
[ "$max_streams" -lt 1000 ] && max_streams=$(( (nofile - 200) / 1000 * 1000 ))

mkdir -p "$work" "$results"

# one run at a time: two would share build/bench and the 2 cores
exec 9> "$work/.lock"
if ! flock -n 9; then
    die "another bench/run.sh is running (build/bench/.lock is held)"
fi

rm -f "$work"/*.json "$work"/*.dat "$work"/*.series "$work"/*.errlog \
      "$work"/*.probe "$work"/redis.log "$work"/module/logs/* \
      "$work"/proxy/logs/* "$work"/front/logs/*

[ -x "$build/llm-mock" ] || die "build/llm-mock is missing: make all"
module_src=${BENCH_MODULE:-$build/ngx_http_llm_module.so}
[ -f "$module_src" ] || die "$module_src is missing: make"
# nginx maps the module: a rebuild that rewrites the file in place during
# the run would crash it (SIGBUS), so it runs a private copy
module_so=$work/ngx_http_llm_module.so
cp "$module_src" "$module_so.tmp"
mv -f "$module_so.tmp" "$module_so"
command -v gnuplot >/dev/null || die "gnuplot is missing: util/bootstrap.sh"
$python -c 'import fastapi, uvicorn, aiohttp' 2>/dev/null \
    || die "python3-fastapi/uvicorn/aiohttp missing: util/bootstrap.sh"

if [ ! -x "$build/llm-load" ] \
   || [ "$bench/llm-load.c" -nt "$build/llm-load" ]; then
    ${CC:-cc} -O2 -g -Wall -Wextra -Werror -o "$build/llm-load" \
        "$bench/llm-load.c" -lm
fi

load=$build/llm-load

# the figures assume the 2 cores are ours: say so when they are not
busy=$($python -c '
import os, time
def busy():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)
a = busy(); time.sleep(2); b = busy()
hz = float(os.sysconf("SC_CLK_TCK"))
print("%.2f" % ((b[0] - a[0]) / hz / 2))')
log "the machine was busy with $busy cores before the run"
if awk -v b="$busy" 'BEGIN { exit !(b > 0.3) }'; then
    log "warning: other processes are using $busy cores: the figures" \
        "will be pessimistic (see the 'other CPU' columns of the report)"
fi

mock_port=$(free_port)
"$build/llm-mock" --listen "127.0.0.1:$mock_port" --quiet \
    2> "$work/llm-mock.log" 9>&- &
mock_pid=$!
pids+=("$mock_pid")
wait_http "http://127.0.0.1:$mock_port/health"

# nginx takes one -g: daemon off, so that the master is our child
globals="daemon off;"
[ "$(id -u)" = 0 ] && globals="$globals user root;"

# each stream takes one connection in a module worker (the upstream
# socket belongs to libcurl), two in a proxying worker
wc_module=$(( max_streams + 2000 ))
wc_proxy=$(( max_streams * 2 + 2000 ))
rlimit=$nofile

nginx_module_pid=
nginx_module_port=

# start_module [HTTP [LOCATION [SERVER]]]: HTTP, directives at the http
# level (an llm_store, llm_format blocks); LOCATION, directives in
# /generate (an llm_format choice); SERVER, more locations.  /generate
# passes to $upstream_url (the mock, or the TLS front of scenario 8).
start_module() {
    local p=$work/module store=${1:-"# the default job store (memory)"}
    local extra=${2:-"# the default format"}
    local more=${3:-"# no other location"}
    local up=${upstream_url:-http://127.0.0.1:$mock_port}
    mkdir -p "$p/conf" "$p/logs"
    nginx_module_port=$(free_port)
    cat > "$p/conf/nginx.conf" <<EOF
# bench/run.sh: ngx_http_llm_module, straight to the mock
load_module $module_so;

worker_processes 2;
worker_rlimit_nofile $rlimit;
error_log logs/error.log warn;
pid logs/nginx.pid;

events {
    worker_connections $wc_module;
}

http {
    access_log off;
    $store

    server {
        listen 127.0.0.1:$nginx_module_port reuseport backlog=4096;

        location = /health {
            return 200 "ok\n";
        }

        location = /generate {
            # the client's query (tps, tokens, ttft) goes to the mock
            llm_pass  $up/v1/chat/completions?stamp=1&\$args;
            llm_model  bench;
            llm_prompt "Write a story.";
            llm_first_token_timeout 600s;
            $extra
        }

        $more
    }
}
EOF
    nginx -p "$p" -c conf/nginx.conf -e logs/error.log -g "$globals" \
        2> "$p/logs/stderr.log" 9>&- &
    nginx_module_pid=$!
    pids+=("$nginx_module_pid")
    wait_http "http://127.0.0.1:$nginx_module_port/health"
    module_workers=$(children "$nginx_module_pid" 2)
}

stop_module() {
    [ -n "$nginx_module_pid" ] && stop "$nginx_module_pid"
    nginx_module_pid=
    mock_idle
}

uv_pid=
proxy_pid=

# proxy_conf DIR PORT UPSTREAM LOCATION COMMENT: an nginx that passes
# LOCATION to UPSTREAM (host:port) with proxy_buffering off and a
# keepalive pool, as the seeds' apps put nginx in front of their relay
proxy_conf() {
    mkdir -p "$1/conf" "$1/logs"
    cat > "$1/conf/nginx.conf" <<EOF
# bench/run.sh: $5
worker_processes 2;
worker_rlimit_nofile $rlimit;
error_log logs/error.log warn;
pid logs/nginx.pid;

events {
    worker_connections $wc_proxy;
}

http {
    access_log off;

    upstream relay {
        server $3;
        keepalive 256;
    }

    server {
        listen 127.0.0.1:$2 reuseport backlog=4096;

        location = /health {
            return 200 "ok\n";
        }

        location = $4 {
            proxy_pass http://relay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 600s;
        }
    }
}
EOF
}

# start_proxy DIR: that nginx, our child; its pid in $started
start_proxy() {
    nginx -p "$1" -c conf/nginx.conf -e logs/error.log -g "$globals" \
        2> "$1/logs/stderr.log" 9>&- &
    started=$!
    pids+=("$started")
}

start_baseline() {
    local p=$work/proxy
    uv_port=$(free_port)
    proxy_port=$(free_port)

    (cd "$bench/baseline" \
     && RELAY_UPSTREAM="http://127.0.0.1:$mock_port/v1/chat/completions" \
        RELAY_CLIENT=aiohttp \
        exec $python -m uvicorn relay:app --workers 2 --host 127.0.0.1 \
            --port "$uv_port" --backlog 4096 --loop uvloop --http httptools \
            --no-access-log --log-level warning) \
        2> "$work/uvicorn.log" 9>&- &
    uv_pid=$!
    pids+=("$uv_pid")

    proxy_conf "$p" "$proxy_port" "127.0.0.1:$uv_port" /generate \
        "the baseline's front, nginx proxying to uvicorn"
    start_proxy "$p"
    proxy_pid=$started
    wait_http "http://127.0.0.1:$proxy_port/health"
    proxy_workers=$(children "$proxy_pid" 2)
    # the workers, not multiprocessing's resource tracker
    uv_workers=$(children "$uv_pid" 2 spawn_main)
    wait_http "http://127.0.0.1:$uv_port/docs"
    sleep 1     # both workers import the app
}

stop_baseline() {
    [ -n "$proxy_pid" ] && stop "$proxy_pid"
    [ -n "$uv_pid" ] && stop "$uv_pid"
    proxy_pid=
    uv_pid=
    mock_idle
}


# nginx's own proxy_pass straight to the mock, proxy_buffering off: the
# bytes relayed without being understood.  Not a replacement for the
# module (no events, no jobs, no resume); the reference for what nginx
# itself costs per stream and per token (scenarios 3 and 4).
nproxy_pid=
nproxy_port=

start_nproxy() {
    local p=$work/nproxy
    nproxy_port=$(free_port)
    proxy_conf "$p" "$nproxy_port" "127.0.0.1:$mock_port" \
        /v1/chat/completions "nginx proxy_pass to the mock, the reference"
    start_proxy "$p"
    nproxy_pid=$started
    wait_http "http://127.0.0.1:$nproxy_port/health"
    nproxy_workers=$(children "$nproxy_pid" 2)
}

stop_nproxy() {
    [ -n "$nproxy_pid" ] && stop "$nproxy_pid"
    nproxy_pid=
    mock_idle
}


# --- the load ---------------------------------------------------------

elapsed() { echo $(( $(date +%s) - t0 )); }

# run NAME TARGET QUERY [llm-load options]: TARGET is floor, module,
# baseline or nproxy; the JSON lines go to build/bench/NAME.json
run() {
    local name=$1 target=$2 query=$3
    shift 3
    local url samples=(--sample "mock=$mock_pid")

    case $target in
    floor)
        url="http://127.0.0.1:$mock_port/v1/chat/completions?stamp=1&$query"
        set -- --proto openai "$@"
        ;;
    module)
        url="http://127.0.0.1:$nginx_module_port/generate?$query"
        samples+=(--sample "nginx=$module_workers")
        ;;
    baseline)
        url="http://127.0.0.1:$proxy_port/generate?$query"
        samples+=(--sample "nginx=$proxy_workers"
                  --sample "uvicorn=$uv_workers")
        ;;
    nproxy)
        url="http://127.0.0.1:$nproxy_port/v1/chat/completions?stamp=1&$query"
        set -- --proto openai "$@"
        samples+=(--sample "nginx=$nproxy_workers")
        ;;
    esac

    local logs=() offs=() f i
    case $target in
    module)   logs=("$work/module/logs/error.log") ;;
    nproxy)   logs=("$work/nproxy/logs/error.log") ;;
    baseline) logs=("$work/proxy/logs/error.log" "$work/uvicorn.log") ;;
    esac
    for f in "${logs[@]}"; do
        offs+=("$(stat -c %s "$f" 2>/dev/null || echo 0)")
    done

    log "$name: $target $query ($(elapsed) s)"
    "$load" --url "$url" --label "$name" "${samples[@]}" \
        --series "$work/$name.series" --deadline 200 "$@" \
        > "$work/$name.json"
    [ -s "$work/$name.json" ] || die "$name: no result"

    # what the servers logged meanwhile (warn and worse), counted by kind
    : > "$work/$name.errlog"
    for i in "${!logs[@]}"; do
        [ -f "${logs[$i]}" ] || continue
        tail -c +"$(( ${offs[$i]} + 1 ))" "${logs[$i]}" \
        | grep -E '\[(warn|error|crit|alert|emerg)\]|Traceback|Error' \
        | sed -E -e 's/^[0-9/]+ [0-9:]+ //' -e 's/[0-9]+#[0-9]+: //' \
                 -e 's/\*[0-9]+ //' -e 's/[A-Za-z0-9_-]{22}/ID/g' \
                 -e 's/process [0-9]+/process N/' -e 's/by [0-9]+/by N/' \
                 -e 's/, client: .*//' \
        | cut -c1-160 | sort | uniq -c | sort -rn | head -8 \
        >> "$work/$name.errlog" || true
    done
    if [ -s "$work/$name.errlog" ]; then
        log "$name: the servers logged:"
        sed 's/^/    /' "$work/$name.errlog" >&2
    fi
}

floor_of() {    # floor_of NAME: "level:p99us,..." from a floor run
    $python - "$work/$1.json" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(",".join("%d:%d" % (r["level"], r["lat_p99"]) for r in rows
               if r["lat_p99"] >= 0))
EOF
}

want() { [[ " $only " == *" $1 "* ]]; }

over_budget() {  # over_budget NAME [SECONDS]: the SECONDS it needs
    if [ "$(( $(elapsed) + ${2:-0} ))" -ge "$budget" ]; then
        local why="time budget spent"
        [ -n "${2:-}" ] && why="it would end past the time budget"
        log "time budget ($budget s): skipping $1 ($why)"
        echo "{\"scenario\":\"$1\",\"skipped\":\"$why\"}" \
            >> "$work/skipped.json"
        return 0
    fi
    return 1
}


if [ -n "$quick" ]; then
    hold1=4; hold=3; settle=1; ramp=1000
    cap_levels="200,500,1000"
    base_levels="100,200,400,800"
    mem_levels="500,1000"
    big=1000
else
    hold1=10; hold=6; settle=2; ramp=2000
    cap_levels="500,1000,2000,3000,4000,6000,8000,10000"
    base_levels="100,200,400,800,1200,1600,2400,3200,4800,6400,8000,10000"
    mem_levels="1000,10000"
    big=10000
fi

# levels above what the descriptors allow are dropped
cap_levels=$(echo "$cap_levels" | tr , '\n' \
             | awk -v m="$max_streams" '$1 <= m' | paste -sd,)
base_levels=$(echo "$base_levels" | tr , '\n' \
              | awk -v m="$max_streams" '$1 <= m' | paste -sd,)
mem_levels=$(echo "$mem_levels" | tr , '\n' \
             | awk -v m="$max_streams" '$1 <= m' | paste -sd,)

commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$top" diff --quiet HEAD -- src config 2>/dev/null \
    || commit="$commit + uncommitted changes in src/"

cat > "$work/meta.json" <<EOF
{"day":"$day","started":"$(date -u +%FT%TZ)","nofile":$nofile,
 "max_streams":$max_streams,"cpus":$(nproc),
 "cpu_model":"$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)",
 "kernel":"$(uname -r)","nginx":"$(nginx -v 2>&1 | sed 's/.*\///')",
 "python":"$($python -c 'import sys; print(sys.version.split()[0])')",
 "loadavg_start":"$(cut -d' ' -f1-3 /proc/loadavg)","busy_before":$busy,
 "git":"$commit",
 "module_built":"$(date -u -r "$module_src" +%FT%TZ)",
 "quick":"${quick:-}","hold1":$hold1,"hold":$hold,"settle":$settle,
 "ramp":$ramp,"cap_levels":"$cap_levels","base_levels":"$base_levels",
 "mem_levels":"$mem_levels"}
EOF


# --- 1. relay latency: 100 streams x 50 tokens/s ----------------------
#
# 5-second streams (250 tokens, 100 ms to the first), replaced as they
# end, so the run also covers stream start and the complete event.

s1q="tps=50&tokens=250&ttft=100"

if want 1 && ! over_budget 1; then
    run s1-floor floor "$s1q" --levels 100 --tps 50 --hold "$hold1" \
        --settle "$settle"
    start_module
    run s1-module module "$s1q" --levels 100 --tps 50 --hold "$hold1" \
        --settle "$settle"
    stop_module
    start_baseline
    run s1-baseline baseline "$s1q" --levels 100 --tps 50 \
        --hold "$hold1" --settle "$settle"
    stop_baseline
fi


# --- 2. capacity: streams at 5 tokens/s, ramped until p99 added > 100 ms
#
# Long streams (they outlast the run), a staircase of levels; each level
# is measured after the ramp and a settle.  The floor runs the same
# staircase first: its p99 per level is what "added" is measured from.

s2q="tps=5&tokens=5000&ttft=100"

if want 2 && ! over_budget 2; then
    run s2-floor floor "$s2q" --levels "$cap_levels" --tps 5 \
        --hold "$hold" --settle "$settle" --ramp-rate "$ramp"
    mock_idle
    fl=$(floor_of s2-floor)
    start_module
    run s2-module module "$s2q" --levels "$cap_levels" --tps 5 \
        --hold "$hold" --settle "$settle" --ramp-rate "$ramp" \
        --stop-added-ms 100 --floor "$fl"
    stop_module
    if ! over_budget 2-baseline; then
        start_baseline
        run s2-baseline baseline "$s2q" --levels "$base_levels" --tps 5 \
            --hold "$hold" --settle "$settle" --ramp-rate "$ramp" \
            --stop-added-ms 100 --floor "$fl"
        stop_baseline
    fi
fi


# --- 3. memory: worker RSS per open stream, waiting and streaming -----
#
# A fresh nginx for each state, so the idle RSS is not a high-water mark
# of an earlier run.  Waiting: the mock holds the first token for 10
# minutes.  Streaming: 1 token/s each (10,000 tokens/s at 10,000).

if want 3 && ! over_budget 3; then
    start_module
    run s3-module-wait module "tps=5&tokens=10&ttft=600000" \
        --levels "$mem_levels" --hold 3 --settle 2 --ramp-rate "$ramp"
    stop_module
    start_module
    # a longer settle: the streams of a big step start late (see README)
    run s3-module-stream module "tps=1&tokens=5000&ttft=0" \
        --levels "$mem_levels" --tps 1 --hold 3 --settle 6 \
        --ramp-rate "$ramp"
    stop_module
    if ! over_budget 3-baseline; then
        start_baseline
        run s3-baseline-wait baseline "tps=5&tokens=10&ttft=600000" \
            --levels 1000 --hold 3 --settle 2 --ramp-rate "$ramp"
        stop_baseline
    fi
    if ! over_budget 3-nproxy; then
        start_nproxy
        run s3-nproxy-wait nproxy "tps=5&tokens=10&ttft=600000" \
            --levels 1000 --hold 3 --settle 2 --ramp-rate "$ramp"
        stop_nproxy
        start_nproxy
        run s3-nproxy-stream nproxy "tps=1&tokens=5000&ttft=0" \
            --levels 1000 --tps 1 --hold 3 --settle 6 --ramp-rate "$ramp"
        stop_nproxy
    fi
fi


# --- 4. CPU: seconds per million relayed tokens -----------------------
#
# 1,000 streams x 10 tokens/s = 10,000 tokens/s, the same for all three.

s4q="tps=10&tokens=5000&ttft=0"

if want 4 && ! over_budget 4; then
    run s4-floor floor "$s4q" --levels 1000 --tps 10 --hold "$hold1" \
        --settle "$settle" --ramp-rate "$ramp"
    mock_idle
    start_module
    run s4-module module "$s4q" --levels 1000 --tps 10 --hold "$hold1" \
        --settle "$settle" --ramp-rate "$ramp"
    stop_module
    if ! over_budget 4-baseline; then
        start_baseline
        run s4-baseline baseline "$s4q" --levels 1000 --tps 10 \
            --hold "$hold1" --settle "$settle" --ramp-rate "$ramp"
        stop_baseline
    fi
    if ! over_budget 4-nproxy; then
        start_nproxy
        run s4-nproxy nproxy "$s4q" --levels 1000 --tps 10 \
            --hold "$hold1" --settle "$settle" --ramp-rate "$ramp"
        stop_nproxy
    fi
fi


# --- 5. persistence: scenario 1 with the Redis job store --------------
#
# A private redis-server (no RDB, no AOF) and the module with
# `llm_store redis://...` at the http level (default flush, 100 ms),
# otherwise the module of scenario 1; the floor and the module with the
# default memory store run the same load just before, back to back.
# llm-load reads Redis's INFO just before and after the hold (--redis):
# commands, socket reads, CPU.  The store sends each worker's writes as
# one pipelined round trip per flush at most.

redis_pid=

start_redis() {     # a private, empty redis-server on a free port
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
        --appendonly no --daemonize no --dir "$work" \
        >> "$work/redis.log" 2>&1 9>&- &
    redis_pid=$!
    pids+=("$redis_pid")
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] \
            && return 0
        kill -0 "$redis_pid" 2>/dev/null \
            || die "redis-server exited: $(tail -3 "$work/redis.log")"
        sleep 0.1
    done
    die "redis-server does not answer"
}

if want 5 && ! over_budget 5; then
    if ! command -v redis-server > /dev/null; then
        echo '{"scenario":"5","skipped":"redis-server is not installed"}' \
            >> "$work/skipped.json"
        log "5: persistence: skipped (redis-server is not installed)"
    else
        start_redis

        run s5-floor floor "$s1q" --levels 100 --tps 50 --hold "$hold1" \
            --settle "$settle"
        mock_idle
        start_module
        run s5-memory module "$s1q" --levels 100 --tps 50 \
            --hold "$hold1" --settle "$settle"
        stop_module
        start_module "llm_store redis://127.0.0.1:$redis_port;"
        run s5-redis module "$s1q" --levels 100 --tps 50 \
            --hold "$hold1" --settle "$settle" \
            --sample "redis=$redis_pid" --redis "127.0.0.1:$redis_port"
        stop_module

        # what the store holds now: the jobs of the run (ttl 1 h)
        cat > "$work/s5-store.json" <<EOF
{"flush_ms":100,"workers":2,
 "redis":"$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')",
 "keys":$(redis-cli -p "$redis_port" dbsize 2>/dev/null || echo -1),
 "used_memory":$(redis-cli -p "$redis_port" info memory 2>/dev/null \
                 | sed -n 's/^used_memory:\([0-9]*\).*/\1/p' | grep . \
                 || echo -1)}
EOF
        stop "$redis_pid"
        redis_pid=
    fi
fi


# --- 6. formats: the delta event through a user template -------------
#
# The story app's events as an llm_format block (named events, so that
# llm-load's --proto sse parser reads them: stamps in the delta's
# "content" string, the end at "event: complete").  Both module runs have
# the block at the http level; only the second chooses it in /generate.
# Back to back: the floor, then scenario 1's load (p99 added latency)
# with the default format and with the story format; then scenario 4's
# load (CPU per million tokens) with the default and the story format.

story_format=$(cat <<'EOF'
llm_format story {
        start    event=start    '{"type": "start", "job": $llm_job_id}';
        delta    event=delta    '{"type": "content", "content": $llm_delta}';
        complete event=complete '{"type": "complete", "story": {"text": $llm_text, "usage": $llm_usage}}';
        error    event=error    '{"type": "error", "error": $llm_error_message}';
    }
EOF
)

if want 6 && ! over_budget 6; then
    run s6-floor floor "$s1q" --levels 100 --tps 50 --hold "$hold1" \
        --settle "$settle"
    mock_idle
    start_module "$story_format"
    run s6-default module "$s1q" --levels 100 --tps 50 --hold "$hold1" \
        --settle "$settle"
    stop_module
    start_module "$story_format" "llm_format story;"
    run s6-story module "$s1q" --levels 100 --tps 50 --hold "$hold1" \
        --settle "$settle"
    stop_module
    start_module "$story_format"
    run s6-cpu-default module "$s4q" --levels 1000 --tps 10 \
        --hold "$hold1" --settle "$settle" --ramp-rate "$ramp"
    stop_module
    start_module "$story_format" "llm_format story;"
    run s6-cpu-story module "$s4q" --levels 1000 --tps 10 \
        --hold "$hold1" --settle "$settle" --ramp-rate "$ramp"
    stop_module
fi


# --- 7. pipelines: the module's time between steps, 7 steps against 1
#
# Two pipelines of 7 steps at the http level, each step taking the
# location's llm_pass (the client's query) and the previous step's output
# in its prompt; chosen in /generate by `llm_pipeline NAME;` (the
# location's llm_prompt is then unused).  llm-load reads the step events:
# the "duration" of each step (as the module measured it) and the receive
# times, from which the time between steps.
#  a) short: 7 non-streamed steps of one token each, as fast as the mock
#     goes, 1 then 50 pipelines at a time: the time from one step's token
#     to the next's at the mock (their stamps, the steps' outputs), the
#     events' (last step event - first step_start - sum of the steps'
#     durations) / 6, nginx CPU per step; and the same request straight
#     to the mock, one at a time, just before: its duration is the
#     upstream's share of a step.
#  b) streamed: 7 streamed steps of N tokens against one prompt of 7 x N
#     tokens (plain /generate), both at 50 tokens/s and 100 at a time
#     (scenario 1's load), the floor of the long stream just before: p99
#     added latency, CPU per million tokens, the streams' durations.

pipeline_steps() {  # pipeline_steps NAME STREAM: 7 steps
    local i
    echo "llm_pipeline $1 {"
    echo "        step s1 { prompt \"Write part 1 of a story.\"; stream $2; }"
    for i in 2 3 4 5 6 7; do
        echo "        step s$i { prompt \"Write part $i after: \$llm_step_s$(( i - 1 ))\"; stream $2; }"
    done
    echo "    }"
}
pipelines="$(pipeline_steps seven_short off)
    $(pipeline_steps seven_streamed on)"

s7aq="tokens=1&ttft=0&tps=0"
if [ -n "$quick" ]; then
    s7n=10          # tokens per step: streams of 1.4 s, done in the hold
else
    s7n=50          # 7 s, as scenario 1's 5 s
fi
# the first token after one token's interval (20 ms): N tokens take the
# mock N / 50 s, so the model's time is the same for 7 x N and 1 x 7N
s7step="tps=50&tokens=$s7n&ttft=20"
s7one="tps=50&tokens=$(( 7 * s7n ))&ttft=20"

# about 70 s in all (30 s with BENCH_QUICK)
s7need=$(( 3 * (hold + settle) + 3 * (hold1 + settle) + 10 ))

if want 7 && ! over_budget 7 "$s7need"; then
    echo "{\"tokens_per_step\":$s7n,\"steps\":7}" > "$work/s7-meta.json"
    run s7-steps-floor floor "$s7aq" --levels 1 --hold "$hold" \
        --settle "$settle"
    mock_idle
    start_module "$pipelines" "llm_pipeline seven_short;"
    run s7-steps module "$s7aq" --levels 1,50 --hold "$hold" \
        --settle "$settle"
    stop_module
    run s7-floor floor "$s7one" --levels 100 --tps 50 --hold "$hold1" \
        --settle "$settle"
    mock_idle
    start_module "$pipelines"
    run s7-one module "$s7one" --levels 100 --tps 50 --hold "$hold1" \
        --settle "$settle"
    stop_module
    start_module "$pipelines" "llm_pipeline seven_streamed;"
    run s7-seven module "$s7step" --levels 100 --tps 50 --hold "$hold1" \
        --settle "$settle"
    stop_module
fi


# --- 8. HTTPS upstream: the mock behind TLS, HTTP/1.1 and HTTP/2 -----
#
# A second nginx, the front, stands for a provider's edge in front of the
# mock: a plain listener, a TLS listener without http2 (ALPN gives
# HTTP/1.1) and one with http2 (libcurl takes h2 when ALPN offers it),
# each proxying to the mock with proxy_buffering off and a keepalive pool;
# a self-signed certificate made here (llm_ssl_verify off in the module)
# and a shared TLS session cache.  The module passes to one listener at a
# time, a fresh nginx each, under one load: 1,000 streams x 10 tokens/s,
# 5 s streams replaced as they end (200 new generations a second, in
# bursts: the streams start together), the first turnover in a 6 s
# settle, two in the hold, so that the hold shows both connections per
# stream and what a new generation costs once warm.  A probe samples every 0.5 s the module
# workers' ESTABLISHED connections to the listener (ss) and the front's
# accepted connections and requests (stub_status): an accepted connection
# is a TCP handshake and, on a TLS listener, a TLS handshake.

front_pid=

start_front() {
    local p=$work/front
    mkdir -p "$p/conf" "$p/logs"
    if [ ! -s "$p/conf/cert.pem" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -nodes -days 30 -subj /CN=127.0.0.1 \
            -keyout "$p/conf/key.pem" -out "$p/conf/cert.pem" \
            2> "$p/logs/openssl.log" || die "openssl: no certificate"
    fi
    front_plain=$(free_port)
    front_h1=$(free_port)
    front_h2=$(free_port)
    front_status=$(free_port)
    cat > "$p/conf/nginx.conf" <<EOF
# bench/run.sh: the front, TLS (and plain HTTP) in front of the mock
worker_processes 2;
worker_rlimit_nofile $rlimit;
error_log logs/error.log warn;
pid logs/nginx.pid;

events {
    worker_connections $wc_proxy;
}

http {
    log_format front '\$msec \$server_port \$connection '
                     '\$connection_requests \$ssl_session_reused '
                     '\$server_protocol \$status';
    access_log logs/access.log front buffer=256k flush=5s;

    # as a provider's edge: connections live long, hold many requests
    keepalive_timeout 300s;
    keepalive_requests 1000000;

    ssl_certificate     cert.pem;
    ssl_certificate_key key.pem;
    ssl_session_cache   shared:front:10m;

    upstream mock {
        server 127.0.0.1:$mock_port;
        keepalive 1024;
    }

    server {
        listen 127.0.0.1:$front_plain reuseport backlog=4096;
        listen 127.0.0.1:$front_h1 ssl reuseport backlog=4096;
        listen 127.0.0.1:$front_h2 ssl http2 reuseport backlog=4096;

        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }
    }

    server {
        listen 127.0.0.1:$front_status;
        access_log off;

        location = /status {
            stub_status;
        }
    }
}
EOF
    nginx -p "$p" -c conf/nginx.conf -e logs/error.log -g "$globals" \
        2> "$p/logs/stderr.log" 9>&- &
    front_pid=$!
    pids+=("$front_pid")
    wait_http "http://127.0.0.1:$front_status/status"
    front_workers=$(children "$front_pid" 2)
}

# probe_front PORT FILE: every 0.5 s until stopped, "time established
# accepts requests": the module workers' connections to PORT, the front's
# accepted connections and requests so far
probe_front() {
    local re
    re="pid=($(echo "$module_workers" | tr , '|')),"
    while :; do
        printf '%s %s %s\n' "$(date +%s.%N)" \
            "$(ss -Htnp state established "( dport = :$1 )" \
               | grep -cE "$re" || true)" \
            "$(curl -s --max-time 1 "http://127.0.0.1:$front_status/status" \
               | sed -n 3p)"
        sleep 0.5
    done > "$2"
}

s8q="tps=10&tokens=50&ttft=100"
s8level=1000
s8settle=6      # the first turnover: the hold measures warm pools
if [ -n "$quick" ]; then
    s8level=200
    s8settle=$settle
fi

if want 8 && ! over_budget 8 $(( 3 * (hold1 + s8settle + 6) )); then
    start_front
    printf '{"plain":%s,"h1":%s,"h2":%s,"level":%s,"query":"%s"}\n' \
        "$front_plain" "$front_h1" "$front_h2" "$s8level" "$s8q" \
        > "$work/s8-meta.json"
    for m in plain h1 h2; do
        case $m in
        plain) port=$front_plain; upstream_url=http://127.0.0.1:$port ;;
        h1)    port=$front_h1; upstream_url=https://127.0.0.1:$port ;;
        h2)    port=$front_h2; upstream_url=https://127.0.0.1:$port ;;
        esac
        start_module "" "llm_ssl_verify off;"
        probe_front "$port" "$work/s8-$m.probe" 9>&- &
        probe_pid=$!
        pids+=("$probe_pid")
        run "s8-$m" module "$s8q" --levels "$s8level" --tps 10 \
            --hold "$hold1" --settle "$s8settle" --ramp-rate "$ramp" \
            --sample "front=$front_workers"
        stop "$probe_pid"
        stop_module
    done
    upstream_url=
    stop "$front_pid"
    front_pid=
fi


# --- 9. long generations: one job of 100,000 tokens -------------------
#
# The assessment app's 38-minute generation (100,000 tokens at 44 a
# second), compressed: 10,000 tokens/s of 4 bytes each.  One background
# job, one follower on each worker (the other worker's through a
# mirror), both workers' RSS; the job read back (events, text); its keys
# in Redis (MEMORY USAGE); then resumes with Last-Event-ID from the start
# and from the middle.  With the memory store, then the Redis store, a
# fresh nginx each (bench/longgen.py).

s9tokens=100000
[ -n "$quick" ] && s9tokens=20000
s9q="tps=10000&tokens=$s9tokens&ttft=0&token_size=4"
long_locations=$(cat <<'EOF'
location = /long {
            llm_pass  http://127.0.0.1:MOCK/v1/chat/completions?$args;
            llm_model  bench;
            llm_prompt "Write a story.";
            llm_job_url /jobs/$llm_job_id;
            add_header X-Worker $pid always;
        }

        location ~ "^/jobs/(?<id>[A-Za-z0-9_-]{22})$" {
            llm_job $id;
            add_header X-Worker $pid always;
        }
EOF
)
long_locations=${long_locations/MOCK/$mock_port}

longgen() {     # longgen LABEL [REDIS PORT]
    log "s9-$1: one job of $s9tokens tokens ($(elapsed) s)"
    $python "$bench/longgen.py" --port "$nginx_module_port" \
        --workers "$module_workers" --query "$s9q" --tokens "$s9tokens" \
        --label "$1" ${2:+--redis "$2"} > "$work/s9-$1.json" 9>&- \
        || die "s9-$1: longgen.py failed"
}

if want 9 && ! over_budget 9 $(( 2 * s9tokens / 10000 + 20 )); then
    start_module "" "" "$long_locations"
    longgen memory
    stop_module
    if command -v redis-server > /dev/null; then
        start_redis
        start_module "llm_store redis://127.0.0.1:$redis_port;" "" \
            "$long_locations"
        longgen redis "$redis_port"
        stop_module
        stop "$redis_pid"
        redis_pid=
    fi
fi


# --- the report -------------------------------------------------------

printf '{"loadavg_end":"%s","elapsed":%d}\n' \
    "$(cut -d' ' -f1-3 /proc/loadavg)" "$(elapsed)" > "$work/meta-end.json"

# a smoke test or a partial run does not replace the day's full results
name=$day
[ "$only" != "$all" ] && name=$day-partial
[ -n "$quick" ] && name=$day-quick

$python "$bench/report.py" "$work" "$results/$name.md" "$results/$name.png"
if ! gnuplot -e "dir='$work'; out='$results/$name.png'" "$bench/plot.gp" \
     2> "$work/gnuplot.log"; then
    cat "$work/gnuplot.log" >&2
    die "gnuplot failed"
fi
log "wrote $results/$name.md and $results/$name.png in $(elapsed) s"
