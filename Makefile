# libautostandby: every target installs what it needs first (scripts/install-deps.sh).
SHELL := /bin/bash
CARGO ?= cargo
GO ?= go
export CARGO_TERM_COLOR ?= never

# cargo's target directory, absolute: CARGO_TARGET_DIR when set, else target/.
TARGET_DIR := $(shell bash scripts/target-dir.sh)

.PHONY: all deps build check test test-all test-rust tsan test-c test-go demo demo-engine bench bench-engine bench-conntrack bench-controller bench-steady bench-scale bench-go e2e fuzz fuzz-ci soak soak-ci lint header-check header-diff install install-build uninstall prebuilt prebuilt-check prebuilt-ensure prebuilt-verify clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	$(CARGO) build --release

# The committed header must equal what build.rs generates from src/ffi (any cargo build,
# check or clippy of the crate runs build.rs; header-diff only compares).
header-check: deps
	$(CARGO) build --release --lib
	@$(MAKE) --no-print-directory header-diff

header-diff:
	@git diff --exit-code -- include/autostandby.h >/dev/null || \
	  { echo "include/autostandby.h is stale: run 'cargo build' and commit it" >&2; git diff --stat -- include/autostandby.h; exit 1; }

# For people who change the code: everything that runs without root and without QEMU.
# Formatting and clippy (which also regenerates the header), the header check, gofmt and
# go vet, the unit tests (engine, parser, BPF filter, C ABI, proptests), and the
# integration tests that need no network namespace. No deps: it needs cargo (with
# clippy and rustfmt) and go, and no root.
CHECK_TESTS := policy conntrack_parser controller_manual_confirm ffi_manual ffi_validation
check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@$(MAKE) --no-print-directory header-diff
	@out=$$(gofmt -l $(GO_MODULES)); [ -z "$$out" ] || { echo "gofmt needed: $$out" >&2; exit 1; }
	cd go && $(GO) vet ./...
	$(CARGO) test --lib $(addprefix --test ,$(CHECK_TESTS))

# The Go modules: the bindings (what hypeman requires); a hypeman-shaped consumer of
# them; and the end-to-end tests and the benchmark in modules of their own, so that
# their dependencies (vishvananda/netlink, the QEMU helpers) stay out of the bindings'
# go.mod.
GO_MODULES := go go/compat tests/e2e benches/go benches/ctpeer

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@out=$$(gofmt -l $(GO_MODULES)); [ -z "$$out" ] || { echo "gofmt needed: $$out" >&2; exit 1; }
	set -e; for m in $(GO_MODULES); do (cd $$m && $(GO) vet -tags e2e ./...); done

# The static library shipped inside the Go module, so that a Go build needs no Rust
# toolchain: go/internal/binding/libautostandby_linux_amd64.a, built with the pinned
# rustc, without debug info or local paths, and a stamp recording the sources it was
# built from (scripts/prebuilt.sh). prebuilt-check fails when either is stale;
# prebuilt-ensure rebuilds only then; prebuilt-verify rebuilds from a copy of the
# sources at another path and compares the bytes.
prebuilt: deps
	bash scripts/prebuilt.sh build

prebuilt-check:
	bash scripts/prebuilt.sh check

prebuilt-ensure: deps
	bash scripts/prebuilt.sh ensure

prebuilt-verify: deps
	bash scripts/prebuilt.sh verify

# Go's build cache does not look at the content of an archive named in #cgo LDFLAGS;
# a flag derived from the archive makes it relink after make prebuilt. Expanded when a
# recipe runs, after prebuilt-ensure.
GO_LIB_LDFLAGS = -X github.com/libautostandby/libautostandby/go/internal/binding.libraryBuild=$(shell sha256sum go/internal/binding/libautostandby_linux_amd64.a | cut -c1-16)

# Everything CI runs, logged to build/test.log and closed by one summary line that
# counts the test cases of every runner (scripts/test-summary.sh).
test: deps
	@mkdir -p build
	@set -o pipefail; $(MAKE) --no-print-directory test-all 2>&1 | tee build/test.log; \
	  status=$$?; bash scripts/test-summary.sh build/test.log $$status; exit $$status

test-all: header-check lint test-rust tsan test-c test-go e2e fuzz-ci soak-ci

test-rust: deps
	$(CARGO) test --all-targets

# ThreadSanitizer: the unit tests under controller:: and ffi::, and tests/controller_*.rs
# and tests/ffi_*.rs (kernel mode: root), on nightly with std rebuilt instrumented
# (-Zbuild-std, rust-src) in target/tsan. Any report fails the run; a deliberate race
# (tests/tsan_canary.rs) must be reported first, so a clean run is not an uninstrumented
# one. Logs in build/tsan/ (scripts/tsan.sh).
tsan: deps
	bash scripts/tsan.sh

