#!/usr/bin/env bash
# The kernel-mode controller at fleet scale (root): ten thousand VMs on one host.
#
# Three scenarios (SCENARIOS), each run RUNS times in fresh network namespaces, each
# controller in its own process (examples/scale.rs):
#   storm   INSTANCES (10,000) instances whose countdowns all run out within the same
#           second, in a namespace holding FOREIGN (200,000) foreign conntrack
#           entries: deadline -> Standby decision latency p50/p99/max, the dump walks
#           and resyncs the storm issued, the confirmation lead in force.
#           Goal: p99 <= 20 ms.
#   burst   BURST (100,000) register() calls in a row while the controller runs on an
#           empty table: register() p50/p99/max and the resyncs (full dumps) the burst
#           caused. Goals: max <= 2 ms, <= 2 full dumps.
#   status  status() p50/p99/max over WINDOW seconds while the load generator of
#           benches/steady.sh (examples/steady.rs load) opens RATE (1,000) TCP
#           connections/s to COUNT (500) instances, about 7,000 conntrack events/s.
#           Goal: max <= 100 us.
# Every scenario also times status() from a thread of its own during the run (one
# call every 200 us): its maximum shows any long hold of the engine lock. On a loaded
# host the maximum is often the scheduler's (the prober preempted inside the call), so
# status_unpreempted_* counts only the calls during which the prober was not preempted
# (waiting for the lock is voluntary and still counted).
#
# HOG=1 runs two busy-loop processes (normal priority) for the whole run: the loaded
# case on this 2-core machine. Prints a row per run and min / median / max over RUNS.
#
# Knobs: RUNS (3), HOG (0), SCENARIOS ("storm burst status"), INSTANCES, FOREIGN,
# IDLE_MS (20000: the storm's idle timeout), BURST, COUNT, RATE, WINDOW (30).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "benches/scale.sh: needs root (namespaces, nft, ctnetlink)" >&2; exit 1; }
RUNS=${RUNS:-3}
HOG=${HOG:-0}
SCENARIOS=${SCENARIOS:-storm burst status}
INSTANCES=${INSTANCES:-10000}
FOREIGN=${FOREIGN:-200000}
IDLE_MS=${IDLE_MS:-20000}
BURST=${BURST:-100000}
COUNT=${COUNT:-500}
RATE=${RATE:-1000}
WINDOW=${WINDOW:-30}

echo "== building"
cargo build --release --example scale --example steady --example conntrack_probe >/dev/null
BIN=$PWD/target/release/examples/scale
STEADY=$PWD/target/release/examples/steady
PROBE=$PWD/target/release/examples/conntrack_probe

H=as-scale-$$-h
C=as-scale-$$-c
pids=()
hogs=()
tmp=$(mktemp -d)
teardown() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  ip netns del "$H" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
}
stop_hogs() {
  for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${hogs[@]}"; do wait "$p" 2>/dev/null || true; done
  hogs=()
}
trap 'teardown; stop_hogs; rm -rf "$tmp"' EXIT

if ((HOG)); then
  for _ in 1 2; do
    bash -c 'while :; do :; done' &
    hogs+=($!)
  done
fi

# A host namespace that tracks connections, with $1 foreign entries.
host_ns() {
  ip netns add "$H"
  ip -n "$H" link set lo up
  ip netns exec "$H" nft -f - <<'NFT'
table inet as_scale {
  chain input { type filter hook input priority 0; ct state established,related accept; }
}
NFT
  if (($1 > 0)); then
    ip netns exec "$H" "$PROBE" insert "$1" | sed 's/^/  foreign: /'
  fi
}

run_storm() {
  host_ns "$FOREIGN"
  "$BIN" storm --netns "/run/netns/$H" --instances "$INSTANCES" --idle-ms "$IDLE_MS"
  teardown
}

run_burst() {
  host_ns 0
  "$BIN" burst --netns "/run/netns/$H" --instances "$BURST"
  teardown
}

