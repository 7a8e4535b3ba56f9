//! Shared pieces of strata's benches: real fixtures (a Debian root filesystem
//! made with debootstrap) and interleaved A/B timing, so that two things
//! compared see the same machine state.

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tar of a minimal Debian bookworm root filesystem, made once with
/// debootstrap (the testkit keeps it, for tests and benches alike).
pub use strata_testkit::fixtures::debian_rootfs_tar;

/// Unpacks a tar made by `debian_rootfs_tar` into `dest`, keeping owners,
/// modes and xattrs.
pub fn unpack(tar: &Path, dest: &Path) {
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(dest));
}

pub fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Times `a` and `b` alternately, `rounds` times each, swapping which goes
/// first every round, with `reset` (untimed) after each run. Returns the
/// durations of each.
pub fn interleave(
    rounds: usize,
    mut a: impl FnMut(usize),
    mut b: impl FnMut(usize),
    mut reset: impl FnMut(),
) -> (Vec<Duration>, Vec<Duration>) {
    let mut times_a = Vec::new();
    let mut times_b = Vec::new();
    for round in 0..rounds {
        for step in 0..2 {
            let run_a = (round + step) % 2 == 0;
            let start = Instant::now();
            if run_a {
                a(round);
            } else {
                b(round);
            }
            let elapsed = start.elapsed();
            if run_a {
                times_a.push(elapsed);
            } else {
                times_b.push(elapsed);
            }
            reset();
        }
    }
    (times_a, times_b)
}

pub fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

pub fn min(times: &[Duration]) -> Duration {
    times.iter().copied().min().unwrap_or_default()
}
