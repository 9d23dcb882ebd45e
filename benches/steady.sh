#!/usr/bin/env bash
# Steady-state cost of the kernel-mode controller on a busy host shape (root).
#
# A "host" namespace holds COUNT VM addresses (local, routed from a veth) and
# an nft `ct state` rule so that it tracks connections; a client namespace opens RATE
# short TCP connections per second spread over them (examples/steady.rs load: connect,
# a byte each way, close), about 7 conntrack events per connection. Measured over the
# same WINDOW after WARMUP, each in its own process:
#   - the controller (examples/steady.rs controller): kernel mode observing the host
#     namespace, the COUNT addresses registered as running instances, decisions
#     answered as a host does;
#   - the peer: the library's own EventSocket with the same address filter, read with a
#     2 ms linger;
#   - a counter: an unfiltered EventSocket (every event the namespace produced);
#   - the load generator's achieved rate.
# Two scenarios per run (SCENARIOS): "plain" (TCP only), and "busy": FOREIGN foreign
# entries inserted through ctnetlink and, with UDP=1, one live UDP session per address
# (a datagram a second each way), so the engine's UDP expiry checks run.
#
# Knobs: WINDOW (60 s), RUNS (3), WARMUP (5 s), COUNT (500), RATE (1000 conn/s),
# CONC (16 client threads), FOREIGN (200000), UDP (1), IDLE (0: instances among the
# COUNT with a short idle timeout whose traffic comes in bursts, so they go into Standby
# and wake), SCENARIOS ("plain busy"), TW (2: conntrack TIME_WAIT seconds, so entries
# are destroyed within the run), UDP_TIMEOUT (20: conntrack UDP timeouts in seconds,
# shorter than the kernel's 30/120 so that several expiry rounds fall in a window).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "benches/steady.sh: needs root (namespaces, nft, ctnetlink)" >&2; exit 1; }
WINDOW=${WINDOW:-60}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-5}
COUNT=${COUNT:-500}
RATE=${RATE:-1000}
CONC=${CONC:-16}
FOREIGN=${FOREIGN:-200000}
UDP=${UDP:-1}
IDLE=${IDLE:-0}
SCENARIOS=${SCENARIOS:-plain busy}
TW=${TW:-2}
UDP_TIMEOUT=${UDP_TIMEOUT:-20}

echo "== building"
cargo build --release --example steady --example conntrack_probe >/dev/null
TARGET=$(bash scripts/target-dir.sh) # CARGO_TARGET_DIR or target/
BIN=$TARGET/release/examples/steady
PROBE=$TARGET/release/examples/conntrack_probe

H=as-steady-$$-h
C=as-steady-$$-c
pids=()
tmp=$(mktemp -d)
teardown() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  ip netns del "$H" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
}
trap 'teardown; rm -rf "$tmp"' EXIT

setup() { # foreign-entries
  ip netns add "$H"
  ip netns add "$C"
  ip -n "$H" link add vh type veth peer name vc netns "$C"
  ip -n "$H" addr add 10.235.0.1/24 dev vh
  ip -n "$C" addr add 10.235.0.2/24 dev vc
  # The VM addresses are local to the host namespace (on lo: this kernel has no dummy
  # devices), reached from the client through the veth.
  "$BIN" addrs --count "$COUNT" | sed 's|.*|addr add &/32 dev lo|' | ip -n "$H" -b -
  for ns in "$H" "$C"; do ip -n "$ns" link set lo up; done
  ip -n "$H" link set vh up
  ip -n "$C" link set vc up
  ip -n "$C" route add 10.236.0.0/16 via 10.235.0.1
  ip netns exec "$H" nft -f - <<'NFT'
table inet as_steady {
  chain input { type filter hook input priority 0; ct state established,related accept; }
}
NFT
  local s
  for s in "nf_conntrack_tcp_timeout_time_wait=$TW" "nf_conntrack_udp_timeout=$UDP_TIMEOUT" \
           "nf_conntrack_udp_timeout_stream=$UDP_TIMEOUT"; do
    ip netns exec "$H" sysctl -qw "net.netfilter.$s"
  done
  ip netns exec "$C" sysctl -qw net.ipv4.ip_local_port_range="10000 65000"
  if (($1 > 0)); then
    ip netns exec "$H" "$PROBE" insert "$1" | sed 's/^/  foreign: /'
  fi
}

field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }

