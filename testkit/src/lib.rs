//! Helpers for strata's tests and for the conformance runner: scratch
//! filesystems (tmpfs, loop-mounted images, zfs-fuse pools), the reference
//! test tree and its comparison, hand-built tar streams and OCI layouts, and
//! building plugin libraries (including ones deliberately built against a
//! foreign ABI).
//!
//! It depends on no other strata crate, so any of them, the plugin ABI
//! included, can use it in its tests without a dependency cycle.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod fixtures;
pub mod mounts;
pub mod plugins;
pub mod skip;
pub mod tree;
pub mod vm;
pub mod zfs_fuse;

use std::path::PathBuf;

/// The workspace root (where the top Cargo.toml is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo that runs the tests, so nested builds use the same toolchain.
pub fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// A tar of the directory `dir` made by GNU tar in the PAX format, keeping
/// numeric owners and every xattr: the reference layer writer. `extra`
/// arguments go before the archive name (for example `--sparse`).
pub fn gnu_tar(dir: &std::path::Path, extra: &[&str]) -> Vec<u8> {
    let mut command = std::process::Command::new("tar");
    command
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--format=posix",
        ])
        .args(extra)
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "."]);
    run_ok(&mut command)
}

/// Runs `command`, failing the test with its error output unless it
/// succeeds; returns its standard output.
pub fn run_ok(command: &mut std::process::Command) -> Vec<u8> {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
