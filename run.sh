#!/usr/bin/env bash
# The main job, end to end: build strata and its drivers, let strata choose
# the driver that works here, make a stack of three layers, write into the
# top one, mount it and show its path.
# The store lives in $STRATA_DEMO_ROOT (default /var/tmp/strata-demo), made afresh.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-deps.sh
cargo build --release --quiet -p strata-core -p strata-driver-vfs
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
"$strata" layer create --read-only base
base=$("$strata" layer mount base)
mkdir -p "$base/etc" && echo "strata demo base" > "$base/etc/motd"
"$strata" layer unmount base
"$strata" layer create --read-only --parent base app
app=$("$strata" layer mount app)
mkdir -p "$app/srv" && echo "hello from the app layer" > "$app/srv/index.html"
"$strata" layer unmount app
"$strata" layer create --parent app container
top=$("$strata" layer mount container)
echo "written in the container layer at $(date -u +%FT%TZ)" > "$top/srv/visit.log"
echo
echo "== layers"
"$strata" layer list
echo
echo "== the container layer is mounted at: $top"
find "$top" -type f -printf '%M %u %p\n' | sort
