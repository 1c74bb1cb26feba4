# nbbatch - batch image generation with Gemini image models.
# `make` builds ./nbbatch; `make check` runs every test; `make demo` runs the
# samples against the bundled simulator; `make bench` measures.

CC      ?= cc
PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build/rel
OPT     ?= -O2 -g
SAN     ?=
WERROR  ?= $(if $(CI),-Werror,)

PKGS     = libcurl jansson libpng sqlite3 libjpeg libcrypto zlib
SIM_PKGS = libmicrohttpd jansson libpng libjpeg libcrypto zlib

# Messages are cut to their buffers on purpose (snprintf): gcc's
# truncation warning is noise here; clang has no such flag.
NOTRUNC := $(shell $(CC) -Werror -Wno-format-truncation -E -x c /dev/null \
             >/dev/null 2>&1 && echo -Wno-format-truncation)
WARN     = -Wall -Wextra -Wformat=2 -Wshadow -Wno-unused-parameter \
           $(NOTRUNC) $(WERROR)
BASEFLAGS = -std=c11 -D_GNU_SOURCE $(OPT) $(SAN) $(WARN) -I. -pthread
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
SIM_CFLAGS = $(shell pkg-config --cflags $(SIM_PKGS) 2>/dev/null)
SIM_LIBS   = $(shell pkg-config --libs $(SIM_PKGS) 2>/dev/null)
ALL_CFLAGS = $(BASEFLAGS) $(PKG_CFLAGS) $(CFLAGS)

# Objects, listed per folder.
QUEUE_SRC  = queue/nberr.c queue/queue.c
JOBS_SRC   = jobs/models.c jobs/promptfile.c jobs/jobkey.c jobs/request.c \
             jobs/answer.c jobs/image.c jobs/naming.c jobs/batchfmt.c
RUNNER_SRC = runner/log.c runner/owner.c runner/apikey.c runner/advice.c \
             runner/cmd_add.c \
             runner/cmd_queue.c runner/http.c runner/decode.c \
             runner/progress.c runner/run.c runner/doctor.c \
             runner/tzone.c runner/window.c runner/config.c \
             runner/cmd_schedule.c runner/sched.c runner/gate.c \
             runner/remote.c \
             runner/mcp_proto.c runner/mcp.c
MAIN_SRC   = runner/main.c
SIM_SRC    = tests/sim/sim.c tests/sim/scenario.c tests/sim/imagegen.c \
             tests/sim/api.c tests/sim/body.c tests/sim/batch.c
UNIT_TESTS = test_queue test_promptfile test_answer test_image \
             test_window test_config test_sched test_mcp_proto \
             test_batchfmt
FUZZERS    = fuzz_promptfile fuzz_answer fuzz_error fuzz_image fuzz_config \
             fuzz_mcp fuzz_batchfmt

LIB_SRC  = $(QUEUE_SRC) $(JOBS_SRC) $(RUNNER_SRC)
LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/%.o)
MAIN_OBJ = $(MAIN_SRC:%.c=$(BUILD)/%.o)
SIM_OBJ  = $(SIM_SRC:%.c=$(BUILD)/%.o)
TEST_BIN = $(UNIT_TESTS:%=$(BUILD)/tests/%)

.PHONY: all deps check unit asan bats fuzz lint demo bench install clean

all: deps nbbatch

deps: build/.deps
build/.deps: tests/setup.sh
	@sh tests/setup.sh
	@mkdir -p build && touch $@

nbbatch: $(BUILD)/nbbatch
	cp $< $@

