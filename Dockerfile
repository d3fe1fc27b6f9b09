# ngx_http_llm_module on Debian 12's nginx.
#
#   docker build -t ngx-llm .
#   docker run --rm -p 8080:8080 ngx-llm                          # mock model
#   docker run --rm -p 8080:8080 -e OPENAI_API_KEY=sk-... ngx-llm
#   docker run --rm -p 8080:8080 -e ANTHROPIC_API_KEY=... ngx-llm
#
# then: curl -N 'http://127.0.0.1:8080/generate?theme=a+lighthouse+keeper'
# and the demo page at http://127.0.0.1:8080/.  The entry point and its
# environment variables: examples/docker-entrypoint.sh.

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

# build/ngx_http_llm_module.so (util/build.sh) and build/llm-mock
RUN make module && make build/llm-mock

# -------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# policy-rc.d: the package must not try to start nginx during the build
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
    && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx-core libcurl4 libjansson4 libhiredis0.14 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /src/build/ngx_http_llm_module.so /usr/lib/nginx/modules/
COPY --from=build /src/build/llm-mock /usr/local/bin/
COPY examples/ /usr/share/ngx_http_llm_module/examples/

# fail the build, not the first start, when the module does not load
# (an nginx of another version, a missing library)
RUN printf 'load_module /usr/lib/nginx/modules/ngx_http_llm_module.so;\nevents {}\n' \
        > /tmp/check.conf \
    && nginx -t -q -e stderr -c /tmp/check.conf \
    && rm /tmp/check.conf \
    && chmod +x /usr/share/ngx_http_llm_module/examples/docker-entrypoint.sh

EXPOSE 8080

# SIGQUIT is nginx's graceful stop: open streams end with a final
# "shutdown" event instead of being cut
STOPSIGNAL SIGQUIT

ENTRYPOINT ["/usr/share/ngx_http_llm_module/examples/docker-entrypoint.sh"]
