#!/usr/bin/env bash
# Runs the conformance suite against every driver library in DIR (default
# target/debug), each on the backends it needs (set up and torn down by the
# runner), and prints the matrix. Exits non-zero if any driver fails a check
# or no driver is found.
set -uo pipefail
dir=${1:-target/debug}
runner="$dir/strata-conformance"
[ -x "$runner" ] || { echo "no $runner; build the workspace first" >&2; exit 1; }
shopt -s nullglob
libs=("$dir"/libstrata_driver_*.so)
((${#libs[@]})) || { echo "no driver libraries in $dir" >&2; exit 1; }
# The backends each driver runs on; a driver not named here runs on a plain
# directory. vfs also runs on btrfs, where it clones extents; overlay also on
# xfs (d_type on, the filesystem containers/storage recommends under overlay);
# btrfs needs btrfs, on a loop device; zfs a pool, zfs-fuse on a file;
# devicemapper a kernel with dm-thin-pool, so a VM (scripts/in-vm.sh).
backends_for() {
    case "$1" in
        vfs) echo "none loop-btrfs" ;;
        overlay) echo "none loop-xfs" ;;
        btrfs) echo "loop-btrfs" ;;
        zfs) echo "zfs-fuse" ;;
        devicemapper) echo "qemu-dm" ;;
        # Windows only (the Host Compute Service); its Linux build only says
        # so. scripts/windows-check.sh cross-builds it and loads it under Wine.
        windows) echo "" ;;
        *) echo "none" ;;
    esac
}
# Other documented options each driver is restarted with
# (restart/with-other-documented-options).
restart_options_for() {
    case "$1" in
        vfs) echo "--restart-option reflink=never" ;;
        overlay) echo "--restart-option mount_method=legacy --restart-option mountopt=nodev,nosuid" ;;
        devicemapper) echo "--restart-option mountopt=nodev,noatime" ;;
        *) echo "" ;;
    esac
}
# The longest one run may take before it is stopped (a wedged backend must
# fail the matrix, not hang CI): the VM's run takes about 11 minutes under
# emulation, every other run under 3.
limit_for() {
    case "$1" in
        qemu-dm) echo 1800 ;;
        *) echo 900 ;;
    esac
}
status=0
rows=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# One run of the suite: LIB NAME BACKEND LABEL. Streamed as it runs (a CI log
# shows how far a run got) and kept in $log for the summary; sets rc.
run_suite() {
    local lib=$1 name=$2 backend=$3 label=$4 started=$SECONDS
    # shellcheck disable=SC2046 # the options are separate words
    timeout -k 30 "$(limit_for "$backend")" \
        "$runner" --driver "$lib" --backend "$backend" $(restart_options_for "$name") 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "stopped after $(limit_for "$backend") s: the run did not finish"
        # A killed runner drops nothing: stop the zfs-fuse daemon it started
        # (known by the options only testkit gives it), so the runs after
        # this one do not wait on a wedged one.
        [ "$backend" = zfs-fuse ] && pkill -KILL -f "zfs-fuse --no-kstat-mount --max-arc-size" || true
    fi
    echo "== $name on $backend$label: exit $rc after $((SECONDS - started)) s"
}
for lib in "${libs[@]}"; do
    name=$(basename "$lib" .so); name=${name#libstrata_driver_}
    backends=$(backends_for "$name")
    if [ -z "$backends" ]; then
        echo "== conformance: $name not run here: a Windows-only driver (see scripts/windows-check.sh)"
        rows+=("$(printf '%-14s %-11s %7s %7s %8s' "$name" "(windows)" - - -)")
        continue
    fi
    for backend in $backends; do
        echo "== conformance: $name on $backend"
        run_suite "$lib" "$name" "$backend" ""
        # zfs-fuse itself fails under the suite's parallel processes, in two
        # ways seen here: it wedges (its FUSE side stops answering; the
        # runner's watchdog then kills it and says "zfs-fuse ... is wedged"),
        # or it drops a zfs command's connection to the daemon mid-request
        # (the command says "zfsfuse_ioctl_read_loop(): file descriptor
        # closed"). Those are faults of the backend, not of the driver: the
        # run is made once more on a fresh daemon, saying why, and a second
        # failure of any kind fails the matrix.
        zfs_fuse_faults='zfs-fuse \(pid [0-9]*\) is wedged|zfsfuse_ioctl_read_loop\(\): file descriptor closed'
        if [ "$rc" -ne 0 ] && [ "$backend" = zfs-fuse ] && grep -qE "$zfs_fuse_faults" "$log"; then
            fault=$(grep -oE "$zfs_fuse_faults" "$log" | head -n 1)
            echo "== zfs-fuse failed under the run ($fault: a zfs-fuse fault, not the driver's): running it again once"
            run_suite "$lib" "$name" "$backend" " (again)"
        fi
        out=$(cat "$log")
        # The closing line (the VM runner says a line of its own after it).
        summary=$(echo "$out" | grep -E '^[0-9]+ passed, ' | tail -n 1)
        if [ $rc -ne 0 ]; then status=1; fi
        read -r passed _ failed _ skipped _ <<<"$(echo "$summary" | tr -d ',')"
        rows+=("$(printf '%-14s %-11s %7s %7s %8s' "$name" "$backend" "${passed:-?}" "${failed:-?}" "${skipped:-?}")")
    done
done
echo
printf '%-14s %-11s %7s %7s %8s\n' driver backend passed failed skipped
printf '%s\n' "${rows[@]}"
exit $status
