# ngx_http_llm_module on Debian 12's nginx.
#
#   docker build -t ngx-llm .
#   docker run --rm -p 8080:8080 ngx-llm                          # mock model
#   docker run --rm -p 8080:8080 -e OPENAI_API_KEY=sk-... ngx-llm
#   docker run --rm -p 8080:8080 -e ANTHROPIC_API_KEY=... ngx-llm
#
# then: curl -N 'http://127.0.0.1:8080/generate?theme=a+lighthouse+keeper'
# and the demo page at http://127.0.0.1:8080/.  The entry point and its
# environment variables: examples/docker-entrypoint.sh.  podman builds and
# runs it the same way; t/098-docker.t does, with util/debian-image.sh
# making the base images where no registry is reachable.

# ---------------------------------------------------------------- build
FROM debian:bookworm AS build

# nginx-dev: the configure tree of Debian's nginx (/usr/share/nginx/src);
# nginx-core: the nginx that tree describes, the one the module loads into
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
    && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential nginx-core nginx-dev \
        libcurl4-openssl-dev libjansson-dev libhiredis-dev \
        libpcre3-dev libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# build/ngx_http_llm_module.so (util/build.sh) packaged as Debian packages
# its nginx modules (util/deb.sh), and build/llm-mock
RUN make deb && make build/llm-mock

# -------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# policy-rc.d: the package must not try to start nginx during the build.
# nginx and the libraries the module's package depends on, in a layer of
# their own that a new build of the module does not invalidate
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
    && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx-core libcurl4 libjansson4 libhiredis0.14 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# the package: the module in /usr/lib/nginx/modules, enabled in the system
# configuration (dpkg fails here if a dependency is missing)
COPY --from=build /src/build/libnginx-mod-http-llm_*.deb /tmp/
RUN dpkg -i /tmp/libnginx-mod-http-llm_*.deb && rm /tmp/libnginx-mod-http-llm_*.deb

COPY --from=build /src/build/llm-mock /usr/local/bin/
COPY examples/ /usr/share/ngx_http_llm_module/examples/

# fail the build, not the first start, when the module does not load
# (an nginx of another version, a missing library): the system
# configuration loads it through /etc/nginx/modules-enabled
RUN nginx -t -q \
    && chmod +x /usr/share/ngx_http_llm_module/examples/docker-entrypoint.sh

EXPOSE 8080

# SIGQUIT is nginx's graceful stop: open streams end with a final
# "shutdown" event instead of being cut
STOPSIGNAL SIGQUIT

ENTRYPOINT ["/usr/share/ngx_http_llm_module/examples/docker-entrypoint.sh"]
