#!/usr/bin/env bash
# in-vm.sh COMMAND [ARG]...
#
# Runs COMMAND inside a throwaway qemu VM that boots Debian's own kernel (the
# linux-image-amd64 package's files, extracted, never installed on the host),
# so tests can reach kernel features this host lacks (device-mapper thin
# pools). The VM sees the host's root read-only over virtio-9p - the same
# binaries, libraries and tools - with a fresh, empty ext4 disk on /tmp and
# /var/tmp (the directory under /tmp or /var/tmp holding the current
# directory, and the one holding COMMAND, stay visible: a checkout there
# runs). COMMAND runs as root in the host's current directory; its output
# streams to stdout and its exit status is this script's. Nothing is left
# behind: the VM, its disk and its scratch directory go when the script ends,
# whether the command passed, failed, hung past the timeout or was interrupted.
#
# Software emulation (TCG) only: nested KVM guests hang at boot on the
# machines strata's CI runs on.
#
# Environment:
#   STRATA_VM_MEMORY   guest memory in MiB (default 3072)
#   STRATA_VM_CPUS     guest CPUs (default: the host's, at most 4)
#   STRATA_VM_DISK     size of the guest's /var/tmp disk, sparse (default 24G)
#   STRATA_VM_TIMEOUT  seconds before the VM is killed (default 1800)
#   STRATA_VM_CACHE    where the kernel and initramfs are kept between runs
#                      (default /var/cache/strata-vm)
#   STRATA_VM_KERNEL   a linux-image-* package name (default: the one
#                      linux-image-amd64 depends on)
#   STRATA_VM_PREPARE_ONLY=1  make the kernel and initramfs, boot nothing
#   STRATA_VM_SHARE    host directories (colon-separated) the guest sees
#                      read-write at the same paths, for what the command
#                      writes that should outlive the VM (a JUnit file)
#   RUST_LOG, RUST_BACKTRACE, DM_DISABLE_UDEV and every STRATA_* variable are
#   passed to COMMAND.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
(($#)) || { echo "usage: in-vm.sh COMMAND [ARG]..." >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null ||
    { echo "in-vm.sh: qemu-system-x86_64 not found (Debian package qemu-system-x86)" >&2; exit 2; }
busybox=/bin/busybox
[ -x "$busybox" ] && "$busybox" --list | grep -x depmod >/dev/null ||
    { echo "in-vm.sh: $busybox is not busybox-static (Debian package busybox-static)" >&2; exit 2; }

cache=${STRATA_VM_CACHE:-/var/cache/strata-vm}
mkdir -p "$cache"

# --- The kernel and initramfs, made once per kernel package version. ---
kernel_package=${STRATA_VM_KERNEL:-}
if [ -z "$kernel_package" ]; then
    kernel_package=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$kernel_package" ] ||
        { echo "in-vm.sh: apt knows no linux-image-amd64 (run apt-get update)" >&2; exit 2; }
fi
# Modules the guest loads, in order; modprobe brings their dependencies.
modules_wanted="virtio_pci virtio_blk 9pnet_virtio 9p crc32c_generic crc32c_intel
ext4 xfs loop dm_mod dm_thin_pool overlay"
build_kernel_files() {
    local dest=$1 work
    work=$(mktemp -d "$cache/build.XXXXXX")
    (cd "$work" && apt-get download -q "$kernel_package" >/dev/null 2>&1) ||
        { echo "in-vm.sh: cannot download $kernel_package" >&2; return 1; }
    dpkg-deb -x "$work"/"$kernel_package"_*.deb "$work/pkg"
    local version
    version=$(ls "$work/pkg/lib/modules")
    "$busybox" depmod -b "$work/pkg" "$version"
    local root="$work/initramfs" mods="$work/pkg/lib/modules/$version"
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,host,lib/modules/"$version"}
    cp "$busybox" "$root/bin/busybox"
    for applet in sh mount umount modprobe chroot mkdir chmod cat echo stty sync poweroff sleep kill; do
        ln -s busybox "$root/bin/$applet"
    done
    ln -s ../bin/modprobe "$root/sbin/modprobe"
    # Each wanted module and everything modules.dep says it needs.
    local m line
    for m in $modules_wanted; do
        line=$(grep -E "/${m//_/[-_]}\.ko(\.[a-z]+)?:" "$mods/modules.dep") ||
            { echo "in-vm.sh: module $m not in $kernel_package" >&2; return 1; }
        for f in ${line/:/}; do
            mkdir -p "$root/lib/modules/$version/$(dirname "$f")"
            cp -n "$mods/$f" "$root/lib/modules/$version/$f"
        done
    done
    cp "$mods"/modules.{dep,alias,symbols,builtin,order} "$root/lib/modules/$version/"
    echo "$modules_wanted" >"$root/etc/modules-wanted"
    cp "$here/vm/init" "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.cpio.gz"
    cp "$work/pkg/boot/vmlinuz-$version" "$work/vmlinuz"
    mkdir -p "$dest"
    mv "$work/vmlinuz" "$work/initramfs.cpio.gz" "$dest/"
}
# The initramfs depends on vm/init too: a changed init makes a new one.
# (Contents only: the runner is written to a new directory by every test.)
init_sum=$(cat "$here/vm/init" "$0" | sha256sum | cut -c1-12)
files="$cache/$kernel_package-$init_sum"
(
    flock 9
    # Under the lock no other build runs: what a failed or killed one left
    # goes, on any exit.
    trap 'rm -rf "$cache"/build.*' EXIT
    rm -rf "$cache"/build.*
    if [ ! -f "$files/initramfs.cpio.gz" ]; then
        echo "in-vm.sh: preparing $kernel_package for the VM in $files" >&2
        build_kernel_files "$files"
        # Older initramfs builds of this kernel go.
        for old in "$cache/$kernel_package"-*; do
            [ "$old" = "$files" ] || rm -rf "$old"
        done
    fi
) 9>"$cache/.lock"
[ "${STRATA_VM_PREPARE_ONLY:-}" != 1 ] || exit 0

# --- One run. ---
scratch=$(mktemp -d /var/tmp/strata-vm.XXXXXX)
qemu_pid=
cleanup() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# The command, run by the host's bash in the guest (printf %q quotes for bash).
{
    echo "set -e"
    for var in $(compgen -e); do
        case "$var" in
        STRATA_VM_*) ;;
        STRATA_* | RUST_LOG | RUST_BACKTRACE | DM_DISABLE_UDEV)
            printf 'export %s=%q\n' "$var" "${!var}"
            ;;
        esac
    done
    printf 'export PATH=%q HOME=%q\n' "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "/root"
    printf 'cd %q\n' "$PWD"
    echo "set +e"
    printf '%q ' "$@"
    echo
    echo 'status=$?'
    echo 'echo "$status" >/run/strata-vm/status'
    echo 'exit "$status"'
} >"$scratch/command"
truncate -s "${STRATA_VM_DISK:-24G}" "$scratch/disk"
# The top directory under /tmp or /var/tmp holding PATH, if it is there.
tmp_top() {
    local path
    path=$(realpath -m "$1")
    case "$path" in
    /var/tmp/?*) echo "/var/tmp/$(cut -d/ -f4 <<<"$path")" ;;
    /tmp/?*) echo "/tmp/$(cut -d/ -f3 <<<"$path")" ;;
    esac
}
case "$1" in
*/*) program=$1 ;;
*) program=$(type -P "$1" || true) ;;
esac
{
    tmp_top "$PWD"
    [ -z "$program" ] || tmp_top "$program"
} | sort -u | while read -r dir; do [ ! -d "$dir" ] || echo "$dir"; done >"$scratch/visible"
share_args=()
n=0
IFS=: read -r -a shares <<<"${STRATA_VM_SHARE:-}"
for dir in "${shares[@]}"; do
    [ -n "$dir" ] || continue
    dir=$(cd "$dir" && pwd) || { echo "in-vm.sh: no directory $dir to share" >&2; exit 2; }
    # qemu's option syntax doubles a comma inside a value.
    share_args+=(-fsdev "local,id=share$n,path=${dir//,/,,},security_model=passthrough"
        -device "virtio-9p-pci,fsdev=share$n,mount_tag=share$n")
    printf 'share%s %s\n' "$n" "$dir" >>"$scratch/shares"
    n=$((n + 1))
done

cpus=${STRATA_VM_CPUS:-$(nproc)}
((cpus > 4)) && cpus=4
started=$(date +%s%N)
# The first serial port is the command's output (to our stdout), the second
# the kernel's console (kept in the scratch directory, shown on failure).
timeout_s=${STRATA_VM_TIMEOUT:-1800}
# timeout(1) kills the VM past the limit; it is the only child left running.
timeout -s KILL "$timeout_s" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -smp "$cpus" -m "${STRATA_VM_MEMORY:-3072}" \
    -machine q35 -nodefaults -no-reboot -display none -vga none \
    -kernel "$files/vmlinuz" -initrd "$files/initramfs.cpio.gz" \
    -append "console=ttyS1 panic=-1 quiet loglevel=4 rdinit=/init" \
    -chardev stdio,id=out,signal=off -serial chardev:out \
    -chardev file,id=log,path="$scratch/kernel.log" -serial chardev:log \
    -fsdev local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev local,id=scratch,path="$scratch",security_model=none \
    -device virtio-9p-pci,fsdev=scratch,mount_tag=scratch \
    -drive file="$scratch/disk",format=raw,if=virtio,cache=unsafe,discard=unmap \
    "${share_args[@]}" \
    </dev/null &
qemu_pid=$!
wait "$qemu_pid" || true
qemu_pid=
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
elapsed="$((elapsed_ms / 1000)).$((elapsed_ms % 1000 / 100))"
if [ ! -f "$scratch/status" ]; then
    echo "in-vm.sh: the VM ended without the command's status (after ${elapsed} s; timeout ${timeout_s} s); kernel log tail:" >&2
    tail -n 30 "$scratch/kernel.log" >&2 || true
    exit 125
fi
status=$(cat "$scratch/status")
echo "in-vm.sh: VM ran for ${elapsed} s; command exited $status" >&2
exit "$status"
