#!/usr/bin/env bash
# Runs one of examples/NAME/ (make example NAME=...): nginx with the module
# and examples/NAME/nginx.conf on 127.0.0.1:$DEMO_PORT (8080), until
# Ctrl-C or SIGTERM; then it stops everything it started.
#
#   OPENAI_API_KEY set:     every step talks to api.openai.com
#                           (model: $LLM_MODEL or gpt-4o-mini)
#   ANTHROPIC_API_KEY set:  to api.anthropic.com (claude-3-5-haiku-latest)
#   EXAMPLE_UPSTREAM=http://host:port
#                           to any OpenAI-compatible server there
#                           (/v1/chat/completions; model: $LLM_MODEL)
#   none of them:           the project's mock model server, answering from
#                           examples/NAME/mock.json when there is one
#
# The configuration's @MODULE@, @PREFIX@, @PORT@, @UPSTREAM@, @PROVIDER@,
# @MODEL@, @KEY@ and @REDIS@ are filled in; @REDIS@ starts a private
# redis-server.  Files beside nginx.conf (prompts/...) are copied with it.
# EXAMPLE_ONCE=1 stops after the first request.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
name=${1:?usage: util/example.sh NAME (one of: $(ls "$top/examples" | tr '\n' ' '))}
src=$top/examples/$name
[ -f "$src/nginx.conf" ] || { echo "example: no $src/nginx.conf" >&2; exit 1; }

port=${DEMO_PORT:-8080}
mock_port=$((port + 1))
redis_port=$((port + 2))
prefix=$top/build/example-$name
rm -rf "$prefix"
mkdir -p "$prefix/logs" "$prefix/html"
cp -r "$src" "$prefix/conf"
[ -f "$src/index.html" ] && cp "$src/index.html" "$prefix/html/"

pids=()
cleanup() {
    trap - EXIT INT TERM
    local pid _
    if [ -f "$prefix/logs/nginx.pid" ]; then
        pid=$(cat "$prefix/logs/nginx.pid")
        # gracefully, then fast (the master stops its workers), then not
        for sig in QUIT TERM KILL; do
            kill -"$sig" "$pid" 2>/dev/null || break
            for _ in $(seq 30); do
                kill -0 "$pid" 2>/dev/null || break 2
                sleep 0.1
            done
        done
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

model=${LLM_MODEL:-}
key=
provider=openai

if [ -n "${OPENAI_API_KEY:-}" ]; then
    upstream=https://api.openai.com/v1/chat/completions
    model=${model:-gpt-4o-mini}
    key=$OPENAI_API_KEY
elif [ -n "${ANTHROPIC_API_KEY:-}" ]; then
    provider=anthropic
    upstream=https://api.anthropic.com/v1/messages
    model=${model:-claude-3-5-haiku-latest}
    key=$ANTHROPIC_API_KEY
elif [ -n "${EXAMPLE_UPSTREAM:-}" ]; then
    upstream=${EXAMPLE_UPSTREAM%/}/v1/chat/completions
    model=${model:-default}
else
    upstream=http://127.0.0.1:$mock_port/v1/chat/completions
    model=mock-model
    script=()
    [ -f "$src/mock.json" ] && script=(--script "$src/mock.json")
    "$top/build/llm-mock" --listen "127.0.0.1:$mock_port" --quiet \
        "${script[@]}" &
    pids+=($!)
    echo "example: the mock model server on port $mock_port" \
         "(set OPENAI_API_KEY, ANTHROPIC_API_KEY or EXAMPLE_UPSTREAM for a" \
         "real one)"
fi

if grep -q @REDIS@ "$src/nginx.conf"; then
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
        --appendonly no > "$prefix/logs/redis.log" 2>&1 &
    pids+=($!)
fi

umask 077
sed -e "s|@PREFIX@|$prefix|g" -e "s|@PORT@|$port|g" \
    -e "s|@MODULE@|$top/build/ngx_http_llm_module.so|g" \
    -e "s|@UPSTREAM@|$upstream|g" -e "s|@PROVIDER@|$provider|g" \
    -e "s|@MODEL@|$model|g" -e "s|@KEY@|$key|g" \
    -e "s|@REDIS@|redis://127.0.0.1:$redis_port|g" \
    "$src/nginx.conf" > "$prefix/conf/nginx.conf"
umask 022

user=()
[ "$(id -u)" = 0 ] && user=(-g "user root;")
nginx -p "$prefix" -c conf/nginx.conf -e logs/error.log "${user[@]}"

for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.1
done

if [ -x "$src/request.sh" ]; then
    cmd=$("$src/request.sh" "$port")
else
    cmd="curl -sN 'http://127.0.0.1:$port/generate?topic=streaming'"
fi

echo "example: $cmd"
echo
eval "$cmd"
echo

if [ -n "${EXAMPLE_ONCE:-}" ]; then
    exit 0
fi

echo "example: serving on http://127.0.0.1:$port/ until Ctrl-C"
while sleep 3600; do :; done
