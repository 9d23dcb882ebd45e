#!/usr/bin/env bash
# Conntrack observer benchmarks (root). Builds what it needs, then prints tables with
# ratios against peers run in this same script:
#   1. dump and classify an N-entry table (inserted through ctnetlink in a namespace):
#      ours vs `conntrack -L > /dev/null` vs Go vishvananda/netlink ConntrackTableList;
#   2. a kernel-filtered dump of one address among N foreign entries;
#   3. events from CONNS short TCP connections at concurrency CONC between two
#      namespaces: NEW seen, CPU per event, and what the BPF filter saves;
#   4. the parser micro-benchmark (criterion, counting allocator).
# Knobs: N (200000), REPEAT (3), CONNS (30000), CONC (8), SECTIONS ("1 2 3 4").
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "benches/conntrack.sh: needs root (namespaces, ctnetlink)" >&2; exit 1; }
N=${N:-200000}
REPEAT=${REPEAT:-3}
CONNS=${CONNS:-30000}
CONC=${CONC:-8}
SECTIONS=${SECTIONS:-1 2 3 4}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
TIME=/usr/bin/time
[[ -x $TIME ]] || { echo "benches/conntrack.sh: /usr/bin/time missing (scripts/install-deps.sh installs it)" >&2; exit 1; }

echo "== building"
cargo build --release --example conntrack_probe >/dev/null
TARGET=$(bash scripts/target-dir.sh) # CARGO_TARGET_DIR or target/
PROBE=$TARGET/release/examples/conntrack_probe
(cd benches/ctpeer && go build -o "$TARGET/release/ctpeer" .)
PEER=$TARGET/release/ctpeer

A=as-conntrack-bench-$$-a
B=as-conntrack-bench-$$-b
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$A"
ip netns add "$B"
ip -n "$A" link add va type veth peer name vb netns "$B"
ip -n "$A" addr add 10.231.0.1/24 dev va
ip -n "$B" addr add 10.231.0.2/24 dev vb
ip -n "$B" addr add 10.231.0.3/24 dev vb
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set va up
ip -n "$B" link set vb up
ip netns exec "$B" nft -f - <<'NFT'
table inet as_conntrack_bench {
  chain input { type filter hook input priority 0; ct state established,related accept; }
}
NFT
ip netns exec "$B" sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=1
ip netns exec "$B" sysctl -qw net.netfilter.nf_conntrack_max=$((N + 100000)) 2>/dev/null || true
inb() { ip netns exec "$B" "$@"; }

echo "kernel $(uname -r), $(nproc) CPUs, N=$N, REPEAT=$REPEAT (median shown)"

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }

# Runs "$@" REPEAT times in namespace B; prints "median_wall_s median_cpu_s peak_rss_kb"
# (CPU = user + sys, which other load on the machine inflates less than wall time).
measure() {
  local secs=() cpus=() rss=() t0 t1 m u s
  for _ in $(seq "$REPEAT"); do
    t0=$EPOCHREALTIME
    read -r m u s < <(inb "$TIME" -f '%M %U %S' "$@" 2>&1 >/dev/null | tail -1)
    t1=$EPOCHREALTIME
    secs+=("$(echo "$t1 - $t0" | bc -l)")
    cpus+=("$(echo "$u + $s" | bc -l)")
    rss+=("$m")
  done
  echo "$(printf '%s\n' "${secs[@]}" | median) $(printf '%s\n' "${cpus[@]}" | median) $(printf '%s\n' "${rss[@]}" | sort -n | tail -1)"
}

if want 1 || want 2; then
echo
echo "== 1. dump and classify $N entries"
inb "$PROBE" insert "$N"
echo "load average before measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
read -r ours_s ours_c ours_kb < <(measure "$PROBE" dump 1)
read -r ct_s ct_c ct_kb < <(measure conntrack -L -f ipv4)
read -r go_s go_c go_kb < <(measure "$PEER" 1)
entries=$(inb "$PROBE" dump 1 | field entries)
gentries=$(inb "$PEER" 1 | field entries)
printf '| tool | entries | wall s (median of %s) | ours/tool wall | CPU s | ours/tool CPU | peak RSS MB |\n|---|---|---|---|---|---|---|\n' "$REPEAT"
row() { printf '| %s | %s | %.3f | %.2f | %.3f | %.2f | %.1f |\n' "$1" "$2" "$3" "$(echo "$ours_s/$3" | bc -l)" "$4" "$(echo "$ours_c/$4" | bc -l)" "$(echo "$5/1024" | bc -l)"; }
row "ours (zero-copy)" "$entries" "$ours_s" "$ours_c" "$ours_kb"
row "conntrack -L >/dev/null" "$entries" "$ct_s" "$ct_c" "$ct_kb"
row "Go vishvananda/netlink v1.3.1" "$gentries" "$go_s" "$go_c" "$go_kb"
fi
echo "targets: ours <= 0.6x conntrack -L, <= 0.4x vishvananda, peak RSS <= 10 MB"

