#!/usr/bin/env bash
# Layer create, mount, unmount and delete, and applying layer tars, through
# the `strata` command, this checkout against a previous revision (default:
# the commit before the driver kit), on vfs and overlay, interleaved in one
# run on a loop ext4 (mkfs.ext4 defaults). Each round, each version in turn:
# a child of a 3,000-file base is created, mounted, unmounted and deleted;
# then a layer is made from a 20,000-file tar (`layer create --diff`, so the
# apply with digests and tar-split) and deleted. Medians in milliseconds.
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
cargo build --release -q -p strata-cli -p strata-driver-vfs -p strata-driver-overlay
git worktree add -q "$work/previous" "$rev"
# The command moved from strata-core to its own crate, strata-cli.
(cd "$work/previous" && command_crate=strata-core && { [ -d cli ] && command_crate=strata-cli; }
    CARGO_TARGET_DIR="$work/previous-target" \
    cargo build --release -q -p "$command_crate" -p strata-driver-vfs -p strata-driver-overlay)
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
many="$work/many"
for d in $(seq 0 199); do
    mkdir -p "$many/d$d"
    for f in $(seq 0 99); do printf '%s\n' "$d-$f" >"$many/d$d/f$f"; done
done
tar -C "$many" -cf "$work/many.tar" .

ms() { date +%s%N; }
bin_of() { if [ "$1" = new ]; then echo "$new_bin"; else echo "$old_bin"; fi; }
run() { # new|old driver args...
    local side=$1 driver=$2 bin; shift 2
    bin=$(bin_of "$side")
    STRATA_DRIVER_PATH="$bin" "$bin/strata" --root "$mnt/$driver-$side-graph" \
        --run-root "$mnt/$driver-$side-run" --driver "$driver" "$@" >/dev/null
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for driver in vfs overlay; do
    for side in new old; do
        run "$side" "$driver" layer create base --diff "$work/base.tar"
    done
    : >"$work/new-$driver"; : >"$work/old-$driver"
    : >"$work/new-apply-$driver"; : >"$work/old-apply-$driver"
    for i in $(seq 1 "$rounds"); do
        for side in new old; do
            start=$(ms)
            run "$side" "$driver" layer create --parent base "c$i"
            run "$side" "$driver" layer mount "c$i"
            run "$side" "$driver" layer unmount "c$i"
            run "$side" "$driver" layer delete "c$i"
            echo $(( ($(ms) - start) / 1000000 )) >>"$work/$side-$driver"
            start=$(ms)
            run "$side" "$driver" layer create "a$i" --diff "$work/many.tar"
            echo $(( ($(ms) - start) / 1000000 )) >>"$work/$side-apply-$driver"
            run "$side" "$driver" layer delete "a$i"
        done
    done
    new=$(median <"$work/new-$driver"); old=$(median <"$work/old-$driver")
    printf '%-8s create+mount+unmount+delete of a 3,000-file child: this %s ms, %s %s ms (ratio %s)\n' \
        "$driver" "$new" "$rev" "$old" "$(awk -v a="$new" -v b="$old" 'BEGIN {printf "%.2f", a/b}')"
    new=$(median <"$work/new-apply-$driver"); old=$(median <"$work/old-apply-$driver")
    printf '%-8s layer create --diff of a 20,000-file tar: this %s ms, %s %s ms (ratio %s)\n' \
        "$driver" "$new" "$rev" "$old" "$(awk -v a="$new" -v b="$old" 'BEGIN {printf "%.2f", a/b}')"
done