# Starts "$@" in the background with its output in $tmp/$name and waits for "ready".
start() { # name, command...
  local name=$1; shift
  : >"$tmp/$name"
  "$@" >"$tmp/$name" 2>"$tmp/$name.err" &
  pids+=($!)
  local until=$((SECONDS + 30))
  until grep -q '^ready' "$tmp/$name"; do
    if ! kill -0 "${pids[-1]}" 2>/dev/null || ((SECONDS > until)); then
      echo "benches/steady.sh: $name did not start:" >&2
      cat "$tmp/$name.err" >&2
      exit 1
    fi
    sleep 0.05
  done
}

# One scenario of one run; appends "scenario key=value..." to $tmp/results.
run_one() { # run, scenario
  local run=$1 scenario=$2 foreign=0 udp=()
  if [[ $scenario == busy ]]; then
    foreign=$FOREIGN
    ((UDP)) && udp=(--udp)
  fi
  setup "$foreign"
  local start_ms=$(($(date +%s%3N) + 4000 + WARMUP * 1000))
  local common=(--count "$COUNT" --start-ms "$start_ms" --window-s "$WINDOW")
  start controller "$BIN" controller --netns "/run/netns/$H" "${common[@]}" "${udp[@]}" --idle "$IDLE"
  start peer "$BIN" peer --netns "/run/netns/$H" "${common[@]}"
  start counter "$BIN" peer --netns "/run/netns/$H" "${common[@]}" --all
  start load ip netns exec "$C" "$BIN" load --server-netns "/run/netns/$H" "${common[@]}" \
    --rate "$RATE" --conc "$CONC" "${udp[@]}" --idle "$IDLE"
  local p status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  pids=()
  if ((status)); then
    echo "benches/steady.sh: a process failed (run $run, $scenario):" >&2
    cat "$tmp"/*.err >&2
    exit 1
  fi
  local c pe co lo
  c=$(grep -v '^ready' "$tmp/controller")
  pe=$(grep -v '^ready' "$tmp/peer")
  co=$(grep -v '^ready' "$tmp/counter")
  lo=$(grep -v '^ready' "$tmp/load")
  teardown
  echo "$scenario $(echo "$c" | sed 's/\([a-z_]*\)=/c_\1=/g') $(echo "$pe" | sed 's/\([a-z_]*\)=/p_\1=/g') \
$(echo "$co" | sed 's/\([a-z_]*\)=/t_\1=/g') $(echo "$lo" | sed 's/\([a-z_]*\)=/l_\1=/g')" >>"$tmp/results"
  local r; r=$(tail -1 "$tmp/results")
  # Derived figures, one row.
  awk -v w="$WINDOW" -v run="$run" '{
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    pev = v["p_events"]; conns = v["l_connections"]
    printf "| %s | %s | %d (%.0f/s, asked %d, failed %d) | %d | %d | %.2f%% | %.2f | %.2f | %.2f | %.2f | %.1f | %.1f | %d / %d / %d | %.3f | %d / %d |\n",
      run, $1, conns, v["l_rate"], v["l_asked"], v["l_failed"], v["t_events"], pev,
      v["c_cpu_ms"] / (w * 10), pev ? v["c_cpu_ms"] * 1000 / pev : 0,
      pev ? v["p_cpu_ms"] * 1000 / pev : 0,
      v["p_cpu_ms"] ? v["c_cpu_ms"] / v["p_cpu_ms"] : 0,
      conns ? v["c_events_read"] / conns : 0,
      v["c_event_wakeups"] / w, v["p_wakeups"] / w,
      v["c_dumps"], v["c_walks"], v["c_dumped_flows"], v["c_query_thread_ms"] * 60 / w / 1000,
      v["c_standby"], v["c_wake"]
  }' <<<"$r"
  # Anything that makes the figures doubtful.
  awk '{
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    if (v["c_events_lost"] > 0 || v["p_drops"] > 0 || v["t_drops"] > 0)
      printf "  warning: events lost (controller %d episodes, peer %d drops, counter %d drops)\n", v["c_events_lost"], v["p_drops"], v["t_drops"]
    if (v["c_observer_failed"] == "true" || v["c_observer_errors"] > 0) print "  warning: observer errors in the controller"
    if (v["l_connections"] < 0.95 * v["l_asked"]) printf "  warning: the load generator reached %d of %d connections\n", v["l_connections"], v["l_asked"]
  }' <<<"$r"
  echo "  controller threads ms: engine loop $(echo "$c" | field engine_thread_ms), dump worker $(echo "$c" | field query_thread_ms), host loop $(echo "$c" | field main_thread_ms); events read $(echo "$c" | field events_read), flow events applied $(echo "$c" | field flow_events), resyncs $(echo "$c" | field resyncs), tracked flows $(echo "$c" | field tracked_flows), lost-event episodes $(echo "$c" | field events_lost)"
  echo "  controller dumps (at/addresses/walks/entries): $(echo "$c" | field dump_list); instance 0 at the end: $(echo "$c" | field first_status)"
  echo "  controller periodic checks $(echo "$c" | field periodic_checks), flows looked up $(echo "$c" | field flow_lookups), walks counted $(echo "$c" | field dump_walks)"
}

echo "kernel $(uname -r), $(nproc) CPUs, COUNT=$COUNT RATE=$RATE/s CONC=$CONC WINDOW=${WINDOW}s WARMUP=${WARMUP}s RUNS=$RUNS"
echo "busy scenario: FOREIGN=$FOREIGN UDP=$UDP; IDLE=$IDLE TW=${TW}s UDP_TIMEOUT=${UDP_TIMEOUT}s"
echo "load average before measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| run | scenario | TCP connections in window | events produced (unfiltered) | events read by peer | controller CPU % of a core | controller µs/event | peer µs/event | controller ÷ peer | controller reads per connection | controller wake-ups/s | peer wake-ups/s | dumps / walks / entries | dump worker CPU s/min | standby / wake |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for run in $(seq "$RUNS"); do
  for scenario in $SCENARIOS; do
    run_one "$run" "$scenario"
  done
done

echo
echo "== summary over $RUNS run(s): min / median / max"
awk -v w="$WINDOW" '
function stat(name, sc,    n, i, j, t, a) {
  n = cnt[sc]
  for (i = 1; i <= n; i++) a[i] = val[sc, name, i]
  for (i = 2; i <= n; i++) { t = a[i]; j = i - 1; while (j > 0 && a[j] > t) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
  return sprintf("%.3f / %.3f / %.3f", a[1], a[int((n + 1) / 2)], a[n])
}
{
  sc = $1; k = ++cnt[sc]; if (!(sc in seen)) { seen[sc] = 1; order[++ns] = sc }
  delete v
  for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  pev = v["p_events"]; conns = v["l_connections"]
  val[sc, "rate", k] = v["l_rate"]
  val[sc, "events_s", k] = v["t_events"] / w
  val[sc, "cpu_pct", k] = v["c_cpu_ms"] / (w * 10)
  val[sc, "c_us", k] = pev ? v["c_cpu_ms"] * 1000 / pev : 0
  val[sc, "p_us", k] = pev ? v["p_cpu_ms"] * 1000 / pev : 0
  val[sc, "ratio", k] = v["p_cpu_ms"] ? v["c_cpu_ms"] / v["p_cpu_ms"] : 0
  val[sc, "reads", k] = conns ? v["c_events_read"] / conns : 0
  val[sc, "wakeups", k] = v["c_event_wakeups"] / w
  val[sc, "cpu_min", k] = v["c_cpu_ms"] * 60 / w / 1000
  val[sc, "query_min", k] = v["c_query_thread_ms"] * 60 / w / 1000
  val[sc, "walks_min", k] = v["c_walks"] * 60 / w
}
END {
  for (s = 1; s <= ns; s++) {
    sc = order[s]
    printf "-- %s\n", sc
    printf "  achieved connections/s            %s\n", stat("rate", sc)
    printf "  conntrack events/s (unfiltered)   %s\n", stat("events_s", sc)
    printf "  controller CPU %% of one core      %s\n", stat("cpu_pct", sc)
    printf "  controller CPU µs per event       %s   (events read by the peer, same filter)\n", stat("c_us", sc)
    printf "  peer CPU µs per event             %s\n", stat("p_us", sc)
    printf "  controller ÷ peer                 %s   goal <= 1.3\n", stat("ratio", sc)
    printf "  controller reads per connection   %s   goal <= 3\n", stat("reads", sc)
    printf "  controller wake-ups per second    %s\n", stat("wakeups", sc)
    printf "  controller CPU s per minute       %s\n", stat("cpu_min", sc)
    printf "  dump walks per minute             %s\n", stat("walks_min", sc)
    printf "  dump worker (walk) CPU s/minute   %s   goal <= 0.05 (busy)\n", stat("query_min", sc)
  }
  if (("plain" in seen) && ("busy" in seen)) {
    for (k = 1; k <= cnt["busy"]; k++) val["delta", "d", k] = val["busy", "cpu_min", k] - val["plain", "cpu_min", k]
    cnt["delta"] = cnt["busy"]
    printf "-- busy - plain: controller CPU s per minute  %s\n", stat("d", "delta")
  }
}' "$tmp/results"
