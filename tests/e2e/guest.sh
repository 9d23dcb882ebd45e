#!/usr/bin/env bash
# Builds the end-to-end guest from Debian packages: the Debian cloud kernel and a busybox
# initramfs whose init loads the virtio network modules, gives eth0 static IPv4 and IPv6
# addresses, serves HTTP on TCP port 80 and echoes UDP on port 7
# (tests/e2e/guest/udp_echo.c). Nothing else runs in the guest.
#
# Output (cached; rebuilt when missing or when this script or the guest's sources change):
# build/e2e/guest/{vmlinuz,initramfs.cpio.gz,kernel-package,stamp}
# Usage: tests/e2e/guest.sh            build if needed, print the guest directory
#        tests/e2e/guest.sh --rebuild  build again
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out="$root/build/e2e/guest"
log() { echo "guest: $*" >&2; }
die() { echo "guest: error: $*" >&2; exit 1; }

stamp=$(cat "${BASH_SOURCE[0]}" "$root"/tests/e2e/guest/* | sha256sum | cut -c1-16)
if [[ "${1:-}" != "--rebuild" && -s "$out/vmlinuz" && -s "$out/initramfs.cpio.gz" && -s "$out/kernel-package" &&
      "$(cat "$out/stamp" 2>/dev/null)" == "$stamp" ]]; then
  echo "$out"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "run as root (the harness needs apt-get, network namespaces and TAP devices)"
bash "$root/scripts/install-deps.sh" >&2
[[ -x /bin/busybox ]] && /bin/busybox --list | grep -x httpd >/dev/null || die "/bin/busybox (busybox-static) with httpd is required"
command -v gcc >/dev/null || die "gcc is required for the guest's UDP responder (scripts/install-deps.sh installs it)"

work=$(mktemp -d /tmp/as-vm-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The meta-package names the current Debian 12 cloud kernel; download only that package.
kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
pkg=$(kernel_pkg)
if [[ -z "$pkg" ]]; then
  log "refreshing the apt index to find linux-image-cloud-amd64"
  apt-get update -qq
  pkg=$(kernel_pkg)
fi
[[ -n "$pkg" ]] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
log "downloading $pkg"
( cd "$work" && { apt-get download -qq "$pkg" 2>/dev/null || { apt-get update -qq && apt-get download -qq "$pkg"; }; } ) \
  || die "apt-get download $pkg failed"
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/kernel"
kver=${pkg#linux-image-}
moddir="$work/kernel/lib/modules/$kver/kernel"
[[ -f "$work/kernel/boot/vmlinuz-$kver" ]] || die "no vmlinuz-$kver in $deb"

# The initramfs: busybox, the virtio-net module chain (load order matters), /init.
ir="$work/initramfs"
mkdir -p "$ir"/{bin,dev,proc,sys,tmp,www,lib/modules}
cp /bin/busybox "$ir/bin/busybox"
gcc -static -Os -s -Wall -Wextra -Werror -o "$ir/bin/udp_echo" "$root/tests/e2e/guest/udp_echo.c" \
  || die "building the guest's UDP responder failed (static glibc from libc6-dev is required)"
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net)
for m in "${modules[@]}"; do
  f=$(find "$moddir" -name "$m.ko*" | head -n1)
  [[ -n "$f" ]] || die "module $m not found in $pkg"
  case "$f" in
    *.ko) cp "$f" "$ir/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" >"$ir/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$ir/lib/modules/$m.ko" ;;
    *) die "unsupported module compression: $f" ;;
  esac
done
printf '%s\n' "${modules[@]}" >"$ir/lib/modules/order"
echo "libautostandby e2e guest" >"$ir/www/index.html"

# The kernel passes unknown name=value boot parameters to init as environment variables:
# as_ip and as_ip6 are the guest's addresses (CIDR), as_gw the host side of the bridge.
cat >"$ir/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/lib/modules/$m.ko" || echo "guest: insmod $m failed"; done </lib/modules/order
ip link set lo up
ip addr add "${as_ip:?as_ip= missing on the kernel command line}" dev eth0
# No duplicate address detection: the address is usable at once, and the link is ours.
echo 0 >/proc/sys/net/ipv6/conf/eth0/accept_dad
[ -n "$as_ip6" ] && ip -6 addr add "$as_ip6" dev eth0
ip link set eth0 up
[ -n "$as_gw" ] && ip route add default via "$as_gw"
httpd -p 80 -h /www
udp_echo 7 || echo "guest: udp_echo failed"
echo "guest: ready $as_ip $as_ip6"
# Keep PID 1 alive; the HTTP and UDP responders are the only services.
while :; do sleep 3600; done
INIT
chmod +x "$ir/init"

mkdir -p "$out"
( cd "$ir" && find . -print0 | cpio --null -o -H newc --quiet ) | gzip -9 >"$out/initramfs.cpio.gz.tmp"
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$pkg" >"$out/kernel-package"
echo "$stamp" >"$out/stamp"
log "built $out ($pkg, initramfs $(du -h "$out/initramfs.cpio.gz" | cut -f1))"
echo "$out"
