#!/usr/bin/env bash
# make demo: installs what is missing, builds the library and the demo, boots the guest
# in a throwaway network namespace and runs the Go controller against it, narrating.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
if [[ $(id -u) -ne 0 ]]; then
  echo "demo: please run as root (sudo make demo): it creates a network namespace, a TAP device" >&2
  echo "      and nft rules, runs QEMU, and installs missing Debian packages with apt-get" >&2
  exit 1
fi
bash scripts/install-deps.sh
echo "demo: preparing the guest (Debian cloud kernel + busybox initramfs, cached in build/e2e)"
bash tests/e2e/guest.sh >/dev/null
echo "demo: building the demo (with the prebuilt libautostandby, rebuilt if stale)"
bash scripts/prebuilt.sh ensure
mkdir -p build/e2e/bin
# Go does not notice a rebuilt archive by itself: see tests/e2e/qemu/build.go.
ldflags="-X github.com/libautostandby/libautostandby/tests/e2e/qemu.LibraryBuild=$(sha256sum go/internal/binding/libautostandby_linux_amd64.a | cut -c1-16)"
(cd tests/e2e && go build -ldflags "$ldflags" -o "$root/build/e2e/bin/demo" ./cmd/demo)
exec bash tests/e2e/vm.sh run "$root/build/e2e/bin/demo" -timeline "$root/build/e2e/demo-timeline.svg"
