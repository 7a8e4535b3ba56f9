#!/usr/bin/env bash
# The strata command against the floor, GNU tar (and gzip), each command a
# fresh process, in alternating rounds in one invocation, on a loop-mounted
# ext4 made with mkfs.ext4 defaults:
#
#   apply:  strata layer create --read-only --diff X.tar   vs  tar -x   (and tar -x; sync -f)
#   export: strata layer diff L -o OUT (an image layer, and a writable layer made
#           from the same tar)                              vs  tar -c of a plain copy
#   import: strata image import of a one-layer gzip'd image vs  gzip -dc BLOB | tar -x
#
# on vfs and overlay, for a Debian root filesystem (if its fixture exists:
# see benches/src/lib.rs), 60,000 small files in 3,000 directories, and
# 4 x 256 MiB files. strata records and fsyncs its records and the tar-split
# record; the file data, like tar's, is left to the page cache, so `tar -x`
# is the like-for-like floor (`tar -x; sync -f` is printed beside it).
# Prints medians and ratios.
#
# Usage: benches/scripts/commands-vs-tar.sh [ROUNDS]
#        INPUTS="debian small big" DRIVERS="vfs overlay" to choose.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
inputs=${INPUTS:-debian small big}
drivers=${DRIVERS:-vfs overlay}
./scripts/install-deps.sh
cargo build --release --quiet -p strata-cli -p strata-driver-vfs -p strata-driver-overlay
strata=$PWD/target/release/strata
export STRATA_DRIVER_PATH=$PWD/target/release
debian_tar=$PWD/target/bench-fixtures/debian-bookworm-minbase.tar

. benches/scripts/lib.sh
bench_loop_ext4 24G
xtar() { tar --numeric-owner --xattrs --xattrs-include='*' "$@"; }

echo "== inputs"
src=$mnt/src
mkdir -p "$src"
for input in $inputs; do
    case $input in
    debian)
        if [ ! -f "$debian_tar" ]; then
            echo "no Debian fixture at $debian_tar: skipping it (cargo bench --bench archive_apply makes it)"
            inputs=${inputs/debian/}
            continue
        fi
        cp "$debian_tar" "$src/debian.tar"
        ;;
    small)
        bench_node_modules "$src/small"
        xtar -C "$src/small" -cf "$src/small.tar" . && rm -rf "$src/small"
        ;;
    big)
        mkdir -p "$src/big"
        for i in 1 2 3 4; do head -c $((256 << 20)) /dev/urandom >"$src/big/file-$i"; done
        xtar -C "$src/big" -cf "$src/big.tar" . && rm -rf "$src/big"
        ;;
    esac
    gzip -1 -c "$src/$input.tar" >"$src/$input.tar.gz"
    # A one-layer OCI image of it, for import.
    bench_oci_layout "$src/$input.tar" "$src/$input.tar.gz" "$src/oci-$input"
    printf '%-7s %6s members, %s tar\n' "$input" "$(tar -tf "$src/$input.tar" | wc -l)" "$(du -h "$src/$input.tar" | cut -f1)"
done

sroot=$mnt/strata
S() { "$strata" --root "$sroot/graph" --run-root "$sroot/run" --driver "$driver" "$@"; }
reset_strata() {
    for m in $(grep -o " $sroot[^ ]*" /proc/mounts | sort -r); do umount -l "$m"; done
    rm -rf "$sroot"
}
settle() { sync; }

echo "== $rounds alternating rounds"
for round in $(seq "$rounds"); do
    for input in $inputs; do
        tarball=$src/$input.tar
        # The floor: tar -x, then tar -x with the filesystem synced.
        rm -rf "$mnt/plain"; mkdir -p "$mnt/plain"; settle
        t0=$(now); xtar -xpf "$tarball" -C "$mnt/plain"
        record "tar-x-$input" $(($(now) - t0))
        t0=$(now); sync -f "$mnt/plain"; record "sync-$input" $(($(now) - t0))
        # Export of a plain directory holding the same tree.
        rm -f "$mnt/out.tar"; settle
        t0=$(now); xtar -C "$mnt/plain" -cf "$mnt/out.tar" .
        record "tar-c-$input" $(($(now) - t0))
        rm -rf "$mnt/plain" "$mnt/out.tar"
        mkdir -p "$mnt/plain"; settle
        t0=$(now); gzip -dc "$tarball.gz" | xtar -xpf - -C "$mnt/plain"
        record "gzip-tar-$input" $(($(now) - t0))
        rm -rf "$mnt/plain"

        for driver in $drivers; do
            reset_strata; S status >/dev/null; settle
            t0=$(now); S layer create --read-only --diff "$tarball" image >/dev/null
            record "apply-$driver-$input" $(($(now) - t0))
            rm -f "$mnt/out.tar"; settle
            t0=$(now); S layer diff image -o "$mnt/out.tar"
            record "export-ro-$driver-$input" $(($(now) - t0))
            rm -f "$mnt/out.tar"
            S layer create --diff "$tarball" writable >/dev/null; settle
            t0=$(now); S layer diff writable -o "$mnt/out.tar"
            record "export-rw-$driver-$input" $(($(now) - t0))
            rm -f "$mnt/out.tar"
            reset_strata; S status >/dev/null; settle
            t0=$(now); S image import "$src/oci-$input:bench" >/dev/null
            record "import-$driver-$input" $(($(now) - t0))
            reset_strata
        done
    done
    echo "round $round done"
done

echo
echo "== medians (ms) and ratios"
for input in $inputs; do
    x=$(med "tar-x-$input"); s=$(med "sync-$input"); c=$(med "tar-c-$input"); g=$(med "gzip-tar-$input")
    printf '%-7s floor: tar -x %s, + sync -f %s; tar -c %s; gzip -dc | tar -x %s\n' \
        "$input" "$(ms "$x")" "$(ms "$s")" "$(ms "$c")" "$(ms "$g")"
    for driver in $drivers; do
        a=$(med "apply-$driver-$input"); r=$(med "export-ro-$driver-$input")
        w=$(med "export-rw-$driver-$input"); i=$(med "import-$driver-$input")
        printf '  %-8s apply %8s ms %5sx tar -x (%5sx with sync)   export image layer %8s ms %5sx tar -c   writable %8s ms %5sx   import %8s ms %5sx gzip|tar\n' \
            "$driver" "$(ms "$a")" "$(ratio "$a" "$x")" "$(ratio "$a" "$((x + s))")" \
            "$(ms "$r")" "$(ratio "$r" "$c")" "$(ms "$w")" "$(ratio "$w" "$c")" \
            "$(ms "$i")" "$(ratio "$i" "$g")"
    done
done
