#!/usr/bin/env bash
# The end-to-end VM harness. It creates a network namespace holding a bridge (the host
# side, 10.213.0.1/24 and fd00:213::1/64) and a TAP device on it for the guest
# (10.213.0.2 and fd00:213::2), with an nft rule
# that makes conntrack track the namespace's flows, and removes all of it, and every
# process inside the namespace, on exit, failure or interrupt.
#
#   tests/e2e/vm.sh boot           boot the guest once, check it serves HTTP, print the boot time
#   tests/e2e/vm.sh run CMD [ARG]  run CMD inside the namespace (QEMU is started by CMD);
#                                  CMD gets the AS_E2E_* variables below
#
# The namespace is private, so its interface names and addresses cannot clash with the
# host's; only the namespace name (as-vm-<pid>) must be unique.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
log() { echo "vm: $*" >&2; }
die() { echo "vm: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root: the harness creates network namespaces, TAP devices and nft rules"
for tool in ip nft qemu-system-x86_64; do
  command -v "$tool" >/dev/null || die "'$tool' is missing: run 'bash scripts/install-deps.sh'"
done

guest_dir=$(bash "$root/tests/e2e/guest.sh")
ns="as-vm-$$"
run_dir="$root/build/e2e/run/$ns"
host_ip=10.213.0.1
guest_ip=10.213.0.2
prefix=24
host_ip6=fd00:213::1
guest_ip6=fd00:213::2
prefix6=64

export AS_E2E_NS="$ns"                # the namespace everything runs in
export AS_E2E_RUN_DIR="$run_dir"      # sockets, logs, pid files and snapshots; removed at exit
export AS_E2E_GUEST_DIR="$guest_dir"  # vmlinuz and initramfs.cpio.gz
export AS_E2E_TAP=tap0                # the guest's TAP device (inside the namespace)
export AS_E2E_HOST_IP="$host_ip"
export AS_E2E_GUEST_IP="$guest_ip"
export AS_E2E_PREFIX="$prefix"
export AS_E2E_HOST_IP6="$host_ip6"
export AS_E2E_GUEST_IP6="$guest_ip6"
export AS_E2E_PREFIX6="$prefix6"

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if ip netns list | grep -w "$ns" >/dev/null; then
    # Everything inside the namespace was started by this harness (QEMU, the test).
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n "$pids" ]]; then
      kill $pids 2>/dev/null || true
      for _ in $(seq 50); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -z "$pids" ]] && break
        sleep 0.1
      done
      [[ -z "$pids" ]] || kill -9 $pids 2>/dev/null || true
    fi
    ip netns del "$ns" || log "could not delete namespace $ns"
  fi
  rm -rf "$run_dir"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# remove_stale: namespaces of earlier harness runs that were killed outright (SIGKILL
# skips the trap). Only as-vm-<pid> names whose harness process is gone are touched.
remove_stale() {
  local name pid
  for name in $(ip netns list | awk '{print $1}' | grep -E '^as-vm-[0-9]+$' || true); do
    pid=${name#as-vm-}
    [[ -d /proc/$pid ]] && continue
    log "removing stale namespace $name"
    pids=$(ip netns pids "$name" 2>/dev/null || true)
    [[ -z "$pids" ]] || kill -9 $pids 2>/dev/null || true
    ip netns del "$name" 2>/dev/null || true
    rm -rf "$root/build/e2e/run/$name"
  done
}

setup() {
  remove_stale
  mkdir -p "$run_dir"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link add br0 type bridge
  ip -n "$ns" addr add "$host_ip/$prefix" dev br0
  ip -n "$ns" addr add "$host_ip6/$prefix6" dev br0 nodad
  ip -n "$ns" link set br0 up
  ip -n "$ns" tuntap add dev tap0 mode tap
  ip -n "$ns" link set tap0 master br0
  ip -n "$ns" link set tap0 up
  # Flows created before a listener exists never report events under the default (2):
  # the harness's own probes of the guest, made before a controller starts, must still
  # report their close. The controllers under test ask for the same setting.
  ip netns exec "$ns" sh -c 'echo 1 >/proc/sys/net/netfilter/nf_conntrack_events'
  # Conntrack only tracks a namespace once a rule needs it; count the guest's flows.
  ip netns exec "$ns" nft -f - <<NFT
table inet as_vm {
  chain output {
    type filter hook output priority filter; policy accept;
    ip daddr $guest_ip ct state new,established,related counter
    ip6 daddr $guest_ip6 ct state new,established,related counter
  }
}
NFT
  log "namespace $ns: br0 $host_ip/$prefix $host_ip6/$prefix6, tap0 for the guest at $guest_ip $guest_ip6"
}

# qemu_cmd PREFIX: the guest's QEMU command line (TCG, no KVM). PREFIX names the run files.
qemu_cmd() {
  local p="$run_dir/$1"
  echo qemu-system-x86_64 -accel tcg -machine pc -cpu qemu64 -m 128M -smp 1 \
    -nodefaults -no-user-config -display none -no-reboot \
    -kernel "$guest_dir/vmlinuz" -initrd "$guest_dir/initramfs.cpio.gz" \
    -append "\"console=ttyS0 quiet panic=-1 init_on_free=1 as_ip=$guest_ip/$prefix as_ip6=$guest_ip6/$prefix6 as_gw=$host_ip\"" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 \
    -serial "file:$p.serial" -qmp "unix:$p.qmp,server=on,wait=off" -pidfile "$p.pid"
}

# http_get: one HTTP request to the guest from the bridge side; prints the body.
http_get() {
  ip netns exec "$ns" timeout 5 bash -c \
    "exec 3<>/dev/tcp/$guest_ip/80 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && cat <&3" 2>/dev/null
}

cmd=${1:-}
case "$cmd" in
  boot)
    setup
    start=$(date +%s%N)
    eval "ip netns exec $ns $(qemu_cmd boot)" &
    qemu=$!
    body=""
    deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
      kill -0 "$qemu" 2>/dev/null || { cat "$run_dir/boot.serial" >&2 || true; die "QEMU exited during boot"; }
      # Probe only once the guest says it is ready: an unanswered SYN would leave a
      # SYN_SENT conntrack entry behind for two minutes.
      if grep -q "guest: ready" "$run_dir/boot.serial" 2>/dev/null; then
        body=$(http_get || true)
        [[ "$body" == *"e2e guest"* ]] && break
      fi
      sleep 0.05
    done
    end=$(date +%s%N)
    [[ "$body" == *"e2e guest"* ]] || { cat "$run_dir/boot.serial" >&2; die "the guest did not answer HTTP within 60 s"; }
    ms=$(((end - start) / 1000000))
    printf 'vm: boot to first HTTP answer: %d.%03d s (kernel %s)\n' $((ms / 1000)) $((ms % 1000)) "$(cat "$guest_dir/kernel-package")"
    ip netns exec "$ns" conntrack -L -d "$guest_ip" 2>/dev/null | grep "dport=80" >/dev/null \
      || die "conntrack in $ns does not track the guest's flows"
    log "conntrack in $ns tracks the guest's HTTP flow"
    ;;
  run)
    shift
    (($#)) || die "usage: vm.sh run CMD [ARG...]"
    setup
    ip netns exec "$ns" "$@"
    ;;
  *)
    die "usage: vm.sh boot | vm.sh run CMD [ARG...]"
    ;;
esac
