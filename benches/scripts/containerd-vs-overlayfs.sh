#!/usr/bin/env bash
# containerd on strata against containerd on its own overlayfs snapshotter,
# in one containerd, in alternating runs:
#   unpack:  ctr snapshots unpack of a Debian image (debootstrap minbase,
#            one layer made by umoci, archived by skopeo) onto strata's
#            overlay driver through strata-snapshotter, and onto overlayfs
#   cycle:   ctr snapshots prepare + commit + rm of an empty snapshot on the
#            image (the CLI's process start included, the same for both)
# on a loop-mounted ext4 made with mkfs.ext4 defaults. Prints medians and
# the ratios strata / overlayfs. The in-process Prepare/Commit latency
# through the proxy, without ctr, is the criterion bench
# `cargo bench -p strata-snapshotter --bench proxy_latency`.
# Usage: benches/scripts/containerd-vs-overlayfs.sh [ROUNDS] [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-7}
cycles=${2:-30}
./scripts/install-deps.sh
cargo build --release --quiet -p strata-snapshotter -p strata-driver-overlay
. benches/scripts/lib.sh
bench_debian_tar
bench_loop_ext4 16G
stop_daemons() {
    [ -n "${containerd_pid:-}" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
    [ -n "${snapshotter_pid:-}" ] && kill "$snapshotter_pid" 2>/dev/null && wait "$snapshotter_pid" 2>/dev/null
    bench_cleanup
}
trap stop_daemons EXIT

echo "== the image: umoci insert of the Debian tree, archived by skopeo"
mkdir -p "$mnt/rootfs" "$mnt/drivers"
tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$debian_tar" -C "$mnt/rootfs"
umoci init --layout "$mnt/oci"
umoci new --image "$mnt/oci:debian"
umoci insert --image "$mnt/oci:debian" "$mnt/rootfs" / >/dev/null
skopeo copy --quiet "oci:$mnt/oci:debian" "oci-archive:$mnt/debian.tar:debian"

echo "== strata-snapshotter (overlay driver) and a private containerd"
cp target/release/libstrata_driver_overlay.so "$mnt/drivers/"
printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\ndriver_dirs = ["%s"]\n' \
    "$mnt/strata" "$mnt/strata-run" "$mnt/drivers" >"$mnt/storage.toml"
target/release/strata-snapshotter --config "$mnt/storage.toml" --address "$mnt/snapshotter.sock" \
    2>"$work/snapshotter.log" &
snapshotter_pid=$!
cat >"$mnt/containerd.toml" <<TOML
version = 2
root = "$mnt/containerd"
state = "$mnt/containerd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$mnt/containerd.sock"
[ttrpc]
  address = "$mnt/containerd.ttrpc.sock"
[proxy_plugins.strata]
  type = "snapshot"
  address = "$mnt/snapshotter.sock"
TOML
containerd --config "$mnt/containerd.toml" 2>"$work/containerd.log" &
containerd_pid=$!
ctr() { command ctr --address "$mnt/containerd.sock" --namespace bench "$@"; }
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && [ -S "$mnt/snapshotter.sock" ] && break; sleep 0.2; done
ctr images import --no-unpack --base-name bench/debian "$mnt/debian.tar" >/dev/null
manifest=$(ctr images ls | awk '/bench\/debian/ { print $3 }')
ctr snapshots unpack --snapshotter overlayfs "$manifest" >/dev/null
chain=$(ctr snapshots --snapshotter overlayfs ls | awk '/Committed/ { print $1 }')

echo "== unpack, $rounds rounds, alternating"
for round in $(seq "$rounds"); do
    order="strata overlayfs"
    ((round % 2)) || order="overlayfs strata"
    for s in $order; do
        ctr snapshots --snapshotter "$s" rm "$chain" 2>/dev/null || true
        sync
        t0=$(now)
        ctr snapshots unpack --snapshotter "$s" "$manifest" >/dev/null
        sync
        record "unpack-$s" $(($(now) - t0))
    done
done

echo "== prepare + commit + rm through ctr, $cycles cycles, alternating"
for i in $(seq "$cycles"); do
    for s in strata overlayfs; do
        t0=$(now)
        ctr snapshots --snapshotter "$s" prepare "cycle-$i" "$chain"
        ctr snapshots --snapshotter "$s" commit "cycle-$i-done" "cycle-$i"
        ctr snapshots --snapshotter "$s" rm "cycle-$i-done"
        record "cycle-$s" $(($(now) - t0))
    done
done

printf '%-44s %12s %12s %8s\n' "" "strata" "overlayfs" "ratio"
for what in unpack cycle; do
    a=$(med "$what-strata")
    b=$(med "$what-overlayfs")
    label="ctr snapshots unpack (Debian, 1 layer)"
    [ "$what" = cycle ] && label="ctr prepare + commit + rm (3 processes)"
    printf '%-44s %10s ms %10s ms %8s\n' "$label" "$(ms "$a")" "$(ms "$b")" "$(ratio "$a" "$b")"
done