if want 2; then
echo
echo "== 2. filtered dump of one address among $N foreign entries"
filt=$(inb "$PROBE" filtered 10.231.0.2 "$REPEAT")
filt2=$(inb "$PROBE" filtered 10.231.0.2 "$REPEAT" --orig-destination-too)
full=$(inb "$PROBE" dump "$REPEAT")
fs=$(echo "$filt" | field seconds)
us=$(echo "$full" | field seconds)
printf '| dump | entries returned | best seconds of %s |\n|---|---|---|\n' "$REPEAT"
printf '| kernel CTA_FILTER, reply source (1 walk, default) | %s | %.4f |\n' "$(echo "$filt" | field entries)" "$fs"
printf '| kernel CTA_FILTER, reply source + original destination (2 walks) | %s | %.4f |\n' "$(echo "$filt2" | field entries)" "$(echo "$filt2" | field seconds)"
printf '| full dump + userspace filter | (%s read) | %.4f |\n' "$(echo "$full" | field entries)" "$us"
printf 'filtered (default): %.4f s, %.3f of the full dump; target <= 0.100 s\n' "$fs" "$(echo "$fs/$us" | bc -l)"
fi
inb conntrack -F >/dev/null 2>&1 || true

if want 3; then
echo
echo "== 3. events: $CONNS short TCP connections at concurrency $CONC"
run_events() { # label, expected NEW, extra observer args...
  local label=$1 expect=$2; shift 2
  local fifo out line
  fifo=$(mktemp -u); mkfifo "$fifo"
  out=$(mktemp)
  inb "$PROBE" events --expect-new "$expect" --idle-ms 2000 --max-ms 60000 "$@" >"$fifo" &
  pids+=($!)
  exec 3<"$fifo"
  read -r line <&3  # "ready": subscribed before the load starts
  label="$label, effective rcvbuf $(echo "$line" | field rcvbuf)"
  # The load generator runs at the lowest priority so that, on a busy 2-core machine,
  # it does not starve the observer it is measuring.
  ip netns exec "$A" nice -n 19 "$PROBE" load --server-netns "/run/netns/$B" \
    --to 10.231.0.2:80,10.231.0.3:80 --count "$CONNS" --conc "$CONC" >"$out.load"
  cat <&3 >"$out"
  exec 3<&-
  wait "${pids[-1]}" || true
  rm -f "$fifo"
  local r; r=$(cat "$out")
  printf '| %s | %s / %s | %s | %s | %s | %s | %s | %s |\n' "$label" \
    "$(echo "$r" | field new)" "$expect" "$(echo "$r" | field events)" \
    "$(echo "$r" | field drops)" "$(echo "$r" | field enobufs)" "$(echo "$r" | field syscalls)" \
    "$(echo "$r" | field cpu_ms)" "$(echo "$r" | field ns_per_event)"
  echo "$(cat "$out.load")" >&2
  rm -f "$out" "$out.load"
  inb conntrack -F >/dev/null 2>&1 || true
  sleep 1
}
half=$((CONNS / 2))
printf '| observer | NEW seen / expected | events read | drops | ENOBUFS | recvmmsg calls | CPU ms | CPU ns/event |\n|---|---|---|---|---|---|---|---|\n'
run_events "default (16 MiB, no filter)" "$CONNS"
run_events "BPF filter: one of the two servers" "$half" --filter 10.231.0.2
run_events "BPF filter: foreign address only (10 s)" 1 --filter 10.231.0.9 --max-ms 10000
echo "targets: every NEW seen with the default configuration; <= 1500 ns CPU per event;"
echo "with the filter, foreign events are never read (events read = 0 for a foreign-only filter)"
fi

if want 4; then
echo
echo "== 4. parser (criterion; no root needed)"
cargo bench --bench conntrack_parse -- --warm-up-time 1 --measurement-time 3 2>/dev/null | sed -n '/^parser,/,$p'
fi
