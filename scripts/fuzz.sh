#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECS seconds each with cargo fuzz
# (nightly, AddressSanitizer, debug assertions), starting from the committed seed corpus
# (fuzz/corpus/TARGET, never written) plus what earlier runs found (build/fuzz/corpus).
# Prints one line per target: "fuzz-target NAME: ok (N runs in S s)" or "... FAILED";
# the full libFuzzer log is build/fuzz/NAME.log, a crashing input lands in
# fuzz/artifacts/NAME/. Exits non-zero when any target fails.
#   usage: fuzz.sh SECS [TARGET...]
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:?usage: fuzz.sh SECS [TARGET...]}
shift
targets=("$@")
((${#targets[@]})) || targets=(parse bpf_filter ffi_manual)

mkdir -p build/fuzz
(cd fuzz && cargo +nightly fuzz build -a >../build/fuzz/build.log 2>&1) ||
  { tail -30 build/fuzz/build.log >&2; echo "fuzz: build failed" >&2; exit 1; }

failed=0
for t in "${targets[@]}"; do
  mkdir -p "build/fuzz/corpus/$t" "fuzz/artifacts/$t"
  log=build/fuzz/$t.log
  (cd fuzz && cargo +nightly fuzz run -a "$t" "../build/fuzz/corpus/$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1)
  if ((rc == 0)); then
    echo "fuzz-target $t: ok (${runs:-?} runs in ${took:-$secs} s)"
  else
    failed=1
    echo "fuzz-target $t: FAILED (exit $rc; ${runs:-?} runs); log $log, input in fuzz/artifacts/$t/"
    grep -E 'panicked at|ERROR: |SUMMARY: |Test unit written' "$log" | head -20
  fi
done
exit $failed
