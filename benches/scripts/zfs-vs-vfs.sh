#!/usr/bin/env bash
# The zfs driver through the strata command against vfs on the same
# zfs-fuse pool (zfs-fuse is slow; the ratio against vfs on the same pool is
# the figure that means something), each command a fresh process, in
# alternating rounds in one invocation:
#
#   child:   strata layer create --parent BASE child: zfs (snapshot + clone)
#            vs vfs (a full copy), BASE the Debian rootfs (or, without its
#            fixture, 60,000 small files)
#   import:  strata image import of a one-layer gzip'd image of the same tree
#
# The pool is on a sparse file; the daemon is started if none runs and
# stopped again, and the pool destroyed, on exit whatever happens.
#
# Usage: benches/scripts/zfs-vs-vfs.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
./scripts/install-deps.sh
cargo build --release --quiet -p strata-cli -p strata-driver-vfs -p strata-driver-zfs
strata=$PWD/target/release/strata
export STRATA_DRIVER_PATH=$PWD/target/release
debian_tar=$PWD/target/bench-fixtures/debian-bookworm-minbase.tar
. benches/scripts/lib.sh

work=$(mktemp -d /var/tmp/strata-zfs-bench.XXXXXX)
pool=strata-bench-$$
started=""
cleanup() {
    set +e
    zpool destroy -f "$pool" 2>/dev/null
    [ -n "$started" ] && kill "$(cat "$work/zfs-fuse.pid")" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
if ! zpool list -H >/dev/null 2>&1; then
    zfs-fuse --no-kstat-mount -p "$work/zfs-fuse.pid"
    started=yes
    for _ in $(seq 150); do zpool list -H >/dev/null 2>&1 && break; sleep 0.1; done
fi
truncate -s 16G "$work/pool.img"
zpool create -f -m "$work/pool" "$pool" "$work/pool.img"
src=$work/src
mkdir -p "$src"

if [ -f "$debian_tar" ]; then
    input=debian
    cp "$debian_tar" "$src/$input.tar"
else
    echo "no Debian fixture at $debian_tar: 60,000 small files instead"
    input=small
    bench_node_modules "$src/small"
    tar -C "$src/small" -cf "$src/small.tar" . && rm -rf "$src/small"
fi
gzip -1 -c "$src/$input.tar" >"$src/$input.tar.gz"
bench_oci_layout "$src/$input.tar" "$src/$input.tar.gz" "$src/oci"

S() { local driver=$1; shift; "$strata" --root "$work/pool/$driver/graph" --run-root "$work/run-$driver" --driver "$driver" "$@"; }
reset() { # strata takes back what it made (read-only datasets and subvolumes included)
    local driver=$1
    if [ -d "$work/pool/$driver/graph" ]; then
        for image in $(S "$driver" --json image list |
            python3 -c 'import json, sys; print(" ".join(i["id"] for i in json.load(sys.stdin)))'); do
            S "$driver" image delete "$image" >/dev/null
        done
        S "$driver" prune >/dev/null
    fi
    rm -rf "${work:?}/pool/$driver" "$work/run-$driver"
}

echo "== $rounds alternating rounds ($input)"
for round in $(seq "$rounds"); do
    for driver in zfs vfs; do
        reset "$driver"
        S "$driver" layer create --read-only --diff "$src/$input.tar" base >/dev/null; sync
        t0=$(now); S "$driver" layer create --parent base child >/dev/null
        record "child-$driver" $(($(now) - t0))
        reset "$driver"
        S "$driver" status >/dev/null; sync
        t0=$(now); S "$driver" image import "$src/oci:bench" >/dev/null
        record "import-$driver" $(($(now) - t0))
        reset "$driver"
    done
    echo "round $round done"
done

echo
echo "== medians (ms) and ratios, on one zfs-fuse pool"
cz=$(med child-zfs); cv=$(med child-vfs); iz=$(med import-zfs); iv=$(med import-vfs)
printf 'child of %s: zfs %s ms, vfs %s ms (zfs %sx vfs)\n' "$input" "$(ms "$cz")" "$(ms "$cv")" "$(ratio "$cz" "$cv")"
printf 'import %s: zfs %s ms, vfs %s ms (zfs %sx vfs)\n' "$input" "$(ms "$iz")" "$(ms "$iv")" "$(ratio "$iz" "$iv")"
