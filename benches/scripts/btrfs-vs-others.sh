#!/usr/bin/env bash
# The btrfs driver through the strata command, against the other drivers and
# GNU tar, each command a fresh process, in alternating rounds in one
# invocation:
#
#   child:   strata layer create --parent DEBIAN child: btrfs (snapshot) vs vfs
#            (copy, extents reflinked) vs overlay, all three on the same loop btrfs
#   import:  strata image import of a one-layer gzip'd image (Debian rootfs,
#            60,000 small files): btrfs on loop btrfs vs overlay on loop ext4
#            vs gzip -dc | tar -x on each (per-file costs differ between the
#            two filesystems: the like-for-like floor is tar on btrfs)
#   chain:   50 x strata layer create --parent (each adding a file), then
#            container create + mount + unmount on its top: btrfs vs overlay
#   remove:  strata layer delete of a layer holding 60,000 files vs rm -rf of
#            the same tree, both on the loop btrfs
#
# Prints medians and ratios. The Debian input needs its fixture (cargo bench
# --bench archive_apply makes target/bench-fixtures/debian-bookworm-minbase.tar);
# without it the Debian figures are skipped, saying so.
#
# Usage: benches/scripts/btrfs-vs-others.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
./scripts/install-deps.sh
cargo build --release --quiet -p strata-cli -p strata-driver-vfs -p strata-driver-overlay \
    -p strata-driver-btrfs
strata=$PWD/target/release/strata
export STRATA_DRIVER_PATH=$PWD/target/release
debian_tar=$PWD/target/bench-fixtures/debian-bookworm-minbase.tar

. benches/scripts/lib.sh
bench_loop_ext4 16G
# A loop btrfs beside the ext4, taken down by the same trap (its mount is
# under $mnt; its loop device is detached here).
truncate -s 16G "$work/btrfs.img"
mkfs.btrfs -q -f "$work/btrfs.img"
btrfs_loop=$(losetup --find --show "$work/btrfs.img")
bmnt=$mnt/btrfs
mkdir -p "$bmnt"
mount "$btrfs_loop" "$bmnt"
trap 'bench_cleanup; losetup -d "$btrfs_loop" 2>/dev/null || true' EXIT

xtar() { tar --numeric-owner --xattrs --xattrs-include='*' "$@"; }

echo "== inputs"
src=$mnt/src
mkdir -p "$src"
inputs=small
if [ -f "$debian_tar" ]; then
    cp "$debian_tar" "$src/debian.tar"
    inputs="debian small"
else
    echo "no Debian fixture at $debian_tar: its figures are skipped"
fi
bench_node_modules "$src/small"
xtar -C "$src/small" -cf "$src/small.tar" . && rm -rf "$src/small"
for input in $inputs; do
    gzip -1 -c "$src/$input.tar" >"$src/$input.tar.gz"
    bench_oci_layout "$src/$input.tar" "$src/$input.tar.gz" "$src/oci-$input"
    printf '%-7s %6s members, %s tar\n' "$input" "$(tar -tf "$src/$input.tar" | wc -l)" "$(du -h "$src/$input.tar" | cut -f1)"
done

# S ROOT DRIVER ARGS...: strata on the graph root under ROOT.
S() { local root=$1 driver=$2; shift 2; "$strata" --root "$root/graph" --run-root "$root/run" --driver "$driver" "$@"; }
reset() {
    local root=$1
    for m in $(grep -o " $root[^ ]*" /proc/mounts | sort -r); do umount -l "$m"; done
    # A btrfs graph root holds read-only subvolumes, which rm cannot
    # delete: strata deletes what it made (images, then every layer).
    if [ -d "$root/graph" ]; then
        for driver in btrfs vfs overlay; do
            [ -d "$root/graph/$driver" ] || continue
            for image in $(S "$root" "$driver" --json image list |
                python3 -c 'import json, sys; print(" ".join(i["id"] for i in json.load(sys.stdin)))'); do
                S "$root" "$driver" image delete "$image" >/dev/null
            done
            S "$root" "$driver" prune >/dev/null
            for l in $(S "$root" "$driver" layer list -q | tac); do
                S "$root" "$driver" layer delete "$l" >/dev/null
            done
        done
    fi
    rm -rf "$root"
}
settle() { sync; }
root_for() { # root_for DRIVER BACKING: where that driver's graph root goes
    case $2 in btrfs) echo "$bmnt/strata-$1" ;; ext4) echo "$mnt/strata-$1" ;; esac
}

