#!/usr/bin/env bash
# Runs the Rust tests of the controller and the C ABI under ThreadSanitizer: the unit
# tests under controller:: and ffi::, and the integration tests tests/controller_*.rs and
# tests/ffi_*.rs (the kernel-mode ones need root: they create network namespaces).
#
# Nightly toolchain, std rebuilt instrumented (-Zbuild-std, needs the rust-src component)
# so that TSan sees the synchronisation inside std, parking_lot and crossbeam; a separate
# target directory (tsan/ in cargo's, target/tsan by default) so stable builds are left
# alone. Every report is fatal
# (halt_on_error); scripts/tsan.supp, when present, lists the reports analysed and
# suppressed, each with its reason. First a deliberate race (tests/tsan_canary.rs) must
# be reported, or the run fails: a clean result then means the build was instrumented.
#
# Prints one line per test binary, "tsan-test NAME: ok, N passed" or
# "tsan-test NAME: FAILED, N passed, M failed ...", and one for the canary; the full
# output of each is build/tsan/NAME.log. Exits non-zero when anything failed.
#   usage: tsan.sh
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=x86_64-unknown-linux-gnu
logs=build/tsan
mkdir -p "$logs"
rm -f "$logs"/*.log

CARGO_TARGET_DIR=$(bash scripts/target-dir.sh)/tsan
export CARGO_TARGET_DIR
export RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread"
tsan_options="halt_on_error=1 second_deadlock_stack=1"
[[ -f scripts/tsan.supp ]] && tsan_options+=" suppressions=$root/scripts/tsan.supp"
export TSAN_OPTIONS=$tsan_options

tests=(tsan_canary)
for f in tests/controller_*.rs tests/ffi_*.rs; do
  t=${f#tests/}
  tests+=("${t%.rs}")
done

start=$SECONDS
if ! cargo +nightly test -Zbuild-std --target "$target" --lib "${tests[@]/#/--test=}" \
  --no-run --message-format=json-render-diagnostics >"$logs/build.json" 2>"$logs/build.log"; then
  tail -30 "$logs/build.log" >&2
  echo "tsan: build failed" >&2
  exit 1
fi
built=$((SECONDS - start))

# "NAME EXECUTABLE" for every test binary of the build (the CLI binary is built too,
# for the tests that run it, and is not a test).
mapfile -t binaries < <(grep '"test":true},"features"' "$logs/build.json" |
  sed -nE 's/.*"target":\{[^}]*"name":"([^"]+)".*"executable":"([^"]+)".*/\1 \2/p')

declare -A exe
for line in "${binaries[@]}"; do
  exe[${line%% *}]=${line#* }
done

failed=0

# The canary: a clean run below is evidence only if this race is reported.
canary=${exe[tsan_canary]:-}
if [[ -z $canary ]]; then
  echo "tsan-canary: FAILED (not built)"
  exit 1
fi
"$canary" --ignored --exact tsan_reports_an_unsynchronised_write >"$logs/tsan_canary.log" 2>&1
rc=$?
if ((rc != 0)) && grep -q 'WARNING: ThreadSanitizer: data race' "$logs/tsan_canary.log"; then
  echo "tsan-canary: ok (the deliberate race was reported, exit $rc)"
else
  echo "tsan-canary: FAILED (exit $rc, no data race reported: is the build instrumented?); log $logs/tsan_canary.log"
  exit 1
fi

# Runs one test binary; its arguments after NAME are test-name filters.
run() {
  local name=$1 bin=$2
  shift 2
  local log=$logs/$name.log
  "$bin" "$@" >"$log" 2>&1
  local rc=$? passed nfailed
  # From libtest's closing line, or, when TSan stopped the process before it, from the
  # per-test lines it printed (the test that was running counts as failed).
  read -r passed nfailed < <(awk '
    /^test result: / { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;/) p = $(i-1); if ($(i) ~ /^failed;/) f = $(i-1) }; done = 1 }
    /^test .* \.\.\. ok$/ { okl++ }
    /^test .* \.\.\. FAILED$/ { fl++ }
    END { if (done) print p + 0, f + 0; else print okl + 0, fl + 0 }' "$log")
  if ((rc == 0)); then
    echo "tsan-test $name: ok, $passed passed"
  else
    ((nfailed == 0)) && nfailed=1
    local why="exit $rc"
    grep -q 'WARNING: ThreadSanitizer' "$log" && why+=", ThreadSanitizer report"
    echo "tsan-test $name: FAILED, $passed passed, $nfailed failed ($why); log $log"
    grep -E -A3 'WARNING: ThreadSanitizer|SUMMARY: ThreadSanitizer|panicked at|^test .* FAILED$' "$log" | head -40
  fi
  return "$rc"
}

start=$SECONDS
run lib "${exe[autostandby]}" controller:: ffi:: || failed=1
for t in "${tests[@]}"; do
  [[ $t == tsan_canary ]] && continue
  if [[ -z ${exe[$t]:-} ]]; then
    echo "tsan-test $t: FAILED, 0 passed, 1 failed (not built)"
    failed=1
    continue
  fi
  run "$t" "${exe[$t]}" || failed=1
done
echo "tsan: built in ${built} s, tests ran in $((SECONDS - start)) s"
exit $failed
