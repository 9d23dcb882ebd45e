#!/usr/bin/env bash
# Prints cargo's target directory for this checkout as an absolute path: CARGO_TARGET_DIR
# when it is set (relative to the caller's directory, as cargo takes it), a target-dir
# from a cargo config file, or target/. cargo metadata knows which applies.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -n $dir ]] || { echo "target-dir.sh: cargo metadata named no target directory" >&2; exit 1; }
echo "$dir"
