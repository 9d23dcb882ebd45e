#!/usr/bin/env bash
# CPU per foreign conntrack event in the kernel with the event filter at fleet scale
# (root).
#
# Each run is a fresh network namespace and one process (examples/filter_scale.rs): it
# opens LISTENERS event sockets with the filter of a mode, then creates EVENTS conntrack
# entries for foreign addresses through ctnetlink and reports the CPU time of the
# creating thread, in whose context the kernel runs every listener's filter on every
# event. Modes, interleaved within each run:
#   none      no listener (creating entries alone)
#   state     the state part only (what the controller used past the exact limit:
#             every foreign event is queued to userspace)
#   exact100  100 IPv4 addresses compared exactly
#   fleet     10,000 IPv4 + 2,000 IPv6 addresses, compared as covering prefixes
# Prints per mode the median CPU per event, the filter's own cost per event and
# listener ((mode - none) / LISTENERS) and the ratio fleet / exact100 of both, for
# each foreign mix: all IPv4 (V6_EVERY 0), and one in K IPv6. The 100 addresses are
# IPv4 only, so exact100 drops an IPv6 event at its family check, while fleet compares
# it with its IPv6 prefixes: the mixed ratio includes that work.
#
# Knobs: RUNS (7), EVENTS (20000), LISTENERS ("1 16"), V6_EVERY ("0 6").
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "benches/filter_scale.sh: needs root (namespaces, ctnetlink)" >&2; exit 1; }
RUNS=${RUNS:-7}
EVENTS=${EVENTS:-20000}
LISTENERS=${LISTENERS:-"1 16"}
V6_EVERY=${V6_EVERY:-"0 6"}
MODES="none state exact100 fleet"

cargo build --quiet --release --example filter_scale
TARGET=$(bash scripts/target-dir.sh) # CARGO_TARGET_DIR or target/
BIN=$TARGET/release/examples/filter_scale
NS="as-fscale-$$"
OUT=$(mktemp)
cleanup() { ip netns del "$NS" 2>/dev/null || true; rm -f "$OUT"; }
trap cleanup EXIT

for v in $V6_EVERY; do
  for l in $LISTENERS; do
    for r in $(seq "$RUNS"); do
      for m in $MODES; do
        ip netns add "$NS"
        ip netns exec "$NS" "$BIN" --mode "$m" --events "$EVENTS" --listeners "$l" --v6-every "$v" >>"$OUT"
        ip netns del "$NS"
      done
    done
  done
done

grep -m1 'mode=fleet' "$OUT" | tr ' ' '\n' | grep -E '^(insns|form)=' | sed 's/^/fleet program: /'
python3 - "$OUT" "$LISTENERS" "$V6_EVERY" <<'PY'
import statistics, sys
rows = [dict(kv.split("=", 1) for kv in line.split()) for line in open(sys.argv[1])]
for v in sys.argv[3].split():
  for l in sys.argv[2].split():
    sel = [r for r in rows if r["listeners"] == l and r["v6_every"] == v]
    tag = f"v6_every={v} listeners={l}"
    med = {}
    for m in ["none", "state", "exact100", "fleet"]:
        xs = [float(r["cpu_ns_per_event"]) for r in sel if r["mode"] == m]
        read = max(int(r["events_read"]) for r in sel if r["mode"] == m)
        med[m] = statistics.median(xs)
        print(f"{tag} mode={m:9s} cpu/event median {med[m]:8.0f} ns  (min {min(xs):.0f}, max {max(xs):.0f}, n={len(xs)})  events read {read}")
    filt = {m: (med[m] - med["none"]) / int(l) for m in ["state", "exact100", "fleet"]}
    for m, x in filt.items():
        print(f"{tag} mode={m:9s} filter cost per event and listener {x:7.0f} ns")
    ratio = filt["fleet"] / filt["exact100"] if filt["exact100"] > 0 else float("nan")
    print(f"{tag} ratio fleet/exact100: cpu/event {med['fleet'] / med['exact100']:.3f}, filter cost {ratio:.3f}")
PY
