#!/usr/bin/env bash
# Self-tests of the bundled Test::Nginx::Socket (t/lib).
#
#   bash t/selftest/run.sh [FILE.tn ...]
#
# pass/*.tn must pass.  fail/*.tn must fail, and precisely as intended: each
# "# expect: REGEX" line in the file must match a line of its output, and
# every "not ok" line must match one of them.  The files end in .tn, so
# `prove -r t/` never picks them up.
#
# They use stock nginx and the echo module only, on a private server root
# (t/servroot_selftest) and a free port; the caller's TEST_NGINX_* settings
# are ignored except TEST_NGINX_BINARY.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1

for v in $(compgen -e | grep '^TEST_NGINX_'); do
    [ "$v" = TEST_NGINX_BINARY ] || unset "$v"
done

free_port() {
    perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Listen => 1,
        LocalAddr => "127.0.0.1", LocalPort => 0)->sockport'
}

export TEST_NGINX_LOAD_MODULES=${SELFTEST_LOAD_MODULES:-/usr/lib/nginx/modules/ngx_http_echo_module.so}
export TEST_NGINX_SERVROOT=$top/t/servroot_selftest
TEST_NGINX_SERVER_PORT=$(free_port) || exit 1
export TEST_NGINX_SERVER_PORT

if [ $# -gt 0 ]; then
    files=("$@")
else
    files=(t/selftest/pass/*.tn t/selftest/fail/*.tn)
fi

ok=0
bad=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

for f in "${files[@]}"; do
    start=$(date +%s.%N)
    perl -I t/lib "$f" > "$out" 2>&1
    rc=$?
    secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
    problem=
    case "$f" in
    *pass/*)
        if [ $rc -ne 0 ]; then
            problem="exit status $rc"
        elif ! grep -q '^ok ' "$out"; then
            problem="no assertion ran"
        fi
        ;;
    *fail/*)
        mapfile -t expects < <(sed -n 's/^# expect: //p' "$f")
        if [ $rc -eq 0 ]; then
            problem="passed, but must fail"
        elif [ ${#expects[@]} -eq 0 ]; then
            problem="no '# expect:' line in the file"
        fi
        for re in "${expects[@]}"; do
            grep -Eq -- "$re" "$out" || problem="${problem:+$problem; }nothing matches /$re/"
        done
        while IFS= read -r line; do
            hit=
            for re in "${expects[@]}"; do
                if printf '%s\n' "$line" | grep -Eq -- "$re"; then hit=1; break; fi
            done
            [ -n "$hit" ] || problem="${problem:+$problem; }unexpected: $line"
        done < <(grep '^not ok' "$out")
        ;;
    *)
        problem="not under pass/ or fail/"
        ;;
    esac
    if [ -z "$problem" ]; then
        ok=$((ok + 1))
        printf 'selftest %-40s ok (%ss)\n' "$f" "$secs"
    else
        bad=$((bad + 1))
        printf 'selftest %-40s FAILED: %s\n' "$f" "$problem"
        sed 's/^/    | /' "$out"
    fi
done

echo "selftest: $ok ok, $bad failed"
[ $bad -eq 0 ]
