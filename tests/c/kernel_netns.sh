#!/usr/bin/env bash
# Runs a kernel-mode C test binary against a real TCP server in a network namespace it
# creates (and always removes). Needs root. Usage: kernel_netns.sh BINARY
set -euo pipefail
bin=$1
[[ $(id -u) -eq 0 ]] || { echo "kernel_netns.sh: must run as root (network namespaces, conntrack)" >&2; exit 1; }

id=$$
ns=as-ffi-c$id
host_if=asffi${id}h
ns_if=asffi${id}n
net=10.201.$((id % 250))
port=8080
server=

cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null || true
  ip link del "$host_if" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$ns"
ip link add "$host_if" type veth peer name "$ns_if"
ip link set "$ns_if" netns "$ns"
ip addr add "$net.1/24" dev "$host_if"
ip link set "$host_if" up
ip -n "$ns" addr add "$net.2/24" dev "$ns_if"
ip -n "$ns" link set "$ns_if" up
ip -n "$ns" link set lo up
# Conntrack tracks a namespace's connections only once a rule needs it.
ip netns exec "$ns" nft -f - <<NFT
table inet as_ffi_c {
  chain input {
    type filter hook input priority 0;
    ct state established,related,new counter accept
  }
}
NFT
ip netns exec "$ns" socat "TCP-LISTEN:$port,bind=$net.2,fork,reuseaddr" SYSTEM:cat &
server=$!
for _ in $(seq 50); do
  ip netns exec "$ns" ss -ltn | grep ":$port " >/dev/null && break
  sleep 0.1
done

if ! "$bin" "/run/netns/$ns" "$net.2" "$port"; then
  echo "kernel_netns.sh: $bin failed; conntrack table of $ns:" >&2
  ip netns exec "$ns" conntrack -L >&2 || true
  exit 1
fi
