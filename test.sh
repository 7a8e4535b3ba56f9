#!/usr/bin/env bash
# Runs every test of strata on a fresh Debian bookworm machine, as root:
# formatting and lints, the workspace's unit and integration tests (real
# drivers on real backends), and the conformance suite against every driver
# library the workspace builds, and a bounded run of the layer-apply fuzzer.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace
cargo test --workspace
./scripts/conformance-matrix.sh target/debug
./scripts/fuzz.sh 45
