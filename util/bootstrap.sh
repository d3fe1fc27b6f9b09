#!/usr/bin/env bash
# Installs every Debian package that the build, the demo and the tests need
# (with "bench", the benchmarks' too; with "fuzz", those of make fuzz and
# make asan).  Idempotent: does nothing when all are there.
set -euo pipefail

pkgs=(
    build-essential nginx-core nginx-dev libnginx-mod-http-echo
    libcurl4-openssl-dev libjansson-dev libhiredis-dev libpcre3-dev
    libssl-dev zlib1g-dev
    redis-server tini valgrind curl procps
    libtest-base-perl libtext-diff-perl libwww-perl libipc-run-perl
    libtest-longstring-perl liblist-moreutils-perl liburi-perl
    libhttp-message-perl
    chromium python3-prometheus-client
)

# "util/bootstrap.sh bench": also what the benchmark's baseline and plot need
if [ "${1:-}" = bench ]; then
    pkgs+=(gnuplot-nox python3-fastapi python3-uvicorn python3-aiohttp
           python3-uvloop python3-httptools)
fi

# "util/bootstrap.sh fuzz": the sanitizers and libFuzzer of make fuzz and
# make asan, and git to fetch the nginx and echo module sources they build
if [ "${1:-}" = fuzz ]; then
    pkgs+=(clang-14 libfuzzer-14-dev git)
fi

# the npm test clients need node and npm; a machine may have its own
command -v node > /dev/null || pkgs+=(nodejs)
command -v npm > /dev/null || pkgs+=(npm)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "bootstrap: installing ${missing[*]}"

sudo=
if [ "$(id -u)" != 0 ]; then
    sudo=sudo
fi

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# the packaged nginx must not hold port 80 or run as a service here
if command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
fi
$sudo service nginx stop >/dev/null 2>&1 || true
$sudo service redis-server stop >/dev/null 2>&1 || true
