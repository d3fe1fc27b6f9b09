#!/usr/bin/env bash
# Builds nginx and the module with clang's sanitizers, from nginx source:
#
#   util/build-sanitized.sh asan   build/asan/: nginx (objs/nginx), the
#                                  module and the echo module as dynamic
#                                  modules, with AddressSanitizer and
#                                  UndefinedBehaviorSanitizer (make asan)
#   util/build-sanitized.sh fuzz   build/fuzz/: nginx with the module
#                                  built in, instrumented for libFuzzer,
#                                  whose objects the fuzz targets link
#                                  (make fuzz, util/fuzz.sh)
#
# Sources: NGINX_SRC (an nginx >= 1.22 tree, release or GitHub layout) and
# ECHO_SRC (echo-nginx-module, asan only); unset, build/src/nginx-1.22.1
# and build/src/echo-nginx-module, cloned there from GitHub when absent
# (1.22.1 and v0.63 are what Debian 12 ships).  Each build copies its
# source, so the two builds and the source tree stay apart.
set -euo pipefail

mode=${1:-}
top=$(cd "$(dirname "$0")/.." && pwd)
out=$top/build/$mode
cc=${SANITIZE_CC:-clang-14}

case "$mode" in
    asan|fuzz) ;;
    *) echo "usage: $0 asan|fuzz" >&2; exit 2 ;;
esac

command -v "$cc" > /dev/null \
    || { echo "build-sanitized: $cc is missing (util/bootstrap.sh fuzz)" >&2;
         exit 1; }

fetch() {    # fetch DIR URL TAG: a shallow clone unless DIR exists
    [ -d "$1" ] && return
    echo "build-sanitized: cloning $2 ($3) into $1" >&2
    git clone -q --depth 1 -b "$3" "$2" "$1" || {
        echo "build-sanitized: no source in $1: set NGINX_SRC/ECHO_SRC" >&2
        exit 1
    }
}

nginx_src=${NGINX_SRC:-$top/build/src/nginx-1.22.1}
[ -n "${NGINX_SRC:-}" ] \
    || fetch "$nginx_src" https://github.com/nginx/nginx release-1.22.1
nginx_src=$(cd "$nginx_src" && pwd)

# -fno-sanitize=alignment: nginx reads unaligned words on purpose on x86
# (NGX_HAVE_NONALIGNED: ngx_str4cmp() and friends in the request parser)
san="-fsanitize=address,undefined -fno-sanitize=alignment"
cflags="-O1 -g -fno-omit-frame-pointer $san"
ldflags="$san"

conf=(--with-compat --with-threads --with-debug --with-http_v2_module
      --with-http_ssl_module --with-http_realip_module
      --with-http_auth_request_module --with-http_stub_status_module
      --with-http_slice_module --with-http_dav_module --with-pcre-jit)

if [ "$mode" = asan ]; then
    echo_src=${ECHO_SRC:-$top/build/src/echo-nginx-module}
    [ -n "${ECHO_SRC:-}" ] \
        || fetch "$echo_src" https://github.com/openresty/echo-nginx-module \
                 v0.63
    echo_src=$(cd "$echo_src" && pwd)
    conf+=(--add-dynamic-module="$top" --add-dynamic-module="$echo_src")

    # Each dynamic module defines ngx_modules again (objs/*_modules.c) and
    # the binary's, exported with -Wl,-E, wins; registered by that name,
    # the module's 16-byte copy would poison the binary's array (ASan
    # reports its copy at a reload).  ODR indicators register each copy
    # through a private alias, at its own address.
    cflags="$cflags -fsanitize-address-use-odr-indicator"
else
    # edges of nginx's own code count as coverage too: they are the
    # pools, arrays and parsers the module's code runs through
    cflags="$cflags -fsanitize=fuzzer-no-link"
    conf+=(--add-module="$top")
fi

tree=$out/nginx
if [ ! -d "$tree" ] || [ "$(cat "$out/.source" 2>/dev/null)" != "$nginx_src" ]
then
    rm -rf "$tree"
    mkdir -p "$out"
    cp -r "$nginx_src" "$tree"
    echo "$nginx_src" > "$out/.source"
fi

# GitHub's tree has auto/configure only, a release both
configure=./configure
[ -x "$tree/configure" ] || configure=auto/configure

stamp=$tree/objs/.llm_configured
want="$(printf '%s\n' "$cc" "$cflags" "${conf[@]}" | md5sum)"
want="$want $(md5sum < "$top/config")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    (cd "$tree" && $configure --with-cc="$cc" --with-cc-opt="$cflags" \
        --with-ld-opt="$ldflags" "${conf[@]}" > "$out/configure.log" 2>&1) || {
        tail -n 20 "$out/configure.log" >&2
        exit 1
    }
    echo "$want" > "$stamp"
fi

# -j2: the machine's two cores; nice: others' work goes first
nice -n 10 make -s -j2 -C "$tree" -f objs/Makefile > "$out/make.log" 2>&1 || {
    grep -E 'error|Error' "$out/make.log" | head -n 20 >&2
    exit 1
}

echo "built $tree/objs/nginx"
