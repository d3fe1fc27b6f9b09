#!/usr/bin/env bash
# The demo: nginx with the module and examples/nginx.conf on 127.0.0.1:8080.
#
#   OPENAI_API_KEY set:     talks to api.openai.com (model: $LLM_MODEL or
#                           gpt-4o-mini)
#   ANTHROPIC_API_KEY set:  talks to api.anthropic.com (claude-3-5-haiku-latest)
#   neither:                the project's mock model server (build/llm-mock),
#                           which paces tokens like a real model
#
# Serves /generate (one prompt), /pipeline (examples/pipeline/'s outline,
# draft and review), /jobs/ID and the demo page (examples/index.html).
# Streams one generation with curl, then keeps serving the page until
# Ctrl-C.  DEMO_ONCE=1 stops after the curl.  DEMO_PORT picks the port.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
port=${DEMO_PORT:-8080}
mock_port=$((port + 1))
prefix=$top/build/demo
mkdir -p "$prefix/conf" "$prefix/logs" "$prefix/html"
cp "$top/examples/index.html" "$prefix/html/"
# the pipeline of /pipeline: examples/pipeline/article.conf and its prompts
cp -r "$top/examples/pipeline/article.conf" "$top/examples/pipeline/prompts" \
    "$prefix/conf/"

pids=()
cleanup() {
    [ -f "$prefix/logs/nginx.pid" ] && kill "$(cat "$prefix/logs/nginx.pid")" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

if [ -n "${OPENAI_API_KEY:-}" ]; then
    provider=openai
    upstream=https://api.openai.com/v1/chat/completions
    model=${LLM_MODEL:-gpt-4o-mini}
    key=$OPENAI_API_KEY
elif [ -n "${ANTHROPIC_API_KEY:-}" ]; then
    provider=anthropic
    upstream=https://api.anthropic.com/v1/messages
    model=${LLM_MODEL:-claude-3-5-haiku-latest}
    key=$ANTHROPIC_API_KEY
else
    provider=openai
    upstream=http://127.0.0.1:$mock_port/v1/chat/completions
    model=mock-model
    key=
    # the pipeline's steps are answered from examples/pipeline/mock.json,
    # a single prompt with the mock's own story
    "$top/build/llm-mock" --listen "127.0.0.1:$mock_port" --quiet \
        --script "$top/examples/pipeline/mock.json" &
    pids+=($!)
    echo "demo: no OPENAI_API_KEY or ANTHROPIC_API_KEY: using the mock model" \
         "server (build/llm-mock) on port $mock_port"
fi

umask 077
sed -e "s|@PREFIX@|$prefix|g" -e "s|@PORT@|$port|g" \
    -e "s|@MODULE@|$top/build/ngx_http_llm_module.so|g" \
    -e "s|@UPSTREAM@|$upstream|g" -e "s|@PROVIDER@|$provider|g" \
    -e "s|@MODEL@|$model|g" -e "s|@KEY@|$key|g" \
    "$top/examples/nginx.conf" > "$prefix/conf/nginx.conf"
umask 022

user=()
[ "$(id -u)" = 0 ] && user=(-g "user root;")
nginx -p "$prefix" -c conf/nginx.conf -e logs/error.log "${user[@]}"

for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
done

echo "demo: curl -N 'http://127.0.0.1:$port/generate?theme=a+lighthouse+keeper'"
echo
curl -sN "http://127.0.0.1:$port/generate?theme=a+lighthouse+keeper"
echo

if [ -n "${DEMO_ONCE:-}" ]; then
    exit 0
fi

echo "demo: open http://127.0.0.1:$port/ in a browser; Ctrl-C stops"
while sleep 3600; do :; done
