#!/usr/bin/env bash
# CPU of the UDP expiry checks (root). A kernel-mode controller watches a namespace whose
# conntrack table holds N foreign entries, with VMS instances each serving one live UDP
# session (refreshed every 5 s from a second namespace, so each check finds the flow
# live and is re-armed). Over WINDOW seconds after WARMUP it reads the CPU time (user +
# kernel) of the controller's query and engine threads, which run the checks, and
# prints it per minute, for:
#   before: the code at OLD_REV, where a check is a resync (an address-filtered dump,
#           a walk of the whole kernel hash, or a full dump above 8 addresses);
#   after:  this tree, where a check is a batch of exact-tuple lookups (CT_GET).
# Knobs: N (200000), VMS (500), WARMUP (45), WINDOW (60), UDP_TIMEOUT (30: the plain and
# stream UDP timeouts in the namespace, so each session is checked about every 31-35 s),
# RUNS ("before after"), OLD_REV (default: the parent of the commit that brought the
# lookups).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "benches/udp_expiry.sh: needs root (namespaces, ctnetlink)" >&2; exit 1; }
N=${N:-200000}
VMS=${VMS:-500}
WARMUP=${WARMUP:-45}
WINDOW=${WINDOW:-60}
UDP_TIMEOUT=${UDP_TIMEOUT:-30}
RUNS=${RUNS:-before after}
if [[ -z ${OLD_REV:-} ]]; then
  lookups=$(git log --format=%H -1 --grep='exact-tuple lookups, not dumps')
  [[ -n $lookups ]] || { echo "benches/udp_expiry.sh: set OLD_REV" >&2; exit 1; }
  OLD_REV=$lookups^
fi
(( VMS <= 250 * 250 )) || { echo "benches/udp_expiry.sh: VMS too large" >&2; exit 1; }

TMP=$(mktemp -d /tmp/as-udp-expiry.XXXXXX)
A=as-udpexp-$$-a
B=as-udpexp-$$-b
cleanup() {
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

echo "== building"
cargo build --release --example udp_expiry_load --example conntrack_probe >/dev/null
TARGET=$(bash scripts/target-dir.sh) # CARGO_TARGET_DIR or target/
cp "$TARGET/release/examples/udp_expiry_load" "$TMP/after"
cp "$TARGET/release/examples/conntrack_probe" "$TMP/conntrack_probe"
if [[ " $RUNS " == *" before "* ]]; then
  # The older sources in a scratch directory, built into a target directory of their
  # own (kept in the target directory for the next run): sharing this tree's would let cargo take
  # one tree's artifacts for the other's, as both have the same unit names. The driver
  # uses only API both have.
  mkdir "$TMP/old"
  git archive "$OLD_REV" | tar -x -C "$TMP/old"
  cp examples/udp_expiry_load.rs "$TMP/old/examples/"
  # Archived files carry the commit's time; fresh ones make cargo rebuild the crate.
  find "$TMP/old" -type f -exec touch {} +
  OLD_TARGET=$TARGET/udp-expiry-before
  (cd "$TMP/old" && CARGO_TARGET_DIR="$OLD_TARGET" cargo build --release --example udp_expiry_load >/dev/null)
  cp "$OLD_TARGET/release/examples/udp_expiry_load" "$TMP/before"
fi

setup() {
  ip netns add "$A"
  ip netns add "$B"
  ip -n "$A" link add va type veth peer name vb netns "$B"
  ip -n "$A" addr add 10.232.255.254/16 dev va
  for i in $(seq 0 $((VMS - 1))); do
    echo "addr add 10.232.$((i / 250)).$((i % 250 + 1))/16 dev vb"
  done | ip -n "$B" -batch -
  for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
  ip -n "$A" link set va up
  ip -n "$B" link set vb up
  ip netns exec "$B" nft -f - <<'NFT'
table inet as_udp_expiry_bench {
  chain input { type filter hook input priority 0; ct state established,related accept; }
}
NFT
  ip netns exec "$B" sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$UDP_TIMEOUT"
  ip netns exec "$B" sysctl -qw net.netfilter.nf_conntrack_udp_timeout_stream="$UDP_TIMEOUT"
  ip netns exec "$B" sysctl -qw net.netfilter.nf_conntrack_max=$((N + 100000)) 2>/dev/null || true
  ip netns exec "$B" "$TMP/conntrack_probe" insert "$N" | sed 's/^/  /'
}

teardown() {
  ip netns del "$A"
  ip netns del "$B"
}

echo "kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); N=$N VMS=$VMS WARMUP=${WARMUP}s WINDOW=${WINDOW}s UDP_TIMEOUT=${UDP_TIMEOUT}s; before = $(git rev-parse --short "$OLD_REV")"
declare -A result
for run in $RUNS; do
  echo
  echo "== $run"
  setup
  "$TMP/$run" "$A" "$B" "$VMS" "$WARMUP" "$WINDOW" | tee "$TMP/$run.out"
  result[$run]=$(sed -n 's/.*checks_cpu_ms_per_min=\([0-9.]*\).*/\1/p' "$TMP/$run.out")
  teardown
done

echo
echo "== CPU of the expiry checks (query + engine threads, user + kernel), per minute"
for run in $RUNS; do
  printf '  %-7s %10.1f ms/min\n' "$run" "${result[$run]}"
done
if [[ -n ${result[before]:-} && -n ${result[after]:-} ]]; then
  echo "  ratio   $(echo "${result[before]} / ${result[after]}" | bc -l | xargs printf '%.0f')x"
fi
