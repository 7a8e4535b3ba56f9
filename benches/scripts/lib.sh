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

# bench_debian_tar: sets $debian_tar to the Debian minbase tar the Rust
# fixture code makes (debootstrap, once, under target/bench-fixtures),
# making it if missing; exits if it cannot.
bench_debian_tar() {
    debian_tar=$PWD/target/bench-fixtures/debian-bookworm-minbase.tar
    if [ ! -f "$debian_tar" ]; then
        # Made by the Rust benches' fixture code (debootstrap, once).
        cargo bench -q -p strata-benches --bench archive_apply -- --list >/dev/null 2>&1 || true
    fi
    [ -f "$debian_tar" ] || { echo "no Debian fixture at $debian_tar (run ./run.sh once)"; exit 1; }
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

# bench_oci_layout TAR GZ OUT: a one-layer OCI image layout in OUT whose
# layer is GZ (TAR gzip'd), tagged "bench".
bench_oci_layout() {
    python3 - "$1" "$2" "$3" <<'PY'
import hashlib, json, os, shutil, sys
tar, gz, out = sys.argv[1:4]
def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return d, len(data)
layer = sha(gz)
shutil.copy(gz, os.path.join(blobs, layer))
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(tar)]}}).encode()
cd, cs = put(config)
manifest = json.dumps({"schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": cs},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + layer, "size": os.path.getsize(gz)}]}).encode()
md, ms = put(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:" + md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]},
    open(os.path.join(out, "index.json"), "w"))
open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
}

now() { date +%s%N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ms() { awk -v n="$1" 'BEGIN { printf "%.1f", n / 1e6 }'; }
# Timings by name: record NAME NANOSECONDS, med NAME (their median).
declare -A times
record() { times[$1]+="$2 "; }
med() { tr ' ' '\n' <<<"${times[$1]}" | grep . | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
