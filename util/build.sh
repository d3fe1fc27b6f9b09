#!/usr/bin/env bash
# Builds build/ngx_http_llm_module.so.
#
#   NGINX_SRC unset: against the installed Debian nginx, from the configure
#                    tree that nginx-dev installs in /usr/share/nginx/src;
#   NGINX_SRC=DIR:   inside an nginx >= 1.22 source tree (configured there
#                    with --with-compat --with-threads unless NGINX_CONF_ARGS
#                    says otherwise).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/build
mkdir -p "$build"

if [ -z "${NGINX_SRC:-}" ]; then
    if [ ! -f /usr/share/nginx/src/conf_flags ]; then
        echo "build: /usr/share/nginx/src is missing: apt-get install nginx-dev" \
             "(or run util/bootstrap.sh, or set NGINX_SRC)" >&2
        exit 1
    fi
    tree=$build/nginx
    if [ ! -f "$tree/conf_flags" ] \
       || ! cmp -s /usr/share/nginx/src/conf_flags "$tree/conf_flags"; then
        rm -rf "$tree"
        cp -r /usr/share/nginx/src "$tree"
    fi
    # shellcheck disable=SC1091
    . "$tree/conf_flags"
    conf_args=("${NGX_CONF_FLAGS[@]}")
else
    tree=$(cd "$NGINX_SRC" && pwd)
    if [ -n "${NGINX_CONF_ARGS:-}" ]; then
        read -r -a conf_args <<< "$NGINX_CONF_ARGS"
    else
        conf_args=(--with-compat --with-threads)
    fi
fi

# Re-run configure only when its inputs change: it takes longer than make.
stamp=$tree/objs/.llm_configured
want="$(printf '%s\n' "${conf_args[@]}" "$top" | md5sum) $(md5sum < "$top/config")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    (cd "$tree" && ./configure "${conf_args[@]}" \
        --add-dynamic-module="$top" > "$build/configure.log" 2>&1) || {
        tail -n 20 "$build/configure.log" >&2
        exit 1
    }
    echo "$want" > "$stamp"
fi

make -s -C "$tree" -f objs/Makefile modules
# a new file, not new bytes under a running nginx that mapped the old one
cp "$tree/objs/ngx_http_llm_module.so" "$build/ngx_http_llm_module.so.new"
mv -f "$build/ngx_http_llm_module.so.new" "$build/ngx_http_llm_module.so"
echo "built $build/ngx_http_llm_module.so"

# A dynamic module links with undefined symbols: prove that it loads.
if [ -z "${NGINX_SRC:-}" ] && command -v nginx >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    printf 'load_module %s;\nevents {}\nhttp {}\n' \
        "$build/ngx_http_llm_module.so" > "$tmp/nginx.conf"
    if ! nginx -t -q -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/error.log" \
           -g "pid $tmp/nginx.pid;" 2> "$tmp/out"; then
        cat "$tmp/out" "$tmp/error.log" >&2 2>/dev/null
        rm -rf "$tmp"
        echo "build: the module does not load into $(command -v nginx)" >&2
        exit 1
    fi
    rm -rf "$tmp"
fi
