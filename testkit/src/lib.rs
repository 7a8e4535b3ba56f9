//! Helpers for strata's own tests: building plugin libraries (including ones
//! deliberately built against a foreign ABI) and finding the workspace.

pub mod mounts;
pub mod plugins;

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
