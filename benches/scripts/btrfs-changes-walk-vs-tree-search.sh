#!/usr/bin/env bash
# Issue 13's question: would finding a btrfs layer's changes through the
# tree search (inodes changed since its parent's generation) make `changes`
# 10x faster than walking both trees? A layer of 10,000 files in 100
# directories, a child with 1% of them changed (and one deleted, one added);
# `strata layer changes` (the walk) against `btrfs subvolume find-new` (the
# tree search with min_transid and a path lookup per inode: the least any
# tree-search finder does; it reports data changes only, so one with the
# walk's exact output does more), with each command's start-up measured
# apart. On a loop btrfs, taken down on exit.
#
# Usage: benches/scripts/btrfs-changes-walk-vs-tree-search.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/install-deps.sh
cargo build --release --quiet -p strata-cli -p strata-driver-btrfs
export STRATA_DRIVER_PATH=$PWD/target/release
. benches/scripts/lib.sh
work=$(mktemp -d /var/tmp/strata-chg.XXXXXX); mnt=$work/mnt; mkdir -p $mnt
truncate -s 4G $work/b.img; mkfs.btrfs -q -f $work/b.img
loopdev=$(losetup --find --show $work/b.img); mount $loopdev $mnt
trap 'umount -l $mnt; losetup -d $loopdev; rm -rf $work' EXIT
python3 - $work/src <<'PY'
import os, sys, random
random.seed(3); root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/d{d:03}", exist_ok=True)
    for f in range(100):
        open(f"{root}/d{d:03}/f{f:03}", "wb").write(random.randbytes(random.randint(100, 4000)))
PY
tar -C $work/src -cf $work/tenk.tar .
S() { ./target/release/strata --root $mnt/g --run-root $work/run --driver btrfs "$@"; }
S layer create --read-only --diff $work/tenk.tar base >/dev/null
S layer create --parent base child >/dev/null
p=$(S layer mount child)
gen=$(python3 - $mnt/g/btrfs/layers/base/root <<'PY'
import sys, subprocess
out = subprocess.run(["btrfs", "subvolume", "show", sys.argv[1]], capture_output=True, text=True).stdout
print([l.split()[-1] for l in out.splitlines() if "Generation:" in l][0])
PY
)
sync
for i in $(seq 0 99); do d=$((i)); echo changed >> $p/d$(printf %03d $d)/f050; done
rm $p/d000/f001; echo new > $p/d001/new
S layer unmount child; sync
echo "files: $(find $work/src -type f | wc -l); parent generation $gen"
for r in 1 2 3 4 5; do
  t0=$(now); S layer changes child > $work/changes.txt; t1=$(now)
  t2=$(now); btrfs subvolume find-new $mnt/g/btrfs/layers/child/root $gen > $work/findnew.txt; t3=$(now)
  echo "round $r: strata layer changes $(ms $((t1-t0))) ms ($(wc -l < $work/changes.txt) changes); btrfs subvolume find-new $(ms $((t3-t2))) ms ($(wc -l < $work/findnew.txt) lines)"
done
t0=$(now); for i in 1 2 3 4 5 6 7 8 9 10; do ./target/release/strata --version >/dev/null; done; t1=$(now)
echo "strata process start alone: $(ms $(((t1-t0)/10))) ms"
t0=$(now); for i in 1 2 3 4 5 6 7 8 9 10; do S layer exists child >/dev/null; done; t1=$(now)
echo "strata start + store open + a lookup (layer exists): $(ms $(((t1-t0)/10))) ms"
t0=$(now); for i in 1 2 3 4 5 6 7 8 9 10; do btrfs --version >/dev/null; done; t1=$(now)
echo "btrfs process start alone: $(ms $(((t1-t0)/10))) ms"
head -3 $work/changes.txt; head -3 $work/findnew.txt
S layer delete child; S layer delete base
