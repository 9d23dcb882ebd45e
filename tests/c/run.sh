#!/usr/bin/env bash
# The C consumer tests: the header alone as C and C++, the exported symbols, the
# manual-mode and kernel-mode scenarios under ASan/UBSan linked against the shared and
# the static library, and one valgrind run. Usage: run.sh LIB_DIR (e.g. target/debug).
set -euo pipefail
cd "$(dirname "$0")/../.."
lib_dir=${1:?usage: run.sh LIB_DIR}
# Absolute, for the rpath (LIB_DIR is relative to the checkout or, under
# CARGO_TARGET_DIR, anywhere).
lib_dir=$(cd "$lib_dir" && pwd)
out=build/c
mkdir -p "$out"
so=$lib_dir/libautostandby.so
a=$lib_dir/libautostandby.a
[[ -f $so && -f $a ]] || { echo "run.sh: $so or $a missing: run cargo build --lib first" >&2; exit 1; }

cflags=(-std=c11 -Wall -Wextra -Werror -pedantic -g -Iinclude -Itests/c)
san=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
static_libs=(-lpthread -ldl -lm)

echo "== header compiles alone as C11 and C++"
echo '#include "autostandby.h"' >"$out/header_only.c"
gcc "${cflags[@]}" -c "$out/header_only.c" -o "$out/header_only_c.o"
g++ -std=c++11 -Wall -Wextra -Werror -pedantic -Iinclude -x c++ -c "$out/header_only.c" -o "$out/header_only_cxx.o"

echo "== exported symbols"
bad=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v '^autostandby_' | grep -v '^rust_eh_personality$' || true)
[[ -z $bad ]] || { echo "libautostandby.so exports non-autostandby symbols:" >&2; echo "$bad" >&2; exit 1; }
nm -D --defined-only "$so" | grep ' T autostandby_controller_new$' >/dev/null
# In the archive, every global symbol outside the reserved `__` namespace (compiler
# runtime) and Rust's mangled names must carry the prefix.
bad=$(nm -g --defined-only "$a" 2>/dev/null | awk 'NF==3 {print $3}' \
  | grep -vE '^(autostandby_|__|_ZN|_R|(DW\.ref\.)?rust_eh_personality$)' | sort -u || true)
[[ -z $bad ]] || { echo "libautostandby.a defines unexpected global symbols:" >&2; echo "$bad" >&2; exit 1; }

build() { # name source link...
  local name=$1 src=$2
  shift 2
  gcc "${cflags[@]}" "${san[@]}" "$src" -o "$out/$name" "$@"
}
build manual_so tests/c/manual_scenario.c -L"$lib_dir" -lautostandby -Wl,-rpath,"$lib_dir"
build manual_a tests/c/manual_scenario.c "$a" "${static_libs[@]}"
build kernel_so tests/c/kernel_scenario.c -L"$lib_dir" -lautostandby -Wl,-rpath,"$lib_dir"
build kernel_a tests/c/kernel_scenario.c "$a" "${static_libs[@]}"
gcc "${cflags[@]}" tests/c/manual_scenario.c -o "$out/manual_valgrind" -L"$lib_dir" -lautostandby -Wl,-rpath,"$lib_dir"

echo "== manual scenario (.so, ASan/UBSan)"; "$out/manual_so"
echo "== manual scenario (.a, ASan/UBSan)"; "$out/manual_a"
echo "== manual scenario under valgrind"
valgrind -q --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
  --error-exitcode=3 "$out/manual_valgrind"
echo "== kernel scenario (.so, ASan/UBSan)"; bash tests/c/kernel_netns.sh "$out/kernel_so"
echo "== kernel scenario (.a, ASan/UBSan)"; bash tests/c/kernel_netns.sh "$out/kernel_a"
echo "C tests: ok"
