#!/usr/bin/env bash
# Entry point of the Docker image (see Dockerfile): renders docker.conf (next
# to this script) like util/demo.sh renders nginx.conf, then runs nginx in
# the foreground as the container's main process.
#
#   OPENAI_API_KEY set:     api.openai.com, model $LLM_MODEL or gpt-4o-mini
#   ANTHROPIC_API_KEY set:  api.anthropic.com, $LLM_MODEL or
#                           claude-3-5-haiku-latest
#   LLM_UPSTREAM set:       that OpenAI-style URL (or Anthropic with
#                           LLM_PROVIDER=anthropic); LLM_MODEL is required;
#                           LLM_API_KEY is sent if set
#   none of them:           the mock model server (llm-mock) on 127.0.0.1
#
# /pipeline runs examples/pipeline/'s article.conf with its prompts/ (and,
# with the mock, its mock.json), read from pipeline/ beside this script.
#
# Everything else can be overridden, which also lets the script run outside
# Docker:
#
#   PORT          8080                 port to listen on
#   LLM_LISTEN    0.0.0.0              address to listen on
#   LLM_PREFIX    /var/lib/nginx-llm   nginx prefix: nginx.conf, html, tmp
#   LLM_MODULE    /usr/lib/nginx/modules/ngx_http_llm_module.so
#   LLM_MOCK      llm-mock             the mock server binary
#   LLM_MOCK_PORT 8089                 the mock's port (on 127.0.0.1)
#   LLM_TEMPLATE  <script dir>/docker.conf
#   LLM_HTML      <script dir>/index.html
#   NGINX         nginx                the nginx binary
#   LLM_USER      www-data             worker user when started as root
#
# With arguments, runs them instead (docker run IMAGE nginx -c /my.conf ...).
set -euo pipefail

if [ $# -gt 0 ]; then
    exec "$@"
fi

here=$(cd "$(dirname "$0")" && pwd)

port=${PORT:-8080}
listen=${LLM_LISTEN:-0.0.0.0}
prefix=${LLM_PREFIX:-/var/lib/nginx-llm}
module=${LLM_MODULE:-/usr/lib/nginx/modules/ngx_http_llm_module.so}
mock=${LLM_MOCK:-llm-mock}
mock_port=${LLM_MOCK_PORT:-8089}
template=${LLM_TEMPLATE:-$here/docker.conf}
html=${LLM_HTML:-$here/index.html}
nginx=${NGINX:-nginx}

die() { echo "docker-entrypoint: $*" >&2; exit 1; }
say() { echo "docker-entrypoint: $*" >&2; }

mock_pid=
provider=${LLM_PROVIDER:-openai}

if [ -n "${LLM_UPSTREAM:-}" ]; then
    upstream=$LLM_UPSTREAM
    model=${LLM_MODEL:-}
    key=${LLM_API_KEY:-}
    [ -n "$model" ] || die "LLM_UPSTREAM is set: set LLM_MODEL too"
elif [ -n "${OPENAI_API_KEY:-}" ]; then
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
    model="mock-model"
    key=
    command -v "$mock" > /dev/null || die "no API key given and $mock is missing"
    # the pipeline's steps answered from examples/pipeline/mock.json
    "$mock" --listen "127.0.0.1:$mock_port" --quiet \
        --script "$here/pipeline/mock.json" &
    mock_pid=$!
    say "no OPENAI_API_KEY, ANTHROPIC_API_KEY or LLM_UPSTREAM: using the" \
        "mock model server on 127.0.0.1:$mock_port"
fi

case "$provider" in
    openai|anthropic) ;;
    *) die "LLM_PROVIDER must be openai or anthropic, not \"$provider\"" ;;
esac

# the values go into nginx.conf inside double quotes: refuse what would
# change its meaning there ($ starts an nginx variable)
bad='["\$;{}[:space:]]'
check() {
    if [[ $2 =~ $bad ]]; then
        die "$1 contains a character that is not allowed here" \
            "(quote, backslash, \$, ;, {, }, white space)"
    fi
}
check "the upstream URL" "$upstream"
check "the model" "$model"
check "the API key" "$key"
check "LLM_PREFIX" "$prefix"
check "LLM_MODULE" "$module"
check "LLM_LISTEN" "$listen"
case "$port" in ''|*[!0-9]*) die "PORT must be a number" ;; esac
case "$upstream" in
    http://*|https://*) ;;
    *) die "the upstream URL must start with http:// or https://" ;;
esac

[ -f "$module" ] || die "$module is missing (LLM_MODULE)"
[ -f "$template" ] || die "$template is missing (LLM_TEMPLATE)"

# an IPv6 address needs brackets in "listen"
case "$listen" in
    *:*) listen_at="[$listen]:$port" ;;
    *)   listen_at="$listen:$port" ;;
esac

mkdir -p "$prefix/html" "$prefix/tmp"
[ -f "$html" ] && cp "$html" "$prefix/html/index.html"
# /pipeline: examples/pipeline/article.conf and its prompts
cp -r "$here/pipeline/article.conf" "$here/pipeline/prompts" "$prefix/"

# sed replacement text: escape \, & and the | delimiter
esc() { printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'; }

# the rendered file holds the API key: readable by its owner only
umask 077
sed -e "s|@PREFIX@|$(esc "$prefix")|g" \
    -e "s|@LISTEN@|$(esc "$listen_at")|g" \
    -e "s|@MODULE@|$(esc "$module")|g" \
    -e "s|@UPSTREAM@|$(esc "$upstream")|g" \
    -e "s|@PROVIDER@|$(esc "$provider")|g" \
    -e "s|@MODEL@|$(esc "$model")|g" \
    -e "s|@KEY@|$(esc "$key")|g" \
    "$template" > "$prefix/nginx.conf"
umask 022

user=()
if [ "$(id -u)" = 0 ]; then
    user=(-g "user ${LLM_USER:-www-data};")
fi

# give the mock a moment, and fail now rather than on the first request
if [ -n "$mock_pid" ]; then
    for _ in $(seq 50); do
        (exec 3<> "/dev/tcp/127.0.0.1/$mock_port") 2> /dev/null && break
        kill -0 "$mock_pid" 2> /dev/null || die "$mock exited (port $mock_port in use?)"
        sleep 0.1
    done
fi

say "nginx on $listen_at: GET /generate?theme=..., /pipeline?topic=...," \
    "the demo page at /"

# nginx replaces this shell: it gets the container's signals (STOPSIGNAL
# SIGQUIT: a graceful stop, open streams end with a "shutdown" event)
exec "$nginx" -p "$prefix/" -c "$prefix/nginx.conf" -e stderr "${user[@]}"
