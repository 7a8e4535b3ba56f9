#!/usr/bin/env bash
# Layer create, mount, unmount and delete through the `strata` command, this
# checkout against a previous revision (default: the commit before the driver
# kit), on vfs and overlay, interleaved in one run on a loop ext4 (mkfs.ext4
# defaults). Each round: a child of a 3,000-file base is created, mounted,
# unmounted and deleted by each version in turn; medians in milliseconds.
#
#   benches/scripts/layer-lifecycle-vs-previous.sh [REV] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rev=${1:-642c88a}
rounds=${2:-15}
work=$(mktemp -d /var/tmp/strata-lifecycle-XXXXXX)
mnt="$work/mnt"
cleanup() {
    set +e
    for m in $(findmnt -rn -o TARGET | grep "^$mnt" | sort -r); do umount -l "$m"; done
    [ -n "${loopdev:-}" ] && losetup -d "$loopdev"
    git worktree remove --force "$work/previous" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

echo "building this checkout and $rev (release)" >&2
cargo build --release -q -p strata-core -p strata-driver-vfs -p strata-driver-overlay
git worktree add -q "$work/previous" "$rev"
(cd "$work/previous" && CARGO_TARGET_DIR="$work/previous-target" \
    cargo build --release -q -p strata-core -p strata-driver-vfs -p strata-driver-overlay)
new_bin=target/release
old_bin="$work/previous-target/release"

truncate -s 4G "$work/ext4.img"
mkfs.ext4 -q "$work/ext4.img"
loopdev=$(losetup -f --show "$work/ext4.img")
mkdir -p "$mnt"
mount "$loopdev" "$mnt"

# A base tree of 3,000 small files in 30 directories.
tree="$work/base"
for d in $(seq 0 29); do
    mkdir -p "$tree/d$d"
    for f in $(seq 0 99); do printf 'file %s/%s\n' "$d" "$f" >"$tree/d$d/f$f"; done
done
tar -C "$tree" -cf "$work/base.tar" .

ms() { date +%s%N; }
run() { # version driver args...
    local bin=$1 driver=$2; shift 2
    STRATA_DRIVER_PATH="$bin" "$bin/strata" --root "$mnt/$driver-$(basename "$bin")-graph" \
        --run-root "$mnt/$driver-$(basename "$bin")-run" --driver "$driver" "$@" >/dev/null
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for driver in vfs overlay; do
    for bin in "$new_bin" "$old_bin"; do
        run "$bin" "$driver" layer create base --diff "$work/base.tar"
    done
    : >"$work/new-$driver"; : >"$work/old-$driver"
    for i in $(seq 1 "$rounds"); do
        for side in new old; do
            bin=$new_bin; [ "$side" = old ] && bin=$old_bin
            start=$(ms)
            run "$bin" "$driver" layer create --parent base "c$i"
            run "$bin" "$driver" layer mount "c$i"
            run "$bin" "$driver" layer unmount "c$i"
            run "$bin" "$driver" layer delete "c$i"
            echo $(( ($(ms) - start) / 1000000 )) >>"$work/$side-$driver"
        done
    done
    new=$(median <"$work/new-$driver"); old=$(median <"$work/old-$driver")
    printf '%-8s create+mount+unmount+delete of a 3,000-file child: this %s ms, %s %s ms (ratio %s)\n' \
        "$driver" "$new" "$rev" "$old" "$(awk -v a="$new" -v b="$old" 'BEGIN {printf "%.2f", a/b}')"
done