$(BUILD)/nbbatch: $(LIB_OBJ) $(MAIN_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/sim/%.o: tests/sim/%.c
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(SIM_CFLAGS) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/nbsim: $(SIM_OBJ)
	$(CC) $(BASEFLAGS) -o $@ $^ $(SIM_LIBS) -lm

# Each unit test links only the modules it tests.
o = $(patsubst %.c,$(BUILD)/%.o,$(1))
T_QUEUE      = $(call o,$(QUEUE_SRC))
T_PROMPTFILE = $(call o,queue/nberr.c jobs/models.c jobs/promptfile.c \
                        jobs/jobkey.c jobs/naming.c)
T_ANSWER     = $(call o,queue/nberr.c jobs/answer.c jobs/request.c \
                        jobs/jobkey.c jobs/models.c)
T_IMAGE      = $(call o,queue/nberr.c jobs/image.c jobs/naming.c \
                        jobs/jobkey.c)
T_WINDOW     = $(call o,queue/nberr.c runner/tzone.c runner/window.c)
T_CONFIG     = $(call o,queue/nberr.c runner/tzone.c runner/window.c \
                        runner/config.c jobs/models.c)
T_SCHED      = $(call o,queue/nberr.c runner/tzone.c runner/window.c \
                        runner/config.c jobs/models.c runner/sched.c)
T_BATCHFMT   = $(call o,queue/nberr.c jobs/batchfmt.c)
T_MCP_PROTO  = $(call o,queue/nberr.c jobs/models.c runner/mcp_proto.c)

$(BUILD)/tests/test_queue:      $(T_QUEUE)
$(BUILD)/tests/test_promptfile: $(T_PROMPTFILE)
$(BUILD)/tests/test_answer:     $(T_ANSWER)
$(BUILD)/tests/test_image:      $(T_IMAGE)
$(BUILD)/tests/test_window:     $(T_WINDOW)
$(BUILD)/tests/test_config:     $(T_CONFIG)
$(BUILD)/tests/test_sched:      $(T_SCHED)
$(BUILD)/tests/test_mcp_proto:  $(T_MCP_PROTO)
$(BUILD)/tests/test_batchfmt:   $(T_BATCHFMT)
$(BUILD)/tests/test_%: tests/test_%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(PKG_LIBS) $(shell pkg-config --libs cmocka) -lm

$(BUILD)/tests/pngcheck: tests/pngcheck.c $(T_IMAGE)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/tests/image_bench: tests/bench/image_bench.c $(T_IMAGE)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(PKG_LIBS) -lm

# Queue at a million jobs: add, re-add, status, first claim (not in check).
$(BUILD)/tests/queue_bench: tests/bench/queue_bench.c $(T_QUEUE)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/tests/answer_bench: tests/bench/answer_bench.c $(T_ANSWER)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/tests/measure: tests/bench/measure.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^

BENCH_TOOLS = $(BUILD)/nbsim $(BUILD)/tests/pngcheck $(BUILD)/tests/measure \
              $(BUILD)/tests/queue_bench $(BUILD)/tests/answer_bench \
              $(BUILD)/tests/image_bench

tools: deps $(BUILD)/nbbatch $(BUILD)/nbsim $(BUILD)/tests/pngcheck

# --- tests --------------------------------------------------------------
unit: deps $(TEST_BIN)
	@set -e; for t in $(TEST_BIN); do echo "== $$t"; $$t; done

asan:
	$(MAKE) BUILD=build/asan OPT="-O1 -g" \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" unit

bats: deps nbbatch $(BUILD)/nbsim $(BUILD)/tests/pngcheck
	NBBATCH=$(CURDIR)/nbbatch NBSIM=$(CURDIR)/$(BUILD)/nbsim \
	PNGCHECK=$(CURDIR)/$(BUILD)/tests/pngcheck \
	bats tests/bats

FUZZ_SRC = $(QUEUE_SRC) $(JOBS_SRC) runner/config.c runner/window.c \
           runner/tzone.c runner/mcp_proto.c
# Fuzz targets: the sources they read are compiled once, with clang's
# fuzzer instrumentation and sanitizers, and linked into each target.
FUZZ_CFLAGS = -std=c11 -D_GNU_SOURCE -g -O1 -I. $(PKG_CFLAGS)
FUZZ_OBJ    = $(FUZZ_SRC:%.c=build/fuzz/obj/%.o)
FUZZ_BIN    = $(FUZZERS:%=build/fuzz/%)
.SECONDARY: $(FUZZ_OBJ)

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined \
	    -MMD -MP -c -o $@ $<

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJ)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< \
	    $(FUZZ_OBJ) $(PKG_LIBS) -lm

fuzz: deps $(FUZZ_BIN)
	@set -e; for f in $(FUZZERS); do \
	    mkdir -p build/fuzz/corpus-$$f; \
	    echo "== $$f (short run)"; \
	    build/fuzz/$$f -max_total_time=$${FUZZ_SECONDS:-10} -print_final_stats=0 \
	        build/fuzz/corpus-$$f tests/fuzz/seeds/$$f 2>build/fuzz/$$f.log \
	        || { tail -40 build/fuzz/$$f.log; exit 1; }; \
	done

lint:
	@sh tests/lint.sh

# Everything check runs is built first, on every core.
NPROC := $(shell nproc 2>/dev/null || echo 2)

check: deps lint
	@$(MAKE) -j$(NPROC) nbbatch $(BUILD)/nbsim $(BUILD)/tests/pngcheck \
	    $(TEST_BIN) $(FUZZ_BIN)
	@$(MAKE) -j$(NPROC) BUILD=build/asan OPT="-O1 -g" \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	    $(TEST_BIN:$(BUILD)/%=build/asan/%)
	@$(MAKE) unit asan bats fuzz
	@echo "make check: all passed"

demo: deps nbbatch $(BUILD)/nbsim
	@sh samples/demo.sh $(CURDIR)/nbbatch $(CURDIR)/$(BUILD)/nbsim

bench: deps nbbatch $(BENCH_TOOLS)
	@bash tests/bench/bench.sh $(CURDIR)/nbbatch $(CURDIR)/$(BUILD)

install: nbbatch
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 nbbatch $(DESTDIR)$(PREFIX)/bin/nbbatch

clean:
	rm -rf build nbbatch

-include $(shell find build -name '*.d' 2>/dev/null)
