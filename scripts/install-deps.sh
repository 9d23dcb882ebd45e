#!/usr/bin/env bash
# Installs what the build, the tests and the demo need, skipping what is already there.
# Safe to run repeatedly. Needs root for apt-get.
set -euo pipefail

packages=(
  build-essential pkg-config   # cc, make, and the C tests
  iproute2 nftables conntrack  # namespaces, veth, nft rules, the conntrack CLI (bench peer)
  valgrind                     # the C leak check
  qemu-system-x86 qemu-utils   # the end-to-end VM (TCG)
  busybox-static cpio          # the guest's initramfs
  socat                        # QMP from shell scripts
  time bc procps               # benches/conntrack.sh: peak RSS, ratios, sysctl
  file                         # make test-go: checks that the static test binary is static
  git                          # scripts/prebuilt.sh: the files the archive is built from
)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing Debian packages: ${missing[*]}; run as root (or install them) and retry" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for tool in cargo go; do
  command -v "$tool" >/dev/null || { echo "install-deps: '$tool' is not on PATH" >&2; exit 1; }
done
rustup component list --installed 2>/dev/null | grep '^clippy' >/dev/null || rustup component add clippy rustfmt

# make fuzz / fuzz-ci: cargo-fuzz (crates.io) on the nightly toolchain (libFuzzer and
# the sanitizers need -Z flags). rustup cannot fetch toolchains here: nightly must exist.
rustup toolchain list 2>/dev/null | grep '^nightly' >/dev/null ||
  { echo "install-deps: the nightly toolchain is missing (make fuzz, make test)" >&2; exit 1; }
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# make tsan: -Zbuild-std rebuilds std with ThreadSanitizer from the nightly's sources.
rustup component list --toolchain nightly --installed 2>/dev/null | grep '^rust-src' >/dev/null ||
  rustup component add rust-src --toolchain nightly