# Go bindings, linked with what a hypeman build links: the prebuilt archive in
# go/internal/binding (rebuilt first when the sources changed). vet, the race detector,
# cgocheck2, the kernel tests in a fully static binary (as hypeman releases its
# binaries), the binding tests against target/release's libautostandby.so through the
# autostandby_shared and autostandby_system tags, and the pure-Go (CGO_ENABLED=0)
# build that reports "unsupported". Root: the kernel tests create network namespaces.
GO_TEST_FLAGS ?= -count=1 -v -timeout 600s
GO_STATIC_TEST := build/go/kernel-static.test
test-go: deps prebuilt-ensure
	cd go && $(GO) vet ./...
	cd go && $(GO) test $(GO_TEST_FLAGS) -ldflags '$(GO_LIB_LDFLAGS)' -race ./...
	cd go && GOEXPERIMENT=cgocheck2 $(GO) test $(GO_TEST_FLAGS) -ldflags '$(GO_LIB_LDFLAGS)' ./...
	@# netgo,osusergo: Go's pure resolver and user lookup, not glibc's NSS. The linker
	@# still warns that getaddrinfo and getpwuid_r, in Rust's std and never called by the
	@# library, would need glibc's shared libraries at run time.
	@mkdir -p $(dir $(GO_STATIC_TEST))
	cd go && $(GO) test -c -o ../$(GO_STATIC_TEST) -tags netgo,osusergo \
	  -ldflags '$(GO_LIB_LDFLAGS) -linkmode external -extldflags "-static"' .
	@file $(GO_STATIC_TEST) | grep -q 'statically linked' || \
	  { echo "test-go: $(GO_STATIC_TEST) is not statically linked:" >&2; file $(GO_STATIC_TEST) >&2; exit 1; }
	cd go && ../$(GO_STATIC_TEST) -test.run '^TestKernel' -test.count 1 -test.v -test.timeout 300s
	$(CARGO) build --release --lib
	cd go && CGO_LDFLAGS="-L$(TARGET_DIR)/release -Wl,-rpath,$(TARGET_DIR)/release" \
	  $(GO) test $(GO_TEST_FLAGS) -tags autostandby_shared ./internal/binding/
	cd go && CGO_LDFLAGS=-L$(TARGET_DIR)/release LD_LIBRARY_PATH=$(TARGET_DIR)/release \
	  $(GO) test $(GO_TEST_FLAGS) -tags autostandby_system ./internal/binding/
	cd go && CGO_ENABLED=0 $(GO) vet ./... && CGO_ENABLED=0 $(GO) test $(GO_TEST_FLAGS) ./...
	@# A hypeman-shaped module of its own, built against this one as hypeman would.
	cd go/compat && $(GO) test $(GO_TEST_FLAGS) -ldflags '$(GO_LIB_LDFLAGS)' ./...

# Go benchmark: our library against vishvananda/netlink + hypeman-style classification
# on a 200,000-entry conntrack table in a namespace the benchmark creates (root).
bench-go: deps prebuilt-ensure
	cd benches/go && $(GO) test -ldflags '$(GO_LIB_LDFLAGS)' -run '^$$' -bench BenchmarkClassifyTable -benchtime 1x -count 1 -timeout 900s .

# C consumers: header alone as C/C++, exported symbols, manual and kernel scenarios
# under ASan/UBSan against the .so and the .a, one valgrind run (needs root); then make
# install into a scratch DESTDIR, the manual scenario built against that tree with
# pkg-config alone, shared and static, and make uninstall (tests/c/installed.sh).
test-c: deps
	$(CARGO) build --lib
	bash tests/c/run.sh $(TARGET_DIR)/debug
	bash tests/c/installed.sh

# make install [PREFIX=/usr/local] [DESTDIR=] [LIBDIR=$(PREFIX)/lib] ...: the C library as
# lib/libautostandby.so.ABI (SONAME libautostandby.so.ABI, ABI from
# AUTOSTANDBY_ABI_VERSION) with the libautostandby.so link, lib/libautostandby.a,
# include/autostandby.h, lib/pkgconfig/autostandby.pc, and the CLI as bin/autostandby.
# make uninstall with the same variables removes them. The libraries are built alone in
# the capi profile (release settings, target/capi), where the shared library is linked
# with its SONAME: target/release's stays without, so that the tests and the Go bindings
# can link to it in place (and a build of the crate there would relink it without). The
# CLI is target/release's. No deps: it needs only cargo, and root only for the prefix.
# Not cargo-c (cargo cinstall), which does the same: it is installed by compiling cargo
# itself from source, minutes of a 2-core machine on every fresh CI machine, and its
# current releases require a newer rustc than the pinned one.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
ABI_VERSION := $(shell sed -n 's/^pub const AUTOSTANDBY_ABI_VERSION: u32 = \([0-9]*\);$$/\1/p' src/ffi/mod.rs)
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
SONAME := libautostandby.so.$(ABI_VERSION)
# What the static library needs from the system, for pkg-config --static: rustc's
# --print native-static-libs for this target. tests/c/installed.sh links with it.
STATIC_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc

