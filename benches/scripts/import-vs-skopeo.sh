#!/usr/bin/env bash
# Import, export and container mount figures for strata against its peer.
#
# The peer is containers/storage as users run it: Debian's skopeo, copying an
# OCI layout into "containers-storage:[DRIVER@GRAPHROOT+RUNROOT]". Both import
# the same gzip'd images made by umoci (a Debian root filesystem from
# debootstrap, and a 60,000-file node_modules-like tree), on overlay and on
# vfs, in alternating runs in one invocation, on a loop-mounted ext4 made with
# mkfs.ext4 defaults. strata verifies every digest and records tar-split as it
# always does. Also timed, alternating:
#   floor:  gzip -dc LAYER | tar -x   (decompress and write, nothing else)
#   export: strata layer diff  vs  tar -c of the same tree
#   mount:  strata container mount / unmount on a 50-layer image
# Prints medians and the ratios.
# Usage: benches/scripts/import-vs-skopeo.sh [ROUNDS]   (IMAGES="debian modules" to choose)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
images=${IMAGES:-debian modules}
./scripts/install-deps.sh
cargo build --release --quiet -p strata-cli -p strata-driver-vfs -p strata-driver-overlay
strata=$PWD/target/release/strata
export STRATA_DRIVER_PATH=$PWD/target/release

. benches/scripts/lib.sh
bench_debian_tar
bench_loop_ext4 16G

echo "== making the images with umoci"
src=$mnt/src
mkdir -p "$src/debian" "$src/modules"
tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$debian_tar" -C "$src/debian"
bench_node_modules "$src/modules"
layout=$mnt/oci
umoci init --layout "$layout"
for name in debian modules; do
    umoci new --image "$layout:$name"
    umoci insert --image "$layout:$name" "$src/$name" /
done
# A 50-layer image for the mount figures.
umoci new --image "$layout:deep"
mkdir -p "$src/deep"
for i in $(seq -w 1 50); do
    echo "layer $i" > "$src/deep/file-$i"
    umoci insert --image "$layout:deep" "$src/deep/file-$i" "/layers/file-$i"
done
layer_blob() { # the single layer blob of image $1
    local manifest
    manifest=$(python3 -c 'import json,sys; idx=json.load(open(sys.argv[1]+"/index.json")); print([m["digest"] for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"]==sys.argv[2]][0].split(":")[1])' "$layout" "$1")
    python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["layers"][0]["digest"].split(":")[1])' "$layout/blobs/sha256/$manifest"
}
tree_entries() { find "$src/$1" | wc -l; }
echo "debian: $(tree_entries debian) entries, modules: $(tree_entries modules) entries"
du -sh "$layout"

# The stores; each run starts from an empty one.
sroot=$mnt/strata
croot=$mnt/cs
reset_strata() {
    "$strata" --root "$sroot/graph" --run-root "$sroot/run" --driver "$1" container delete bench >/dev/null 2>&1 || true
    for m in $(grep -o " $sroot[^ ]*" /proc/mounts | sort -r); do umount -l "$m"; done
    rm -rf "$sroot"
}
reset_cs() {
    for m in $(grep -o " $croot[^ ]*" /proc/mounts | sort -r); do umount -l "$m"; done
    rm -rf "$croot"
}


echo "== import: $rounds alternating rounds"
for round in $(seq "$rounds"); do
    for image in $images; do
        for driver in overlay vfs; do
            reset_cs; sync
            t0=$(now)
            skopeo copy --quiet "oci:$layout:$image" \
                "containers-storage:[$driver@$croot/graph+$croot/run]bench/$image:latest" >/dev/null
            record "skopeo-$image-$driver" $(($(now) - t0))
            reset_cs

            reset_strata "$driver"; sync
            t0=$(now)
            "$strata" --root "$sroot/graph" --run-root "$sroot/run" --driver "$driver" \
                image import "$layout:$image" >/dev/null
            record "strata-$image-$driver" $(($(now) - t0))
            reset_strata "$driver"
        done
        rm -rf "$mnt/floor"; mkdir -p "$mnt/floor"; sync
        blob=$layout/blobs/sha256/$(layer_blob "$image")
        t0=$(now)
        gzip -dc "$blob" | tar --numeric-owner --xattrs --xattrs-include='*' -xpf - -C "$mnt/floor" 2>/dev/null || true
        record "floor-$image" $(($(now) - t0))
        rm -rf "$mnt/floor"
    done
    echo "round $round done"
done

echo "== export and mount: $rounds alternating rounds"
driver=overlay
S() { "$strata" --root "$sroot/graph" --run-root "$sroot/run" --driver "$driver" "$@"; }
reset_strata "$driver"
for image in debian modules deep; do S image import "$layout:$image" >/dev/null; done
for round in $(seq "$rounds"); do
    for image in $images; do
        top=$(S image inspect "$image" | python3 -c 'import json,sys; print(json.load(sys.stdin)["top_layer"])')
        tree=$(S layer mount "$top")
        sync
        t0=$(now)
        S layer diff "$top" -o "$mnt/export.tar"
        record "export-strata-$image" $(($(now) - t0))
        rm -f "$mnt/export.tar"; sync
        t0=$(now)
        tar --numeric-owner --xattrs --xattrs-include='*' -C "$tree" -cf "$mnt/export.tar" .
        record "export-tar-$image" $(($(now) - t0))
        rm -f "$mnt/export.tar"
        S layer unmount "$top"
    done
done
S container create deep --name bench >/dev/null
for i in $(seq $((rounds * 4))); do
    t0=$(now); S container mount bench >/dev/null; record mount $(($(now) - t0))
    t0=$(now); S container unmount bench; record unmount $(($(now) - t0))
done
S container delete bench >/dev/null

echo
echo "== medians (ms) and ratios"
for image in $images; do
    floor=$(med "floor-$image")
    for driver in overlay vfs; do
        sk=$(med "skopeo-$image-$driver"); st=$(med "strata-$image-$driver")
        printf 'import %-8s %-8s skopeo %8s  strata %8s  skopeo/strata %5sx  strata/floor %5sx\n' \
            "$image" "$driver" "$(ms "$sk")" "$(ms "$st")" "$(ratio "$sk" "$st")" "$(ratio "$st" "$floor")"
    done
    printf 'floor  %-8s gzip -dc | tar -x %8s\n' "$image" "$(ms "$floor")"
    ex=$(med "export-strata-$image"); tc=$(med "export-tar-$image")
    printf 'export %-8s strata layer diff %8s  tar -c %8s  strata/tar %5sx\n' \
        "$image" "$(ms "$ex")" "$(ms "$tc")" "$(ratio "$ex" "$tc")"
done
printf 'container on a 50-layer image (strata command, process start included): mount %s ms, unmount %s ms\n' \
    "$(ms "$(med mount)")" "$(ms "$(med unmount)")"
