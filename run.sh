#!/usr/bin/env bash
# The main job, end to end: make a real OCI image (a Debian bookworm root
# filesystem from debootstrap, plus an app layer, both written by umoci),
# import it into a store with the driver strata chooses here, create a
# container on it, mount the container and print its path.
# The store lives in $STRATA_DEMO_ROOT (default /var/tmp/strata-demo), made
# afresh; the Debian tree is made once and kept in target/bench-fixtures.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-deps.sh
cargo build --release --quiet -p strata-cli -p strata-driver-vfs -p strata-driver-overlay
strata=$PWD/target/release/strata
root=${STRATA_DEMO_ROOT:-/var/tmp/strata-demo}
export STRATA_ROOT="$root/graph" STRATA_RUN_ROOT="$root/run"
if [ -d "$root" ]; then
    "$strata" container delete demo >/dev/null 2>&1 || true
    "$strata" image delete debian-app >/dev/null 2>&1 || true
    rm -rf "$root"
fi
mkdir -p "$root"

echo "== drivers found"
"$strata" drivers
echo
echo "== the driver strata chooses for this graph root, and why"
"$strata" status
echo

fixtures=target/bench-fixtures
rootfs_tar=$fixtures/debian-bookworm-minbase.tar
if [ ! -f "$rootfs_tar" ]; then
    echo "== making a Debian bookworm root filesystem with debootstrap (once)"
    mkdir -p "$fixtures"
    tree=$(mktemp -d "$fixtures/debootstrap.XXXXXX")
    # No mirror given: debootstrap's own default serves.
    debootstrap --variant=minbase bookworm "$tree/rootfs" >/dev/null
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$tree/rootfs" -cf "$rootfs_tar.partial" .
    mv "$rootfs_tar.partial" "$rootfs_tar"
    rm -rf "$tree"
fi

echo "== an OCI image made by umoci: the Debian tree, then an app layer"
work="$root/work"
mkdir -p "$work/rootfs" "$work/app/srv"
tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$rootfs_tar" -C "$work/rootfs"
echo "hello from the app layer" > "$work/app/srv/index.html"
umoci init --layout "$root/oci"
umoci new --image "$root/oci:debian"
umoci insert --image "$root/oci:debian" "$work/rootfs" /
umoci insert --image "$root/oci:debian" --tag app "$work/app/srv" /srv
rm -rf "$work"
du -sh "$root/oci"
echo

echo "== import, create a container, mount it"
start=$(date +%s.%N)
image=$("$strata" image import "$root/oci:app" --name debian-app)
container=$("$strata" container create debian-app --name demo)
top=$("$strata" container mount demo)
end=$(date +%s.%N)
echo "image $image"
echo "container $container"
awk -v s="$start" -v e="$end" 'BEGIN { printf "import + container create + mount: %.2f s\n", e - s }'
echo "written in the container at $(date -u +%FT%TZ)" > "$top/srv/visit.log"
echo
echo "== images"
"$strata" image list
echo
echo "== the container is mounted at: $top"
cat "$top/etc/debian_version" "$top/srv/index.html" "$top/srv/visit.log"
echo
# The container stays mounted; the store is reachable with the settings
# this script used, spelled out so they work from any shell.
use="$strata --root $STRATA_ROOT --run-root $STRATA_RUN_ROOT"
cat <<EOT
== the container stays mounted; to look inside, unmount and remove it:
  ls $top
  $use container list
  $use container unmount demo
  $use container delete demo
  $use image delete debian-app
EOT
echo "$top"
