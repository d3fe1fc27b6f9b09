#!/usr/bin/env bash
# The suite under AddressSanitizer and UndefinedBehaviorSanitizer (make
# asan): nginx, this module and the echo module built from source with
# both (util/build-sanitized.sh asan), then util/test.sh with that nginx.
#
#   util/asan.sh                   the whole suite
#   util/asan.sh t/010-stream.t    these files (arguments go to util/test.sh)
#
# Every process writes its reports to build/asan/logs/ (ASan's and UBSan's
# log_path, with the pid); leaks count (LeakSanitizer at each exit).  Any
# report fails the run, whatever the tests said; build/asan/logs/ keeps
# them.  util/lsan.supp and util/ubsan.supp list what is nginx's own and
# not the module's, each with its reason.
set -u

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
out=$top/build/asan
logs=$out/logs

util/build-sanitized.sh asan || exit 1

rm -rf "$logs"
mkdir -p "$logs"

objs=$out/nginx/objs
export TEST_NGINX_BINARY=$objs/nginx
export TEST_NGINX_LOAD_MODULES="$objs/ngx_http_llm_module.so \
$objs/ngx_http_echo_module.so"

# the bundled runner's waits (timing only) for an nginx two to three times
# slower; the tests' own expectations do not change
export TEST_NGINX_TIMEOUT_SCALE=${TEST_NGINX_TIMEOUT_SCALE:-3}

# nginx keeps the environment of its start (workers fork from it), so the
# options reach every nginx process; node and perl are not instrumented
#
# detect_odr_violation=0: every dynamic module defines its own ngx_modules
# and ngx_module_names (objs/*_modules.c), as the binary does; nginx reads
# a module's with dlsym() on its handle, by design
#
# exitcode=0: a process's exit status stays its own (a daemon's parent
# that exits with a leak report would otherwise fail nginx's start); the
# reports decide, below.  Both sanitizers write to the same files.
asan=log_path=$logs/report:detect_leaks=1:detect_odr_violation=0:exitcode=0
ubsan=log_path=$logs/report:print_stacktrace=1
ubsan+=:suppressions=$top/util/ubsan.supp
export ASAN_OPTIONS="$asan:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="$ubsan:${UBSAN_OPTIONS:-}"
lsan=suppressions=$top/util/lsan.supp:print_suppressions=0
export LSAN_OPTIONS="$lsan:${LSAN_OPTIONS:-}"

start=$(date +%s)
util/test.sh "$@"
status=$?
echo "asan: the suite took $(( $(date +%s) - start ))s" >&2

reports=$(ls "$logs")
if [ -n "$reports" ]; then
    echo "asan: sanitizer reports (build/asan/logs/):" >&2
    for f in $reports; do
        echo "---- $f" >&2
        head -n 40 "$logs/$f" >&2
    done
    status=1
fi

exit $status
