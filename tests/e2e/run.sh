#!/usr/bin/env bash
# The end-to-end tests (make e2e): builds the library and the tagged Go test binaries,
# then runs each inside a fresh harness namespace (tests/e2e/vm.sh), with a real guest.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
[[ $(id -u) -eq 0 ]] || { echo "e2e: run as root (network namespaces, TAP devices, conntrack)" >&2; exit 1; }

bin="$root/build/e2e/bin"
mkdir -p "$bin"
echo "e2e: building the test binaries (with the prebuilt libautostandby, rebuilt if stale)"
bash scripts/prebuilt.sh ensure
# Go does not notice a rebuilt archive by itself: see tests/e2e/qemu/build.go.
ldflags="-X github.com/libautostandby/libautostandby/tests/e2e/qemu.LibraryBuild=$(sha256sum go/internal/binding/libautostandby_linux_amd64.a | cut -c1-16)"
(cd tests/e2e && go vet -tags e2e ./... &&
  go test -count 1 -ldflags "$ldflags" ./qemustore ./cmd/demo &&
  go test -c -tags e2e -ldflags "$ldflags" -o "$bin/qemu.test" ./qemu &&
  go test -c -tags e2e -ldflags "$ldflags" -o "$bin/e2e.test" .)
bash tests/e2e/guest.sh >/dev/null

start=$SECONDS
echo "e2e: QEMU standby/restore cycle on the real guest"
bash tests/e2e/vm.sh run "$bin/qemu.test" -test.v -test.count 1 -test.timeout 5m
echo "e2e: controller scenarios (kernel mode, real conntrack, real guest)"
bash tests/e2e/vm.sh run "$bin/e2e.test" -test.v -test.count 1 -test.timeout 10m "$@"
echo "e2e: passed in $((SECONDS - start)) s"
