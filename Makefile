# ngx_http_llm_module: build, test and benchmark entry points.
#
#   make                      module against Debian's nginx (nginx-dev)
#   make NGINX_SRC=DIR        module inside an nginx >= 1.22 source tree
#   make test                 the Test::Nginx suite (prove -r t/)
#   make valgrind             the suite with nginx under valgrind
#   make demo                 nginx + the example config + the mock model
#   make example NAME=N       examples/N/ (util/example.sh): DEMO_PORT,
#                             EXAMPLE_UPSTREAM, OPENAI/ANTHROPIC_API_KEY
#   make deb                  build/libnginx-mod-http-llm_<version>_<arch>.deb
#                             for Debian's nginx (util/deb.sh)
#   make bootstrap            install every Debian package needed (root)
#   make bench                the benchmark (bench/README.md): writes
#                             bench/results/<date>.md and <date>.png
#   make fuzz                 the libFuzzer targets in fuzz/, FUZZ_TIME
#                             seconds each (default 60; util/fuzz.sh)
#   make asan                 the suite with nginx and the module built
#                             with ASan and UBSan (util/asan.sh)

VERSION = 0.1.0

BUILD   = build
MOCK    = $(BUILD)/llm-mock
UNIT    = $(BUILD)/llm-unit

CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    = -Wall -Wextra -Werror

NGX_TREE = $(if $(NGINX_SRC),$(NGINX_SRC),$(BUILD)/nginx)
NGX_INCS = -I$(NGX_TREE)/src/core -I$(NGX_TREE)/src/event \
           -I$(NGX_TREE)/src/event/modules -I$(NGX_TREE)/src/os/unix \
           -I$(NGX_TREE)/objs -Isrc

UNIT_SRCS = t/unit/llm_unit.c src/ngx_http_llm_upstream_sse.c \
            src/ngx_http_llm_json.c \
            src/ngx_http_llm_openai.c src/ngx_http_llm_anthropic.c

.PHONY: all module test valgrind demo example deb bootstrap bench fuzz \
        asan clean

all: module $(MOCK) $(UNIT)

# nginx's own make decides what to rebuild, in whichever tree is used
module:
	util/build.sh

$(MOCK): util/llm-mock.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -o $@ $< -ljansson

$(UNIT): module $(UNIT_SRCS) $(wildcard src/*.h)
	$(CC) $(CFLAGS) $(WARN) -Wno-unused-parameter $(NGX_INCS) \
	    -o $@ $(UNIT_SRCS) -ljansson

# test and demo set up a fresh machine first
test:
	util/bootstrap.sh
	$(MAKE) all
	util/test.sh

valgrind:
	util/bootstrap.sh
	$(MAKE) all
	TEST_NGINX_USE_VALGRIND=1 util/test.sh

demo:
	util/bootstrap.sh
	$(MAKE) all
	util/demo.sh

example:
	util/bootstrap.sh
	$(MAKE) all
	util/example.sh $(NAME)

deb: module
	util/deb.sh $(VERSION)

bootstrap:
	util/bootstrap.sh

bench:
	util/bootstrap.sh bench
	$(MAKE) all
	bench/run.sh

# both build nginx from source (util/build-sanitized.sh: NGINX_SRC)
fuzz:
	util/bootstrap.sh fuzz
	FUZZ_TIME=$(or $(FUZZ_TIME),60) util/fuzz.sh

asan:
	util/bootstrap.sh fuzz
	$(MAKE) all
	util/asan.sh

clean:
	rm -rf $(BUILD) t/servroot*