run_status() {
  host_ns 0
  ip netns add "$C"
  ip -n "$H" link add vh type veth peer name vc netns "$C"
  ip -n "$H" addr add 10.235.0.1/24 dev vh
  ip -n "$C" addr add 10.235.0.2/24 dev vc
  "$STEADY" addrs --count "$COUNT" | sed 's|.*|addr add &/32 dev lo|' | ip -n "$H" -b -
  ip -n "$C" link set lo up
  ip -n "$H" link set vh up
  ip -n "$C" link set vc up
  ip -n "$C" route add 10.236.0.0/16 via 10.235.0.1
  ip netns exec "$H" sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=2
  ip netns exec "$C" sysctl -qw net.ipv4.ip_local_port_range="10000 65000"
  local start_ms=$(($(date +%s%3N) + 8000))
  local common=(--count "$COUNT" --start-ms "$start_ms" --window-s "$WINDOW")
  "$BIN" status --netns "/run/netns/$H" "${common[@]}" >"$tmp/status" &
  pids+=($!)
  ip netns exec "$C" "$STEADY" load --server-netns "/run/netns/$H" "${common[@]}" \
    --rate "$RATE" >"$tmp/load" &
  pids+=($!)
  local p status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  pids=()
  ((status == 0)) || { echo "benches/scale.sh: a process failed" >&2; exit 1; }
  echo "$(grep -a '^instances=' "$tmp/status") $(grep -av '^ready' "$tmp/load" | sed 's/\([a-z_]*\)=/load_\1=/g')"
  teardown
}

echo "kernel $(uname -r), $(nproc) CPUs, HOG=$HOG RUNS=$RUNS INSTANCES=$INSTANCES FOREIGN=$FOREIGN IDLE_MS=$IDLE_MS BURST=$BURST COUNT=$COUNT RATE=$RATE/s WINDOW=${WINDOW}s"
echo "load average before measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
for scenario in $SCENARIOS; do
  for run in $(seq "$RUNS"); do
    "run_$scenario" >"$tmp/run"
    cat "$tmp/run"
    line=$(grep -a '^instances=' "$tmp/run" | tail -1)
    echo "$scenario run=$run $line" >>"$tmp/results"
  done
done

echo
echo "== summary over $RUNS run(s), HOG=$HOG: min / median / max"
python3 - "$tmp/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    sc, *kvs = line.split()
    rows.setdefault(sc, []).append(dict(kv.split("=", 1) for kv in kvs if "=" in kv))
show = {
    "storm": [("late_p50_ms", ""), ("late_p99_ms", "goal <= 20"), ("late_max_ms", ""),
              ("storm_walks", "dump walks issued"), ("storm_resyncs", ""),
              ("confirm_lead_ms", ""), ("status_max_us", "status() during the storm"),
              ("status_unpreempted_max_us", "the same, calls not preempted")],
    "burst": [("register_p50_us", ""), ("register_p99_us", ""), ("register_max_us", "goal <= 2000"),
              ("burst_resyncs", "full dumps, goal <= 2"), ("burst_walks", ""), ("burst_ms", ""),
              ("status_max_us", "status() during the burst"),
              ("status_unpreempted_max_us", "the same, calls not preempted")],
    "status": [("events_read_per_s", ""), ("load_rate", "connections/s"),
               ("status_p50_us", ""), ("status_p99_us", ""), ("status_max_us", "goal <= 100"),
               ("status_unpreempted_max_us", "calls not preempted")],
}
for sc, keys in show.items():
    if sc not in rows:
        continue
    print(f"-- {sc} ({len(rows[sc])} runs)")
    for k, note in keys:
        xs = [float(r[k]) for r in rows[sc] if k in r]
        if not xs:
            continue
        print(f"  {k:22s} {min(xs):10.3f} / {statistics.median(xs):10.3f} / {max(xs):10.3f}  {note}")
PY
