#!/usr/bin/env bash
# Installs the Debian packages strata's tests and benches need, if missing.
#   e2fsprogs, btrfs-progs, xfsprogs: filesystems the tests and benches make on loop devices
#   libclang-dev: bindgen, used by the loopdev-3 crate to read <linux/loop.h>
#   debootstrap: real Debian root filesystems for benches and the demo
#   zfs-fuse: userspace ZFS, the conformance runner's zfs-fuse backend
#   umoci, skopeo: real OCI clients the image tests and benches check strata against
#   time: GNU time, the peak RSS of commands the tests and benches run
set -euo pipefail
packages=(e2fsprogs btrfs-progs xfsprogs libclang-dev debootstrap zfs-fuse umoci skopeo time)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Tests make loop devices; make sure the loop driver is there.
modprobe loop 2>/dev/null || true
