#!/usr/bin/env bash
# Makes the Dockerfile's base images, debian:bookworm and
# debian:bookworm-slim, from Debian's mirror with debootstrap, for a
# container engine that cannot pull them from a registry (the development
# machine reaches Debian's mirror and nothing else).  Root, debootstrap.
#
#   ENGINE         podman (default) or docker
#   DEBIAN_MIRROR  http://deb.debian.org/debian
set -euo pipefail

engine=${ENGINE:-podman}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase bookworm "$root" "$mirror"

# the sources of Debian's own image: the release, its updates, security
cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
rm -rf "$root/var/lib/apt/lists"/* "$root/var/cache/apt"/*.bin

tar -C "$root" -c . | "$engine" import --change 'CMD ["bash"]' - docker.io/library/debian:bookworm
"$engine" tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim
