#!/usr/bin/env bash
# Prints one closing line for a `make test` log: the test cases that passed and failed
# across every runner (cargo test, the ThreadSanitizer runs, go test -v, the C scenarios,
# the fuzz targets, the soak).
#   usage: test-summary.sh LOG EXIT_STATUS
set -euo pipefail
log=$1 status=${2:-0}

read -r passed failed < <(awk '
  /^test result: / {            # cargo: "test result: ok. 12 passed; 0 failed; ..."
    for (i = 1; i <= NF; i++) {
      if ($(i) ~ /^passed;?$/) p += $(i-1)
      if ($(i) ~ /^failed;?$/) f += $(i-1)
    }
  }
  /^--- PASS: / { p++ }         # go test -v, top-level tests only (subtests are indented)
  /^--- FAIL: / { f++ }
  /^[a-z_]+_scenario: ok$/ { p++ }   # tests/c scenarios
  /^fuzz-target [a-z_]+: ok/ { p++ }       # scripts/fuzz.sh, one line per target
  /^fuzz-target [a-z_]+: FAILED/ { f++ }
  /^tsan-test [a-z_]+: / {      # scripts/tsan.sh: "ok, 9 passed" or "FAILED, 8 passed, 1 failed"
    for (i = 1; i <= NF; i++) {
      if ($(i) ~ /^passed,?$/) p += $(i-1)
      if ($(i) ~ /^failed$/) f += $(i-1)
    }
  }
  /^tsan-canary: ok/ { p++ }               # scripts/tsan.sh: the deliberate race was reported
  /^tsan-canary: FAILED/ { f++ }
  /^soak: ok$/ { p++ }                     # examples/soak.rs
  /^soak: FAILED/ { f++ }
  END { print p + 0, f + 0 }' "$log")

# A runner that died before reporting still fails the run.
if [[ $status -ne 0 && $failed -eq 0 ]]; then failed=1; fi
echo "summary: $passed passed, $failed failed"
