# Shared by the bench scripts (sourced, not run): a loop-mounted ext4 made
# with mkfs.ext4 defaults to work on, taken down on exit whatever happens,
# and the timing helpers the figures are printed with.

# bench_loop_ext4 SIZE: makes $work (under /var/tmp) holding an ext4 image of
# SIZE, mounts it on $mnt and sets $loopdev; the EXIT trap unmounts every
# mount under $mnt, detaches the loop device and removes $work.
bench_loop_ext4() {
    work=$(mktemp -d /var/tmp/strata-bench.XXXXXX)
    mnt=$work/mnt
    trap bench_cleanup EXIT
    truncate -s "$1" "$work/ext4.img"
    mkfs.ext4 -q "$work/ext4.img"
    mkdir -p "$mnt"
    loopdev=$(losetup --find --show "$work/ext4.img")
    mount "$loopdev" "$mnt"
}

bench_cleanup() {
    set +e
    for m in $(grep -o " $mnt[^ ]*" /proc/mounts | sort -r); do umount -l "$m"; done
    [ -n "${loopdev:-}" ] && losetup -d "$loopdev" 2>/dev/null
    rm -rf "$work"
}

# bench_node_modules DIR: 60,000 small files (200 B to 3.8 KiB, random
# bytes, the same every time) in 3,000 package directories, as a
# node_modules tree has them.
bench_node_modules() {
    python3 - "$1" <<'PY'
import os, sys, random
root = sys.argv[1]
random.seed(7)
for p in range(3000):
    pkg = os.path.join(root, "node_modules", f"pkg-{p:04d}")
    os.makedirs(os.path.join(pkg, "lib"), exist_ok=True)
    for f in range(20):
        sub = "lib" if f >= 4 else ""
        with open(os.path.join(pkg, sub, f"file-{f}.js"), "wb") as out:
            out.write(random.randbytes(random.randint(200, 3800)))
PY
}

now() { date +%s%N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ms() { awk -v n="$1" 'BEGIN { printf "%.1f", n / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
