#!/usr/bin/env bash
# The main job, end to end: build strata and its drivers, let strata choose
# the driver that works here, make a stack of three layers, write into the
# top one, mount it and show its path.
# The store lives in $STRATA_DEMO_ROOT (default /var/tmp/strata-demo), made afresh.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-deps.sh
cargo build --release --quiet -p strata-core -p strata-driver-vfs -p strata-driver-overlay
strata=target/release/strata
root=${STRATA_DEMO_ROOT:-/var/tmp/strata-demo}
export STRATA_ROOT="$root/graph" STRATA_RUN_ROOT="$root/run"
if [ -d "$root" ]; then
    for id in container app base; do "$strata" layer delete "$id" 2>/dev/null || true; done
    rm -rf "$root"
fi

echo "== drivers found"
"$strata" drivers
echo
echo "== the driver strata chooses for this graph root, and why"
"$strata" status
echo
echo "== a stack of layers: base <- app <- container"
# Image layers come from layer tars (made here with GNU tar) and stay
# read-only; the container's layer on top is read-write.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/base/etc" "$work/app/srv"
echo "strata demo base" > "$work/base/etc/motd"
echo "hello from the app layer" > "$work/app/srv/index.html"
tar --numeric-owner -C "$work/base" -czf "$work/base.tar.gz" .
tar --numeric-owner -C "$work/app" -cf "$work/app.tar" .
"$strata" layer create --read-only --diff "$work/base.tar.gz" base
"$strata" layer create --read-only --parent base --diff "$work/app.tar" app
"$strata" layer create --parent app container
top=$("$strata" layer mount container)
echo "written in the container layer at $(date -u +%FT%TZ)" > "$top/srv/visit.log"
echo
echo "== layers"
"$strata" layer list
echo
echo "== the container layer is mounted at: $top"
find "$top" -type f -printf '%M %u %p\n' | sort