echo "== $rounds alternating rounds"
for round in $(seq "$rounds"); do
    # child of the Debian rootfs (or the small-files tree without it)
    base=${inputs%% *}
    for driver in btrfs vfs overlay; do
        r=$(root_for "$driver" btrfs); reset "$r"
        S "$r" "$driver" layer create --read-only --diff "$src/$base.tar" base >/dev/null; settle
        t0=$(now); S "$r" "$driver" layer create --parent base child >/dev/null
        record "child-$driver" $(($(now) - t0))
        reset "$r"
    done

    # import
    for input in $inputs; do
        rm -rf "$mnt/plain"; mkdir -p "$mnt/plain"; settle
        t0=$(now); gzip -dc "$src/$input.tar.gz" | xtar -xpf - -C "$mnt/plain"
        record "gzip-tar-$input" $(($(now) - t0))
        rm -rf "$mnt/plain"
        # The same on the loop btrfs: what btrfs itself costs per file.
        rm -rf "$bmnt/plain"; mkdir -p "$bmnt/plain"; settle
        t0=$(now); gzip -dc "$src/$input.tar.gz" | xtar -xpf - -C "$bmnt/plain"
        record "gzip-tar-btrfs-$input" $(($(now) - t0))
        rm -rf "$bmnt/plain"
        for pair in btrfs:btrfs overlay:ext4; do
            driver=${pair%%:*}; r=$(root_for "$driver" "${pair##*:}"); reset "$r"
            S "$r" "$driver" status >/dev/null; settle
            t0=$(now); S "$r" "$driver" image import "$src/oci-$input:bench" >/dev/null
            record "import-$driver-$input" $(($(now) - t0))
            reset "$r"
        done
    done

    # a 50-layer chain, and a container on its top
    for pair in btrfs:btrfs overlay:ext4; do
        driver=${pair%%:*}; r=$(root_for "$driver" "${pair##*:}"); reset "$r"
        printf 'x' >"$src/one"; xtar -C "$src" -cf "$src/one.tar" one
        S "$r" "$driver" status >/dev/null; settle
        t0=$(now)
        parent=()
        for i in $(seq -w 1 50); do
            S "$r" "$driver" layer create --read-only --diff "$src/one.tar" "${parent[@]}" "l$i" >/dev/null
            parent=(--parent "l$i")
        done
        record "chain-$driver" $(($(now) - t0))
        # A container needs an image: one on the chain's top, recorded by hand
        # through the layer's name is not possible from the command, so the
        # container is a read-write layer on the top, mounted and unmounted.
        S "$r" "$driver" layer create --parent l50 c >/dev/null; settle
        t0=$(now); S "$r" "$driver" layer mount c >/dev/null; S "$r" "$driver" layer unmount c
        record "mount-$driver" $(($(now) - t0))
        reset "$r"
    done

    # removing a layer of 60,000 files, against rm -rf of the same tree
    r=$(root_for btrfs btrfs); reset "$r"
    S "$r" btrfs layer create --diff "$src/small.tar" big >/dev/null
    rm -rf "$bmnt/plain"; mkdir -p "$bmnt/plain"; xtar -xpf "$src/small.tar" -C "$bmnt/plain"; settle
    t0=$(now); rm -rf "$bmnt/plain"; sync -f "$bmnt"
    record "rm-rf" $(($(now) - t0))
    settle
    t0=$(now); S "$r" btrfs layer delete big; sync -f "$bmnt"
    record "delete-btrfs" $(($(now) - t0))
    reset "$r"
    echo "round $round done"
done

echo
echo "== medians (ms) and ratios"
cb=$(med child-btrfs); cv=$(med child-vfs); co=$(med child-overlay)
printf 'child of %s: btrfs %s ms, vfs %s ms (%sx btrfs), overlay %s ms (%sx btrfs)\n' \
    "$base" "$(ms "$cb")" "$(ms "$cv")" "$(ratio "$cv" "$cb")" "$(ms "$co")" "$(ratio "$co" "$cb")"
for input in $inputs; do
    g=$(med "gzip-tar-$input"); gb=$(med "gzip-tar-btrfs-$input")
    ib=$(med "import-btrfs-$input"); io=$(med "import-overlay-$input")
    printf 'import %-7s: btrfs %s ms (%sx gzip|tar on btrfs, %sx overlay on ext4), overlay %s ms (%sx gzip|tar on ext4); gzip -dc | tar -x: %s ms on btrfs, %s ms on ext4\n' \
        "$input" "$(ms "$ib")" "$(ratio "$ib" "$gb")" "$(ratio "$ib" "$io")" "$(ms "$io")" "$(ratio "$io" "$g")" "$(ms "$gb")" "$(ms "$g")"
done
hb=$(med chain-btrfs); ho=$(med chain-overlay); mb=$(med mount-btrfs); mo=$(med mount-overlay)
printf '50-layer chain: btrfs %s ms, overlay %s ms (btrfs %sx overlay); mount+unmount on top: btrfs %s ms, overlay %s ms (%sx)\n' \
    "$(ms "$hb")" "$(ms "$ho")" "$(ratio "$hb" "$ho")" "$(ms "$mb")" "$(ms "$mo")" "$(ratio "$mb" "$mo")"
d=$(med delete-btrfs); x=$(med rm-rf)
printf 'remove 60,000 files: strata layer delete (btrfs) %s ms, rm -rf %s ms (%sx rm -rf)\n' \
    "$(ms "$d")" "$(ms "$x")" "$(ratio "$d" "$x")"
