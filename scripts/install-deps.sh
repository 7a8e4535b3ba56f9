#!/usr/bin/env bash
# Installs the Debian packages strata's tests and benches need, if missing.
#   e2fsprogs, btrfs-progs, xfsprogs: filesystems the tests and benches make on loop devices
#   libclang-dev: bindgen, used by the loopdev-3 crate to read <linux/loop.h>
#   debootstrap: real Debian root filesystems for benches and the demo
#   zfs-fuse: userspace ZFS, the conformance runner's zfs-fuse backend
#   umoci, skopeo, podman: real OCI clients the image tests and benches check strata against
#   containerd, runc: the real containerd (with ctr and its runc shim) the
#     snapshotter's tests run on strata
#   protobuf-compiler: protoc, with which the containerd-snapshots crate
#     builds containerd's Snapshots API
#   time: GNU time, the peak RSS of commands the tests and benches run
#   libdevmapper-dev: the devicemapper crate's build (its headers; nothing
#     links libdevmapper at run time)
#   busybox-static, cpio: the initramfs of the test VM (scripts/in-vm.sh)
#   qemu-system-x86: the test VM, which boots Debian's kernel for the
#     devicemapper driver (the kernel package is fetched by in-vm.sh)
#   gcc-mingw-w64-x86-64, wine64: the Windows cross-build (linker and C
#     compiler of x86_64-pc-windows-gnu) and Wine to run its tests
#     (scripts/windows-check.sh); also rustup's x86_64-pc-windows-gnu target
set -euo pipefail
packages=(e2fsprogs btrfs-progs xfsprogs libclang-dev debootstrap zfs-fuse umoci skopeo podman time
    containerd runc protobuf-compiler
    libdevmapper-dev busybox-static cpio qemu-system-x86 gcc-mingw-w64-x86-64 wine64)
# Installed without their recommendations (Wine's would add a desktop's
# worth of fonts and libraries the tests never use; podman's, the runtimes
# and networking a test that only loads and saves images does not need).
lean=(gcc-mingw-w64-x86-64 wine64 podman)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    others=() lean_missing=()
    for p in "${missing[@]}"; do
        if [[ " ${lean[*]} " == *" $p "* ]]; then
            lean_missing+=("$p")
        elif [ "$p" != qemu-system-x86 ]; then
            others+=("$p")
        fi
    done
    ((${#others[@]} == 0)) || apt-get install -y -qq "${others[@]}" >/dev/null
    ((${#lean_missing[@]} == 0)) || apt-get install -y -qq --no-install-recommends "${lean_missing[@]}" >/dev/null
    if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
        # From the release the machine's qemu-utils comes from (backports on
        # these machines): qemu-system-common must match it.
        qemu_release=$(apt-cache policy qemu-utils | awk '/\*\*\*/ {getline; print $3; exit}' | cut -d/ -f1)
        apt-get install -y -qq --no-install-recommends ${qemu_release:+-t "$qemu_release"} \
            qemu-system-x86 >/dev/null
    fi
fi
# The Windows target's standard library, for the cross-build.
rustup target list --installed | grep -qx x86_64-pc-windows-gnu \
    || rustup target add x86_64-pc-windows-gnu
# The test VM's kernel and initramfs, made once per machine (in-vm.sh does
# it on first use too; here it is out of the way of the tests' timings).
STRATA_VM_PREPARE_ONLY=1 "$(dirname "$0")/in-vm.sh" true
# Tests make loop devices; make sure the loop driver is there.
modprobe loop 2>/dev/null || true
