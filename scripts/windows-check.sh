#!/usr/bin/env bash
# Windows, as far as this Linux machine can prove it. Cross-builds the
# Windows parts for x86_64-pc-windows-gnu (rustup target + Debian's
# mingw-w64) with warnings denied and clippy on their Windows-only code,
# then runs their tests as Windows programs under Wine (Debian's wine64) in
# a throwaway prefix:
#   * strata-windows-layer's tests (the layer format: golden bytes, round
#     trips, refusals), so the Windows build of that code is tested too;
#   * the windows driver's DLL loaded through the plugin ABI, answering
#     "not supported" because computestorage.dll is missing, as on any
#     Windows without the Containers feature.
# What needs a real Windows host (HCS itself) is listed in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-pc-windows-gnu
wine_dir=/usr/lib/wine
packages=(-p strata-windows-layer -p strata-driver-windows)
[ -x "$wine_dir/wine64" ] || { echo "wine64 is missing: scripts/install-deps.sh installs it" >&2; exit 1; }
command -v x86_64-w64-mingw32-gcc >/dev/null || { echo "mingw-w64 is missing: scripts/install-deps.sh installs it" >&2; exit 1; }
rustup target list --installed | grep -qx "$target" \
    || { echo "the $target target is missing: rustup target add $target" >&2; exit 1; }

RUSTFLAGS="-D warnings" cargo build --target "$target" "${packages[@]}"
cargo clippy --target "$target" "${packages[@]}" --all-targets -- -D warnings
dll=target/$target/debug/strata_driver_windows.dll
# The driver must load where computestorage.dll is missing: it may not
# import it (it finds it at run time).
# (Read whole first: grep -q closing a pipe early would fail objdump, which
# pipefail would take for "not found".)
imports=$(x86_64-w64-mingw32-objdump -p "$dll")
if grep -qi "DLL Name: computestorage" <<<"$imports"; then
    echo "$dll imports computestorage.dll: it would not load without the Containers feature" >&2
    exit 1
fi

prefix=$(mktemp -d /tmp/strata-wine.XXXXXX)
export WINEPREFIX=$prefix WINEDEBUG=-all
unset DISPLAY
cleanup() {
    "$wine_dir/wineserver" -k 2>/dev/null || true
    "$wine_dir/wineserver" -w 2>/dev/null || true
    rm -rf "$prefix"
}
trap cleanup EXIT
"$wine_dir/wine64" wineboot --init >/dev/null 2>&1
x86_64-w64-mingw32-gcc -O2 -shared -s -o "$prefix/drive_c/windows/system32/bcryptprimitives.dll" \
    scripts/wine/bcryptprimitives.c -ladvapi32
# Wine's own processes inherit the output pipes of the program that starts
# them; a server started here (wineboot's is stopped first) keeps them out of
# the test run, and stays until the cleanup stops it.
"$wine_dir/wineserver" -k 2>/dev/null || true
"$wine_dir/wineserver" -w
"$wine_dir/wineserver" -p </dev/null >/dev/null 2>&1
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$wine_dir/wine64
RUSTFLAGS="-D warnings" cargo test --target "$target" "${packages[@]}"
