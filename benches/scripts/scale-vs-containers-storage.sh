#!/usr/bin/env bash
# The store at scale, through the command users run: stores of 1, 100 and
# 1,000 images of 10 layers each (10 / 1,000 / 10,000 layers), vfs, on a
# loop ext4 (mkfs.ext4 defaults), strata against containers/storage's own
# `containers-storage` tool on identical stores (same ids and names),
# interleaved in one run. Each round times, for each tool in turn: image
# list, image inspect, layer list, layer create (a child of an image's top
# layer), layer delete (that child), container create (then deleted,
# untimed). Medians in milliseconds, and strata/peer ratios.
#
#   CONTAINERS_STORAGE=/path/to/containers-storage \
#     benches/scripts/scale-vs-containers-storage.sh [ROUNDS] [SIZES]
#
# The peer is built from its own source (v1.59.1 was used; it vendors its
# Go dependencies: `go build -mod=vendor ./cmd/containers-storage` with Go
# >= 1.23). Without CONTAINERS_STORAGE, strata alone is measured. Filling
# the peer's stores takes one process per layer (no batch mode): about six
# minutes for 10,000 layers; PEER_STORES=DIR reuses stores made before as
# DIR/cs-pN (N images), copied onto the loop filesystem.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-7}
sizes=${2:-"1 100 1000"}
peer=${CONTAINERS_STORAGE:-}
work=$(mktemp -d /var/tmp/strata-scale-XXXXXX)
mnt="$work/mnt"
cleanup() {
    set +e
    for m in $(findmnt -rn -o TARGET | grep "^$mnt" | sort -r); do umount -l "$m"; done
    [ -n "${loopdev:-}" ] && losetup -d "$loopdev"
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q -p strata-cli -p strata-driver-vfs
cargo build --release -q -p strata-benches --example populate
bin=$PWD/target/release
truncate -s 8G "$work/ext4.img"
mkfs.ext4 -q "$work/ext4.img"
loopdev=$(losetup -f --show "$work/ext4.img")
mkdir -p "$mnt"
mount "$loopdev" "$mnt"

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms() { awk '{printf "%.1f", $1/1e6}'; }

for n in $sizes; do
    s_root="$mnt/strata-$n"
    strata=("$bin/strata" --root "$s_root/graph" --run-root "$s_root/run" --driver vfs)
    export STRATA_DRIVER_PATH=$bin
    "$bin/examples/populate" "$s_root/graph" "$s_root/run" "$bin" vfs "$n"
    p_root="$mnt/peer-$n"
    if [ -n "$peer" ]; then
        cs=("$peer")
        o=(-g "$p_root/root" -R "$p_root/run" -s vfs)
        if [ -n "${PEER_STORES:-}" ] && [ -d "$PEER_STORES/cs-p$n" ]; then
            mkdir -p "$p_root"
            cp -a "$PEER_STORES/cs-p$n/root" "$p_root/root"
        else
            for ((i = 0; i < n; i++)); do
                parent=()
                for j in $(seq 0 9); do
                    id=$(printf '%056x%08x' "$i" "$j")
                    "$peer" create-layer "${o[@]}" --id "$id" "${parent[@]}" >/dev/null
                    parent=("$id")
                done
                "$peer" create-image "${o[@]}" --id "$(printf 'ff%054x%08x' "$i" 0)" \
                    -n "example.com/img$i:latest" "${parent[0]}" >/dev/null
            done
        fi
    fi
    mid=$((n / 2))
    name="example.com/img$mid:latest"
    top=$(printf '%056x%08x' "$mid" 9)
    declare -A t=()
    for r in $(seq 1 "$rounds"); do
        for tool in strata peer; do
            [ "$tool" = peer ] && [ -z "$peer" ] && continue
            if [ "$tool" = strata ]; then
                list_images=("${strata[@]}" image list)
                inspect=("${strata[@]}" image inspect "$name")
                list_layers=("${strata[@]}" layer list)
                create=("${strata[@]}" layer create --parent "$top" "bench-$r")
                delete=("${strata[@]}" layer delete "bench-$r")
                container=("${strata[@]}" container create "$name" --name "box-$r")
                uncontainer=("${strata[@]}" container delete "box-$r")
            else
                list_images=("${cs[@]}" images "${o[@]}")
                inspect=("${cs[@]}" image "${o[@]}" "$name")
                list_layers=("${cs[@]}" layers "${o[@]}")
                create=("${cs[@]}" create-layer "${o[@]}" --id "$(printf 'bb%062x' "$r")" "$top")
                delete=("${cs[@]}" delete-layer "${o[@]}" "$(printf 'bb%062x' "$r")")
                container=("${cs[@]}" create-container "${o[@]}" -n "box-$r" "$name")
                uncontainer=("${cs[@]}" delete-container "${o[@]}" "box-$r")
            fi
            for op in list_images inspect list_layers create delete container; do
                declare -n cmd=$op
                start=$(now)
                "${cmd[@]}" >/dev/null
                t[$tool.$op]+="$(($(now) - start)) "
            done
            "${uncontainer[@]}" >/dev/null
        done
    done
    echo "== $n images, $((n * 10)) layers (median of $rounds, ms)"
    printf '%-16s %10s %10s %8s\n' operation strata peer ratio
    for op in list_images inspect list_layers create delete container; do
        s=$(echo "${t[strata.$op]}" | tr ' ' '\n' | grep . | median)
        if [ -n "$peer" ]; then
            p=$(echo "${t[peer.$op]}" | tr ' ' '\n' | grep . | median)
            printf '%-16s %10s %10s %8s\n' "$op" "$(echo "$s" | ms)" "$(echo "$p" | ms)" \
                "$(awk -v a="$s" -v b="$p" 'BEGIN {printf "%.2f", a/b}')"
        else
            printf '%-16s %10s %10s %8s\n' "$op" "$(echo "$s" | ms)" - -
        fi
    done
    unset t
done
