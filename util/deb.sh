#!/usr/bin/env bash
# Builds build/libnginx-mod-http-llm_<version>_<arch>.deb from
# build/ngx_http_llm_module.so (make deb), laid out as Debian packages its
# own nginx modules (libnginx-mod-http-echo, ...) with dh_nginx:
#
#   /usr/lib/nginx/modules/ngx_http_llm_module.so       stripped
#   /usr/share/nginx/modules-available/mod-http-llm.conf the load_module line
#   /etc/nginx/modules-enabled/50-mod-http-llm.conf      the symlink made by
#                                                         postinst, moved
#                                                         aside by prerm,
#                                                         removed on purge
#
# Depends: the nginx-abi-* virtual package of the nginx it was built
# against (nginx-dev's debian/libnginx-mod.abisubstvars, where dh_nginx
# reads it) and the libraries dpkg-shlibdeps finds.  The maintainer
# scripts are dh_nginx's own (nginx-dev's debhelper autoscripts).
#
#   util/deb.sh VERSION      e.g. 0.1.0: the package is VERSION-1
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/build
version=${1:?usage: util/deb.sh VERSION}-1
pkg=libnginx-mod-http-llm
so=$build/ngx_http_llm_module.so
abi_file=/usr/share/nginx/src/debian/libnginx-mod.abisubstvars
autoscripts=/usr/share/debhelper/autoscripts

die() { echo "deb: $*" >&2; exit 1; }

[ -f "$so" ] || die "$so is missing (make module)"
[ -z "${NGINX_SRC:-}" ] || die "a package is for Debian's nginx: build without NGINX_SRC"
[ -f "$abi_file" ] || die "$abi_file is missing: apt-get install nginx-dev"
cmp -s "$abi_file" "$build/nginx/debian/libnginx-mod.abisubstvars" \
    || die "build/nginx is not nginx-dev's tree: make module"
command -v dpkg-shlibdeps > /dev/null || die "dpkg-shlibdeps is missing: apt-get install dpkg-dev"

abi=$(sed -n 's/^nginx:abi=//p' "$abi_file")
[ -n "$abi" ] || die "no nginx:abi in $abi_file"
arch=$(dpkg --print-architecture)

# dpkg-shlibdeps wants a source tree: debian/control and debian/PACKAGE/
work=$build/deb
root=$work/debian/$pkg
rm -rf "$work"
mkdir -p "$root/DEBIAN" "$root/usr/lib/nginx/modules" \
         "$root/usr/share/nginx/modules-available" "$root/usr/share/doc/$pkg"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$pkg" "$pkg" \
    > "$work/debian/control"

install -m 644 "$so" "$root/usr/lib/nginx/modules/"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    "$root/usr/lib/nginx/modules/ngx_http_llm_module.so"

echo 'load_module modules/ngx_http_llm_module.so;' \
    > "$root/usr/share/nginx/modules-available/mod-http-llm.conf"

cat > "$root/usr/share/doc/$pkg/copyright" <<'EOF'
ngx_http_llm_module: a dynamic nginx module that streams language model
generations as Server-Sent Events.

Copyright (C) ngx_http_llm_module authors
EOF
{
    echo "$pkg ($version) unstable; urgency=medium"
    echo
    echo "  * Built from the ngx_http_llm_module sources (make deb)."
    echo
    echo " -- ngx_http_llm_module authors <nobody@localhost>  $(date -R)"
} | gzip -9n > "$root/usr/share/doc/$pkg/changelog.Debian.gz"

shlibs=$(cd "$work" && dpkg-shlibdeps -O -e"debian/$pkg/usr/lib/nginx/modules/ngx_http_llm_module.so")
shlibs=${shlibs#shlibs:Depends=}

# dh_nginx's maintainer scripts: #NAMES# is the modules-available file and
# its link in modules-enabled, at dh_nginx's default priority 50
for script in postinst prerm postrm; do
    {
        printf '#!/bin/sh\nset -e\n# Automatically added by dh_nginx (util/deb.sh)\n'
        sed 's/#NAMES#/mod-http-llm.conf:50-mod-http-llm.conf/' "$autoscripts/$script-nginx"
        printf '# End automatically added section\n'
    } > "$root/DEBIAN/$script"
    chmod 755 "$root/DEBIAN/$script"
done

cat > "$root/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: ngx_http_llm_module authors <nobody@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $abi, $shlibs
Recommends: nginx
Section: httpd
Priority: optional
Multi-Arch: foreign
Description: LLM generation endpoints for Nginx, streamed as Server-Sent Events
 ngx_http_llm_module turns an nginx location into a generation endpoint:
 the request's inputs go into a prompt or a pipeline of steps, the module
 calls an OpenAI-style or Anthropic provider and streams the tokens and
 progress to the client as Server-Sent Events.  Generations are jobs kept
 in shared memory or Redis: a client that reconnects with Last-Event-ID
 resumes, a job can be read and cancelled by id.
EOF

(cd "$root" && find usr -type f -exec md5sum {} + | sort -k 2) > "$root/DEBIAN/md5sums"

deb=$build/${pkg}_${version}_$arch.deb
dpkg-deb --root-owner-group --build "$root" "$deb" > /dev/null
echo "built $deb"
