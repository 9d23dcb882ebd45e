#!/usr/bin/env bash
# The library as a C host gets it: make install into a scratch DESTDIR, then the manual
# scenario built from a copy outside the source tree with nothing but
# `pkg-config --cflags --libs autostandby` pointed at that tree, linked against the
# shared library (found through its SONAME) and the static one (pkg-config --static),
# and run; then make uninstall must leave no file behind. No root needed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
make=${MAKE:-make}
prefix=/opt/autostandby
tmp=$(mktemp -d /tmp/autostandby-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/root
fail() { echo "installed.sh: $*" >&2; exit 1; }

echo "== make install DESTDIR=$dest PREFIX=$prefix"
"$make" --no-print-directory -C "$root" install DESTDIR="$dest" PREFIX="$prefix" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log" >&2; fail "make install failed"; }

lib=$dest$prefix/lib
abi=$(sed -n 's/^#define AUTOSTANDBY_ABI_VERSION \([0-9]*\)$/\1/p' "$dest$prefix/include/autostandby.h")
[[ -n $abi ]] || fail "the installed header defines no AUTOSTANDBY_ABI_VERSION"
for f in "lib/libautostandby.so.$abi" lib/libautostandby.a include/autostandby.h \
  lib/pkgconfig/autostandby.pc bin/autostandby; do
  [[ -f $dest$prefix/$f ]] || fail "$prefix/$f was not installed"
done
[[ $(readlink "$lib/libautostandby.so") == "libautostandby.so.$abi" ]] ||
  fail "lib/libautostandby.so is not a link to libautostandby.so.$abi"
soname=$(readelf -d "$lib/libautostandby.so.$abi" | sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p')
[[ $soname == "libautostandby.so.$abi" ]] || fail "SONAME is '$soname', not libautostandby.so.$abi"
echo "SONAME $soname"
"$dest$prefix/bin/autostandby" --help >/dev/null || fail "the installed CLI does not run"

# The consumer: the scenario and its assertion header, copied away from the source tree.
work=$tmp/consumer
mkdir -p "$work"
cp "$root/tests/c/manual_scenario.c" "$root/tests/c/check.h" "$work/"
cd "$work"
# Only the scratch tree: PKG_CONFIG_LIBDIR replaces the default search path, and the
# sysroot prefixes the .pc's own paths (written for $prefix) with DESTDIR.
export PKG_CONFIG_LIBDIR=$lib/pkgconfig PKG_CONFIG_PATH= PKG_CONFIG_SYSROOT_DIR=$dest
pkg-config --exists --print-errors autostandby || fail "pkg-config does not find autostandby"
cflags=$(pkg-config --cflags autostandby)
libs=$(pkg-config --libs autostandby)
static_libs=$(pkg-config --static --libs autostandby)
echo "pkg-config --cflags: $cflags"
echo "pkg-config --libs: $libs"
echo "pkg-config --static --libs: $static_libs"
[[ $cflags$libs$static_libs != *"$root"* ]] || fail "pkg-config points into the source tree"
warn=(-std=c11 -Wall -Wextra -Werror -pedantic)

echo "== manual scenario, shared"
# shellcheck disable=SC2086 # pkg-config output is a list of flags
gcc "${warn[@]}" manual_scenario.c -o manual_shared $cflags $libs
readelf -d manual_shared | grep -F "(NEEDED)" | grep -F "[libautostandby.so.$abi]" >/dev/null ||
  fail "manual_shared does not need libautostandby.so.$abi: $(readelf -d manual_shared | grep NEEDED)"
# The loader goes by the SONAME: only libautostandby.so.ABI is on its path here.
resolved=$(LD_LIBRARY_PATH=$lib ldd ./manual_shared | sed -n 's/.*libautostandby[^ ]* => \([^ ]*\).*/\1/p')
[[ $resolved == "$lib/libautostandby.so.$abi" ]] || fail "libautostandby resolves to '$resolved'"
LD_LIBRARY_PATH=$lib ./manual_shared

echo "== manual scenario, static"
# -l:libautostandby.a takes the archive where -lautostandby would take the .so beside it;
# every other flag is pkg-config's.
# shellcheck disable=SC2086
gcc "${warn[@]}" manual_scenario.c -o manual_static $cflags ${static_libs/-lautostandby/-l:libautostandby.a}
if readelf -d manual_static | grep -F "(NEEDED)" | grep -F libautostandby >/dev/null; then
  fail "manual_static needs the shared library"
fi
./manual_static

echo "== make uninstall"
"$make" --no-print-directory -C "$root" uninstall DESTDIR="$dest" PREFIX="$prefix" >"$tmp/uninstall.log" 2>&1 ||
  { cat "$tmp/uninstall.log" >&2; fail "make uninstall failed"; }
left=$(find "$dest" ! -type d)
[[ -z $left ]] || fail "make uninstall left: $left"
echo "installed C library: ok"
