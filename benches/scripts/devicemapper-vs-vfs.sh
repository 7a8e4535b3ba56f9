#!/usr/bin/env bash
# The devicemapper driver through the strata command against vfs, both on
# the test VM's own ext4 disk (this host's kernel has no device-mapper: the
# script runs itself again inside scripts/in-vm.sh), each command a fresh
# process, in alternating rounds in one VM:
#
#   first:   the first command on a new graph root (devicemapper makes its
#            pool and the base device's filesystem; vfs its directories)
#   child:   strata layer create --parent BASE child: devicemapper (a thin
#            snapshot) vs vfs (a full copy), BASE the Debian rootfs (or,
#            without its fixture, 60,000 small files)
#   import:  strata image import of a one-layer gzip'd image of the same tree
#
# The VM runs under software emulation, so absolute times are not a
# machine's; the ratio of the two drivers in the same VM is the figure.
#
# Usage: benches/scripts/devicemapper-vs-vfs.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/lib.sh

if [ "${1:-}" != --inside ]; then
    rounds=${1:-3}
    ./scripts/install-deps.sh
    cargo build --release --quiet -p strata-cli -p strata-driver-vfs -p strata-driver-devicemapper
    # The input is made on the host, where the VM reads it (read-only).
    src=$PWD/target/bench-vm
    rm -rf "$src"
    mkdir -p "$src"
    debian_tar=$PWD/target/bench-fixtures/debian-bookworm-minbase.tar
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
    status=0
    STRATA_BENCH_SRC=$src STRATA_BENCH_INPUT=$input \
        ./scripts/in-vm.sh "$0" --inside "$rounds" || status=$?
    rm -rf "$src"
    exit $status
fi

# Inside the VM.
rounds=$2
src=$STRATA_BENCH_SRC
input=$STRATA_BENCH_INPUT
strata=$PWD/target/release/strata
export STRATA_DRIVER_PATH=$PWD/target/release
work=$(mktemp -d /var/tmp/strata-dm-bench.XXXXXX)

S() { local driver=$1; shift; "$strata" --root "$work/$driver/graph" --run-root "$work/run-$driver" --driver "$driver" "$@"; }
reset() { # strata takes back what it made; the last process lets the pool go
    local driver=$1
    if [ -d "$work/$driver/graph" ]; then
        for image in $(S "$driver" --json image list |
            python3 -c 'import json, sys; print(" ".join(i["id"] for i in json.load(sys.stdin)))'); do
            S "$driver" image delete "$image" >/dev/null
        done
        S "$driver" prune >/dev/null
    fi
    rm -rf "${work:?}/$driver" "$work/run-$driver"
}

echo "== $rounds alternating rounds ($input), in the VM"
for round in $(seq "$rounds"); do
    for driver in devicemapper vfs; do
        reset "$driver"
        t0=$(now); S "$driver" status >/dev/null
        record "first-$driver" $(($(now) - t0))
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
echo "== medians (ms) and ratios, in one VM, on its ext4 disk"
for what in first child import; do
    d=$(med "$what-devicemapper"); v=$(med "$what-vfs")
    printf '%-7s %s: devicemapper %s ms, vfs %s ms (devicemapper %sx vfs)\n' \
        "$what" "$input" "$(ms "$d")" "$(ms "$v")" "$(ratio "$d" "$v")"
done
left=$(ls /sys/block | grep -E '^dm-' || true)
[ -z "$left" ] || { echo "left active: $left" >&2; exit 1; }
