#!/usr/bin/env bash
# The static library shipped inside the Go module, so that a Go build needs no Rust
# toolchain: go/internal/binding/libautostandby_linux_amd64.a and its stamp.
#
#   prebuilt.sh build    rebuild the archive and its stamp (make prebuilt)
#   prebuilt.sh check    fail when the archive or its header copy is stale or missing
#   prebuilt.sh ensure   rebuild only when `check` fails (make test-go, e2e, demo)
#   prebuilt.sh verify   rebuild from a copy of the sources at another path and compare
#                        the bytes with the archive in go/internal/binding (make prebuilt-verify)
#
# The stamp records a hash of everything that decides the archive's bytes: the tracked
# (and untracked, not ignored) files listed in `inputs`, this script, and the rustc version.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# The toolchain the committed archive is built with. Another rustc gives other bytes.
rust_version=1.95.0
target_triple=x86_64-unknown-linux-gnu
dir=go/internal/binding
archive=$dir/libautostandby_linux_amd64.a
stamp=$archive.stamp
header=$dir/autostandby.h
inputs=(Cargo.toml Cargo.lock build.rs cbindgen.toml src include/autostandby.h scripts/prebuilt.sh)

die() {
  echo "prebuilt: $*" >&2
  exit 1
}

rustc_version() {
  rustc --version 2>/dev/null || die "rustc is not on PATH"
}

check_toolchain() {
  local v
  v=$(rustc_version)
  [[ $v == "rustc $rust_version "* ]] ||
    die "the prebuilt archive is built with rustc $rust_version, this is '$v' (install $rust_version and put it first on PATH, or set RUSTUP_TOOLCHAIN=$rust_version)"
  [[ $(rustc -vV | sed -n 's/^host: //p') == "$target_triple" ]] ||
    die "the prebuilt archive is built on $target_triple, this host is $(rustc -vV | sed -n 's/^host: //p')"
}

# sources_hash: sha256 over the input files' paths and contents and the rustc version.
sources_hash() {
  {
    git ls-files --cached --others --exclude-standard -z -- "${inputs[@]}" |
      LC_ALL=C sort -zu |
      while IFS= read -r -d '' f; do [[ -f $f ]] && sha256sum -- "$f"; done
    echo "rustc $rust_version"
  } | sha256sum | cut -d' ' -f1
}

sha() { sha256sum -- "$1" | cut -d' ' -f1; }

# build_into SRC OUT: builds the archive from the checkout at SRC into the file OUT.
build_into() {
  local src=$1 out=$2 cargo_home target_dir
  cargo_home=$(cd "${CARGO_HOME:-$HOME/.cargo}" && pwd -P)
  target_dir=${PREBUILT_TARGET_DIR:-$src/build/prebuilt/target}
  mkdir -p "$target_dir"
  target_dir=$(cd "$target_dir" && pwd -P)
  src=$(cd "$src" && pwd -P)
  # No debug info, no local paths: the checkout, the cargo home and the target directory
  # are remapped (the last matching prefix wins, so the target directory comes last), and
  # the release profile's debug info is turned off.
  (cd "$src" &&
    env -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
      CARGO_TARGET_DIR=$target_dir \
      CARGO_PROFILE_RELEASE_DEBUG=false \
      CARGO_PROFILE_RELEASE_STRIP=false \
      CARGO_INCREMENTAL=0 \
      RUSTFLAGS="--remap-path-prefix=$src=/libautostandby --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target_dir=/target" \
      cargo build --release --lib --locked --target "$target_triple" --quiet)
  # The standard library's objects in the archive still carry its line tables.
  strip --strip-debug --enable-deterministic-archives -o "$out" "$target_dir/$target_triple/release/libautostandby.a"
}

write_stamp() {
  {
    echo "# $archive: written by 'make prebuilt' (scripts/prebuilt.sh), checked by 'scripts/prebuilt.sh check'"
    echo "sources $(sources_hash)"
    echo "rustc $(rustc_version | cut -d' ' -f2-)"
    echo "archive $(sha "$archive")"
  } >"$stamp"
}

# check: prints why the archive is stale and returns 1, or returns 0.
check() {
  if [[ ! -f $archive || ! -f $stamp ]]; then
    echo "$archive is missing: run make prebuilt and commit it" >&2
    return 1
  fi
  if ! cmp -s include/autostandby.h "$header"; then
    echo "$header differs from include/autostandby.h: run make prebuilt and commit it" >&2
    return 1
  fi
  local want have
  want=$(sed -n 's/^sources //p' "$stamp")
  have=$(sources_hash)
  if [[ $want != "$have" ]]; then
    echo "$archive is stale: run make prebuilt and commit it" >&2
    echo "  (its stamp records sources $want, the checkout has $have)" >&2
    return 1
  fi
  want=$(sed -n 's/^archive //p' "$stamp")
  have=$(sha "$archive")
  if [[ $want != "$have" ]]; then
    echo "$archive does not match its stamp (sha256 $have, stamp $want): run make prebuilt and commit it" >&2
    return 1
  fi
}

build() {
  check_toolchain
  local start=$SECONDS
  tmp=$(mktemp "$archive.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  build_into "$root" "$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$archive"
  trap - EXIT
  # build.rs has regenerated include/autostandby.h if it was stale.
  cp include/autostandby.h "$header"
  write_stamp
  echo "prebuilt: $archive ($(stat -c %s "$archive") bytes, sha256 $(sha "$archive")) in $((SECONDS - start)) s"
}

verify() {
  check_toolchain
  check || die "verify compares a fresh build with an up-to-date archive: run make prebuilt first"
  local start=$SECONDS
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # A copy of the checkout at another path (cargo reads the whole manifest, benches
  # included), built with its own target directory: the bytes must depend on neither.
  mkdir "$tmp/src"
  git ls-files --cached --others --exclude-standard -z -- . ':!go' |
    while IFS= read -r -d '' f; do [[ -f $f ]] && printf '%s\0' "$f"; done |
    cpio --null -pdm --quiet "$tmp/src"
  PREBUILT_TARGET_DIR=$tmp/target build_into "$tmp/src" "$tmp/lib.a"
  if ! cmp "$archive" "$tmp/lib.a"; then
    die "a rebuild from the same sources gave other bytes (sha256 $(sha "$tmp/lib.a"), committed $(sha "$archive")): the build is not reproducible"
  fi
  echo "prebuilt: a rebuild at another path gave the same bytes (sha256 $(sha "$archive")) in $((SECONDS - start)) s"
}

case ${1:-} in
  build) build ;;
  check) check ;;
  ensure) check 2>/dev/null || { echo "prebuilt: $archive is missing or stale, rebuilding it"; build; } ;;
  verify) verify ;;
  *) die "usage: $0 build|check|ensure|verify" ;;
esac
