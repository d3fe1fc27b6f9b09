#!/usr/bin/env bash
# The libFuzzer targets in fuzz/ (make fuzz): builds them against the
# instrumented nginx of util/build-sanitized.sh fuzz, replays
# fuzz/regressions/TARGET/*, then fuzzes each target in turn for
# FUZZ_TIME seconds (default 60) under nice -n 19, from fuzz/corpus/TARGET
# and the corpus kept in build/fuzz/corpus/TARGET.
#
#   util/fuzz.sh                 all targets
#   util/fuzz.sh usse redis      these
#   FUZZ_TIME=0 util/fuzz.sh     build and replay only
#
# A crash, a sanitizer report, a leak or a failed check fails the run: the
# input is left in build/fuzz/crashes/ (make it a regression: copy it to
# fuzz/regressions/TARGET/).  Logs: build/fuzz/TARGET.log; a summary of
# executions, coverage and corpus per target: build/fuzz/summary.txt.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
out=$top/build/fuzz
time=${FUZZ_TIME:-60}
cc=${SANITIZE_CC:-clang-14}

util/build-sanitized.sh fuzz

objs=$out/nginx/objs
incs=(-I"$objs" -I"$out/nginx/src/core" -I"$out/nginx/src/event"
      -I"$out/nginx/src/event/modules" -I"$out/nginx/src/os/unix"
      -I"$out/nginx/src/http" -I"$out/nginx/src/http/modules"
      -I"$out/nginx/src/http/v2" -Isrc -Ifuzz)

# nginx's objects and the module's, with nginx's main() renamed: the
# fuzzer brings its own
objcopy --redefine-sym main=ngx_http_llm_fuzz_nginx_main \
    "$objs/src/core/nginx.o" "$out/nginx-main.o"
mapfile -t nobjs < <(find "$objs" -name '*.o' ! -path '*/src/core/nginx.o' \
                     | sort)
read -r -a libs <<< "$(awk '/^objs\/nginx:/ { f = 1 }
                            f && /-l[a-z]/ { sub(/\\$/, ""); print; exit }' \
                       "$objs/Makefile")"

flags=(-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize=alignment -fno-sanitize-recover=undefined
       -Wall -Wextra -Werror -Wno-unused-parameter)

mapfile -t all < <(ls fuzz/*.c | sed -e 's|fuzz/||' -e 's|\.c$||' \
                   | grep -v '^ngx_http_llm_fuzz$')
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

for t in "${targets[@]}"; do
    [ -f "fuzz/$t.c" ] || { echo "fuzz: no target $t" >&2; exit 2; }
    nice -n 10 "$cc" "${flags[@]}" "${incs[@]}" -o "$out/$t" "fuzz/$t.c" \
        fuzz/ngx_http_llm_fuzz.c "${nobjs[@]}" "$out/nginx-main.o" \
        "${libs[@]}" -ldl
done

# leaks count; UBSan stops at its first report
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

status=0
mkdir -p "$out/crashes"

for t in "${targets[@]}"; do
    if [ -d "fuzz/regressions/$t" ] && [ -n "$(ls "fuzz/regressions/$t")" ]
    then
        if ! "$out/$t" fuzz/regressions/"$t"/* > "$out/$t.replay.log" 2>&1
        then
            echo "fuzz: $t: a regression input fails" \
                 "(build/fuzz/$t.replay.log)" >&2
            status=1
        fi
    fi
done

[ "$time" -gt 0 ] || exit $status

printf '%-10s %10s %8s %8s %8s %s\n' target execs cov ft corpus crashes \
    > "$out/summary.txt"

for t in "${targets[@]}"; do
    mkdir -p "$out/corpus/$t"
    echo "fuzz: $t for ${time}s" >&2
    rc=0
    nice -n 19 "$out/$t" -max_total_time="$time" -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$out/crashes/$t-" \
        "$out/corpus/$t" "fuzz/corpus/$t" > "$out/$t.log" 2>&1 || rc=$?

    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log" \
            | tail -n 1)
    last=$(grep -aE '^#[0-9]+[[:space:]]+(DONE|INITED|NEW|REDUCE|pulse)' \
           "$out/$t.log" | tail -n 1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")
    corp=$(ls "$out/corpus/$t" | wc -l)
    crashes=0
    if [ $rc -ne 0 ]; then
        crashes=1
        status=1
        echo "fuzz: $t FAILED (exit $rc): see build/fuzz/$t.log" >&2
        grep -aE '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$out/$t.log" \
            | head -n 5 >&2
    fi
    printf '%-10s %10s %8s %8s %8s %s\n' "$t" "${execs:-?}" "${cov:-?}" \
        "${ft:-?}" "$corp" "$crashes" >> "$out/summary.txt"
done

cat "$out/summary.txt"
exit $status
