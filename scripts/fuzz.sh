#!/usr/bin/env bash
# Runs the apply fuzzer (archive/fuzz) for a bounded time: SECONDS (default 45).
# Any crash, panic or write outside the layer's root fails the run; libFuzzer
# leaves the input that did it in archive/fuzz/artifacts/apply/.
set -euo pipefail
cd "$(dirname "$0")/../archive"
seconds=${1:-45}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
./fuzz/seed.sh
# No sanitizer: the stable toolchain has none; libFuzzer's coverage guidance
# and Rust's own checks (overflow in debug assertions, bounds) still apply.
cargo fuzz run apply --sanitizer none --debug-assertions -- -max_total_time="$seconds" -print_final_stats=1