install-build:
	@[ -n "$(ABI_VERSION)" ] || { echo "install: no AUTOSTANDBY_ABI_VERSION in src/ffi/mod.rs" >&2; exit 1; }
	$(CARGO) rustc --profile capi --lib --crate-type cdylib,staticlib -- -C link-arg=-Wl,-soname,$(SONAME)
	$(CARGO) build --release --bin autostandby

install: install-build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 0755 $(TARGET_DIR)/capi/libautostandby.so $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sfn $(SONAME) $(DESTDIR)$(LIBDIR)/libautostandby.so
	install -m 0644 $(TARGET_DIR)/capi/libautostandby.a $(DESTDIR)$(LIBDIR)/libautostandby.a
	install -m 0644 include/autostandby.h $(DESTDIR)$(INCLUDEDIR)/autostandby.h
	install -m 0755 $(TARGET_DIR)/release/autostandby $(DESTDIR)$(BINDIR)/autostandby
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@LIBDIR@|$(LIBDIR)|; s|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	  -e 's|@VERSION@|$(VERSION)|; s|@STATIC_LIBS@|$(STATIC_LIBS)|' \
	  scripts/autostandby.pc.in >$(DESTDIR)$(PKGCONFIGDIR)/autostandby.pc
	chmod 0644 $(DESTDIR)$(PKGCONFIGDIR)/autostandby.pc
	@# The dynamic loader finds a new library in a system prefix only after ldconfig.
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libautostandby.so \
	  $(DESTDIR)$(LIBDIR)/libautostandby.a $(DESTDIR)$(PKGCONFIGDIR)/autostandby.pc \
	  $(DESTDIR)$(INCLUDEDIR)/autostandby.h $(DESTDIR)$(BINDIR)/autostandby
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

# Coverage-guided fuzzing (cargo fuzz, nightly, AddressSanitizer, debug assertions) of
# the ctnetlink parser, the BPF event filter against its rule, and sequences of C ABI
# calls against a model (fuzz/). make fuzz runs each target FUZZ_SECS (300 s); make test
# runs each 60 s. A crash fails the target; its input is left in fuzz/artifacts/.
FUZZ_SECS ?= 300
fuzz: deps
	bash scripts/fuzz.sh $(FUZZ_SECS)

fuzz-ci: deps
	bash scripts/fuzz.sh 60

# Soak (root): real IPv4/IPv6 TCP/UDP (and DNAT) connections opened and closed at
# random against a kernel-mode controller in namespaces it creates, with forced event
# loss and controller restarts; fails on a standby decision or standby-ish status while
# a connection is open, or when RSS or fds grew (examples/soak.rs). SOAK_SECS (1800);
# make test runs 120 s (the example is already built by test-rust).
SOAK_SECS ?= 1800
soak: deps
	SOAK_SECS=$(SOAK_SECS) $(CARGO) run --release --example soak

soak-ci: deps
	SOAK_SECS=120 $(CARGO) run --example soak

# The end-to-end tests: a real QEMU guest (TCG) in a network namespace, real conntrack.
e2e: deps
	bash tests/e2e/run.sh

demo: deps
	bash tests/e2e/demo.sh

# The engine alone deciding on a scripted scenario (no root, no VM).
demo-engine: deps
	$(CARGO) run --release --example engine_demo

bench: deps bench-engine bench-conntrack bench-controller bench-steady bench-go

# Engine throughput, allocations per event and bytes per flow (10k instances, 1M flows).
# Runs on ordinary 4 KiB pages, as a host would; the bench prints which mode it ran in
# (GLIBC_TUNABLES=glibc.malloc.hugetlb=1 backs the tables with huge pages, for comparison).
bench-engine: deps
	$(CARGO) bench --bench engine

# Conntrack observer: dump, filtered dump, events and parser, with peers (root).
bench-conntrack: deps
	bash benches/conntrack.sh

# Controller steady state on a busy host shape (500 VM addresses, 1,000 new TCP
# connections/s, optionally 200k foreign entries and a UDP session per address): CPU,
# CPU per event and reads per connection against the library's own lingered event
# reader, in separate processes (root). Knobs in benches/steady.sh (WINDOW, RUNS, ...).
bench-steady: deps
	bash benches/steady.sh

# Ten thousand VMs on one host: an idle storm of 10,000 instances over 200k foreign
# entries, a 100,000-instance registration burst, status() under 7,000 events/s (root).
# Knobs in benches/scale.sh (RUNS, HOG=1 for a CPU hog on both cores, SCENARIOS, ...).
bench-scale: deps
	bash benches/scale.sh

# Controller: status cost and standby-decision latency (10,000 instances over a
# minute), with peers (root).
bench-controller: deps
	$(CARGO) bench --bench controller

clean:
	$(CARGO) clean
