#!/usr/bin/env bash
# Runs every test of strata on a fresh Debian bookworm machine, as root:
# formatting and lints, the workspace's unit and integration tests (real
# drivers on real backends), and the conformance suite against every driver
# library the workspace builds, the Windows cross-build with its tests under
# Wine, and a bounded run of the layer-apply fuzzer.
set -euo pipefail
cd "$(dirname "$0")"
# Each stage says how long it took, so a CI log shows where the time goes.
stage() {
    local started=$SECONDS
    echo "== stage: $*"
    "$@"
    echo "== stage done in $((SECONDS - started)) s: $*"
}
stage ./scripts/install-deps.sh
stage cargo fmt --all --check
stage cargo clippy --workspace --all-targets -- -D warnings
stage cargo build --workspace
stage cargo test --workspace
stage ./scripts/conformance-matrix.sh target/debug
stage ./scripts/windows-check.sh
stage ./scripts/fuzz.sh 45
