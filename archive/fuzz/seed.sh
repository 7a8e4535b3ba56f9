#!/usr/bin/env bash
# Seeds the apply fuzzer's corpus with small real tars (plain, gzip, zstd).
set -euo pipefail
cd "$(dirname "$0")"
corpus=corpus/apply
mkdir -p "$corpus"
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
mkdir -p "$src/d/e"
echo hello > "$src/d/f"
ln -s f "$src/d/l"
ln "$src/d/f" "$src/d/h"
touch "$src/d/.wh.gone" "$src/d/e/.wh..wh..opq"
tar --format=posix -C "$src" -cf "$corpus/posix.tar" .
tar --format=gnu -C "$src" -cf "$corpus/gnu.tar" .
gzip -c "$corpus/posix.tar" > "$corpus/posix.tar.gz"
if command -v zstd >/dev/null; then zstd -q -f "$corpus/gnu.tar" -o "$corpus/gnu.tar.zst"; fi
