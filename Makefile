# libautostandby: every target installs what it needs first (scripts/install-deps.sh).
SHELL := /bin/bash
CARGO ?= cargo
GO ?= go
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build test test-rust demo bench bench-engine bench-conntrack e2e lint header-check clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	$(CARGO) build --release

# The committed header must equal what build.rs generates from src/ffi.
header-check: deps
	$(CARGO) build --release --lib
	@git diff --exit-code -- include/autostandby.h >/dev/null || \
	  { echo "include/autostandby.h is stale: run 'cargo build' and commit it" >&2; git diff --stat -- include/autostandby.h; exit 1; }

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@if [ -f go/go.mod ]; then \
	  out=$$(gofmt -l go); [ -z "$$out" ] || { echo "gofmt needed: $$out" >&2; exit 1; }; \
	  cd go && $(GO) vet ./...; fi

# Everything CI runs.
test: deps header-check lint test-rust

test-rust: deps
	$(CARGO) test --all-targets

e2e: deps

demo: deps
	$(CARGO) run --release --example engine_demo

bench: deps bench-engine bench-conntrack

# Engine throughput, allocations per event and bytes per flow (10k instances, 1M flows).
# Runs on ordinary 4 KiB pages, as a host would; the bench prints which mode it ran in
# (GLIBC_TUNABLES=glibc.malloc.hugetlb=1 backs the tables with huge pages, for comparison).
bench-engine: deps
	$(CARGO) bench --bench engine

# Conntrack observer: dump, filtered dump, events and parser, with peers (root).
bench-conntrack: deps
	bash bench/conntrack.sh

clean:
	$(CARGO) clean
