#!/usr/bin/env bash
# Windows, as far as this Linux machine can prove it. Cross-builds the
# Windows parts for x86_64-pc-windows-gnu (rustup target + Debian's
# mingw-w64) with warnings denied and clippy on their Windows-only code,
# then runs their tests as Windows programs under Wine (Debian's wine64) in
# a throwaway prefix:
#   * strata-windows-layer's tests (the layer format: golden bytes, round
#     trips, refusals), so the Windows build of that code is tested too;
#   * strata-core's unit tests that need no Linux tree (records database,
#     lock files and sessions on LockFileEx, atomic writes, configuration,
#     ids, the OCI layout opener, mount counts);
#   * the windows driver's DLL loaded through the plugin ABI, answering
#     "not supported" because computestorage.dll is missing, as on any
#     Windows without the Containers feature;
#   * strata.exe and strata-conformance.exe (core, CLI and the runner, built
#     for Windows): `strata.exe drivers` finds the DLL beside it, loads it
#     through the ABI and reports it not supported with the HCS reason;
#     `strata.exe status` says no driver works here and why;
#     `strata-conformance.exe --driver strata_driver_windows.dll` says why it
#     cannot run.
# What needs a real Windows host (HCS itself) is listed in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-pc-windows-gnu
wine_dir=/usr/lib/wine
# Tested under Wine (cargo test): the format and the driver's DLL.
packages=(-p strata-windows-layer -p strata-driver-windows)
# Built (and their Windows-only code linted): core, the CLI, the runner, and
# the format-owner test plugin the store runs on below.
programs=(-p strata-core -p strata-cli -p strata-conformance -p strata-test-format-owner)
[ -x "$wine_dir/wine64" ] || { echo "wine64 is missing: scripts/install-deps.sh installs it" >&2; exit 1; }
command -v x86_64-w64-mingw32-gcc >/dev/null || { echo "mingw-w64 is missing: scripts/install-deps.sh installs it" >&2; exit 1; }
rustup target list --installed | grep -qx "$target" \
    || { echo "the $target target is missing: rustup target add $target" >&2; exit 1; }

RUSTFLAGS="-D warnings" cargo build --target "$target" "${packages[@]}" "${programs[@]}"
cargo clippy --target "$target" "${packages[@]}" --all-targets -- -D warnings
# Their tests are Linux's (they build trees, mounts and backends): lib and bins.
cargo clippy --target "$target" "${programs[@]}" -- -D warnings
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
RUSTFLAGS="-D warnings" cargo test --target "$target" -p strata-core --lib

# The programs, as a user on Windows runs them: strata.exe finds drivers
# beside itself.
bin=target/$target/debug
expect() { # expect WHAT PATTERN OUTPUT
    if ! grep -q -- "$2" <<<"$3"; then
        printf '%s: expected output matching "%s", got:\n%s\n' "$1" "$2" "$3" >&2
        exit 1
    fi
}
run_wine() { # run_wine EXPECTED_STATUS PROGRAM ARGS... ; prints stdout+stderr
    local want=$1 status=0 out
    shift
    out=$(cd "$bin" && timeout 300 "$wine_dir/wine64" "$@" 2>&1) || status=$?
    if [ "$status" != "$want" ]; then
        printf '%s: exit %s, expected %s; output:\n%s\n' "$*" "$status" "$want" "$out" >&2
        exit 1
    fi
    printf '%s\n' "$out"
}
root='C:\strata-check\root'
runroot='C:\strata-check\run'
out=$(run_wine 0 ./strata.exe --root "$root" --run-root "$runroot" drivers)
echo "$out"
expect "strata.exe drivers" 'strata_driver_windows.dll' "$out"
expect "strata.exe drivers" 'ABI: *strata-plugin-abi 1\.' "$out"
expect "strata.exe drivers" 'not supported: .*computestorage.dll not found.*Windows Containers feature' "$out"
out=$(run_wine 2 ./strata.exe --root "$root" --run-root "$runroot" status)
echo "$out"
expect "strata.exe status" 'no storage driver works here' "$out"
expect "strata.exe status" 'windows: .*computestorage.dll not found' "$out"
out=$(run_wine 2 ./strata-conformance.exe --driver strata_driver_windows.dll --junit 'C:\not-run.xml')
echo "$out"
expect "strata-conformance.exe" 'cannot run here, so no check ran: .*computestorage.dll not found' "$out"
junit=$(cat "$prefix/drive_c/not-run.xml")
expect "strata-conformance.exe --junit" '<failure message="the driver in .*computestorage.dll not found' "$junit"
out=$(run_wine 0 ./strata-conformance.exe --list)
expect "strata-conformance.exe --list" '^lifecycle/create-exists-list-remove' "$out"
expect "strata-conformance.exe --list" '^content/\* *The content area: Linux only' "$out"

# The store on Windows end to end, with a test plugin that owns its layer
# format as the windows driver does (it keeps each layer's stream; built for
# Windows with a plain home of its own): records, lock files, sessions, OCI
# import and export through the driver's stream, containers and mounts
# counted, two processes at once, and check -- everything but HCS itself.
drive=$prefix/drive_c
mkdir -p "$drive/strata-drivers"
cp "$bin/strata_test_format_owner.dll" "$drive/strata-drivers/strata_driver_format-owner.dll"
read -r config diff_id < <(python3 scripts/wine/oci-layout.py make "$drive/layout")
export STRATA_DRIVER_PATH='C:\strata-drivers' STRATA_DRIVER=format-owner \
    STRATA_ROOT='C:\strata-store\root' STRATA_RUN_ROOT='C:\strata-store\run'
out=$(run_wine 0 ./strata.exe image import 'C:\layout:latest')
expect "strata.exe image import" "^${config#sha256:}\$" "$out"
# Two processes on one store at once: both imports land, one image.
(cd "$bin" && timeout 300 "$wine_dir/wine64" ./strata.exe image import --name a 'C:\layout:latest') >/dev/null 2>&1 & first=$!
(cd "$bin" && timeout 300 "$wine_dir/wine64" ./strata.exe image import --name b 'C:\layout:latest') >/dev/null 2>&1 & second=$!
wait "$first" || { echo "the first of two concurrent imports failed" >&2; exit 1; }
wait "$second" || { echo "the second of two concurrent imports failed" >&2; exit 1; }
out=$(run_wine 0 ./strata.exe image list)
echo "$out"
expect "strata.exe image list" "^${config:7:12}  *1  *latest, [ab], [ab]\$" "$out"
run_wine 0 ./strata.exe image export latest 'C:\exported:copy' >/dev/null
python3 scripts/wine/oci-layout.py check "$drive/exported" "$config" "$diff_id"
run_wine 0 ./strata.exe container create --name box latest >/dev/null
out=$(run_wine 0 ./strata.exe container mount box)
expect "strata.exe container mount" 'C:\\strata-store\\root\\format-owner\\layers\\' "$out"
run_wine 0 ./strata.exe container unmount box >/dev/null
run_wine 0 ./strata.exe container delete box >/dev/null
out=$(run_wine 0 ./strata.exe check)
expect "strata.exe check" 'no inconsistencies found' "$out"
run_wine 0 ./strata.exe image delete --force latest >/dev/null
out=$(run_wine 0 ./strata.exe layer list -q)
[ -z "$out" ] || { printf 'layers left after the image was deleted:\n%s\n' "$out" >&2; exit 1; }
echo "windows-check: the Windows build, its format tests and the programs under Wine passed"
