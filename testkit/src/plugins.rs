//! Building driver libraries for tests.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};

use crate::{cargo, workspace_root};

/// Builds the cdylib of workspace package `package` (debug profile, as tests
/// are) and returns the library's path. Built once per process.
pub fn build_plugin(package: &str) -> PathBuf {
    build_plugin_in(package, false)
}

/// The same in the release profile, for benches.
pub fn build_plugin_release(package: &str) -> PathBuf {
    build_plugin_in(package, true)
}

fn build_plugin_in(package: &str, release: bool) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<(String, bool), PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let key = (package.to_string(), release);
    if let Some(path) = built.get(&key) {
        return path.clone();
    }
    let root = workspace_root();
    let path = cargo_build_cdylib(&root, &root.join("Cargo.toml"), package, None, release);
    built.insert(key, path.clone());
    path
}

/// Runs `cargo build -p package` and returns the cdylib it produced.
fn cargo_build_cdylib(
    dir: &Path,
    manifest: &Path,
    package: &str,
    target_dir: Option<&Path>,
    release: bool,
) -> PathBuf {
    let mut cmd = cargo();
    cmd.current_dir(dir)
        .args(["build", "--quiet", "--message-format=json", "-p", package]);
    if release {
        cmd.arg("--release");
    }
    cmd.arg("--manifest-path")
        .arg(manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(target_dir) = target_dir {
        cmd.env("CARGO_TARGET_DIR", target_dir);
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
    assert!(
        output.status.success(),
        "cargo build -p {package} failed ({})",
        output.status
    );
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if !is_cdylib {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            for file in files.iter().filter_map(|f| f.as_str()) {
                if file.ends_with(".so") {
                    return PathBuf::from(file);
                }
            }
        }
    }
    panic!("cargo build -p {package} produced no cdylib");
}

/// A driver library deliberately built against a strata-plugin-abi that this
/// host cannot accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForeignAbi {
    /// strata-plugin-abi 2.x: same types, next major version.
    NextMajor,
    /// strata-plugin-abi claiming this workspace's version with two fields
    /// of a boundary struct swapped, as a hand-edited or forked ABI would have.
    ChangedLayout,
    /// strata-plugin-abi 1.0.0 exactly as released (from this repository's
    /// history, [`ABI_1_0_COMMIT`]): a driver built before ABI 1.1 added
    /// `describe_mount`, which a 1.1 host must load and serve.
    Release1_0,
}

/// The last commit whose plugin-abi is 1.0.0, as released.
pub const ABI_1_0_COMMIT: &str = "a5cfab8ad5ba27de3ab1a69e8943fb41c1c89f06";

/// Builds a minimal driver against a copy of this workspace's plugin-abi changed
/// as `abi` says, in its own workspace under `target/abi-fixtures`, and returns
/// the library. The copy is made fresh each time; the build is incremental.
pub fn build_foreign_abi_plugin(abi: ForeignAbi) -> PathBuf {
    let root = workspace_root();
    let name = match abi {
        ForeignAbi::NextMajor => "next-major",
        ForeignAbi::ChangedLayout => "changed-layout",
        ForeignAbi::Release1_0 => "release-1.0",
    };
    let fixture = root.join("target/abi-fixtures").join(name);
    let abi_dir = fixture.join("plugin-abi");
    let driver_dir = fixture.join("driver");
    let _ = fs::remove_dir_all(&abi_dir);
    if abi == ForeignAbi::Release1_0 {
        released_abi_source(&root, &abi_dir);
    } else {
        copy_dir(&root.join("plugin-abi/src"), &abi_dir.join("src"));
    }
    fs::create_dir_all(driver_dir.join("src")).unwrap();

    // The fixture is its own workspace with the same pinned dependencies.
    let root_manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members_start = root_manifest
        .find("members = [")
        .expect("members list in Cargo.toml");
    let members_end = members_start + root_manifest[members_start..].find(']').unwrap() + 1;
    let manifest = format!(
        "{}members = [\"plugin-abi\", \"driver\"]{}",
        &root_manifest[..members_start],
        &root_manifest[members_end..]
    );
    fs::write(fixture.join("Cargo.toml"), manifest).unwrap();
    fs::copy(root.join("Cargo.lock"), fixture.join("Cargo.lock")).unwrap();

    let mut abi_manifest = if abi == ForeignAbi::Release1_0 {
        fs::read_to_string(abi_dir.join("Cargo.toml")).unwrap()
    } else {
        fs::read_to_string(root.join("plugin-abi/Cargo.toml")).unwrap()
    };
    // Dev-dependencies point at workspace crates the fixture does not have.
    if let Some(dev) = abi_manifest.find("[dev-dependencies]") {
        abi_manifest.truncate(dev);
    }
    match abi {
        ForeignAbi::NextMajor => {
            abi_manifest = replace_once(&abi_manifest, "version = \"1.", "version = \"2.");
        }
        ForeignAbi::ChangedLayout => {
            let ffi = fs::read_to_string(abi_dir.join("src/ffi.rs")).unwrap();
            let ffi = replace_once(
                &ffi,
                "    /// The option or fact's name.\n    pub key: RString,\n    /// Its value, as text.\n    pub value: RString,\n}",
                "    /// Its value, as text.\n    pub value: RString,\n    /// The option or fact's name.\n    pub key: RString,\n}",
            );
            fs::write(abi_dir.join("src/ffi.rs"), ffi).unwrap();
        }
        ForeignAbi::Release1_0 => {}
    }
    fs::write(abi_dir.join("Cargo.toml"), abi_manifest).unwrap();

    fs::write(
        driver_dir.join("Cargo.toml"),
        r#"[package]
name = "strata-driver-foreign"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
strata-plugin-abi = { path = "../plugin-abi" }
"#,
    )
    .unwrap();
    fs::write(driver_dir.join("src/lib.rs"), FOREIGN_DRIVER_SOURCE).unwrap();

    cargo_build_cdylib(
        &fixture,
        &fixture.join("Cargo.toml"),
        "strata-driver-foreign",
        // One target directory per fixture: both build a library of the same
        // name, and a shared directory would let one overwrite the other's.
        Some(&fixture.join("target")),
        false,
    )
}

/// plugin-abi's crate (manifest and sources) as of [`ABI_1_0_COMMIT`],
/// written to `dest`.
fn released_abi_source(root: &Path, dest: &Path) {
    let archive = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["archive", "--format=tar", ABI_1_0_COMMIT, "plugin-abi"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run git archive for the ABI 1.0 fixture: {e}"));
    assert!(
        archive.status.success(),
        "git archive {ABI_1_0_COMMIT} plugin-abi failed (a shallow clone lacks the ABI 1.0 \
         commit; fetch the history): {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let unpacked = dest.with_extension("unpacked");
    let _ = fs::remove_dir_all(&unpacked);
    fs::create_dir_all(&unpacked).unwrap();
    let mut tar = std::process::Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&unpacked)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run tar");
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
    drop(tar.stdin.take());
    assert!(
        tar.wait().unwrap().success(),
        "tar -x of the ABI 1.0 sources"
    );
    fs::rename(unpacked.join("plugin-abi"), dest).unwrap();
    let _ = fs::remove_dir_all(&unpacked);
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "fixture patch no longer applies: {from:?} not found; update testkit::plugins"
    );
    text.replacen(from, to, 1)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

const FOREIGN_DRIVER_SOURCE: &str = r#"
use std::path::PathBuf;
use strata_plugin_abi::*;

pub struct Foreign;

impl DriverPlugin for Foreign {
    const NAME: &'static str = "foreign";
    const DESCRIPTION: &'static str = "built against a foreign ABI, for tests";
    fn init(_: &InitArgs) -> Result<Self> { Ok(Foreign) }
}

impl GraphDriver for Foreign {
    fn name(&self) -> String { "foreign".into() }
    fn status(&self) -> KeyValues { KeyValues::new() }
    fn capabilities(&self) -> Capabilities { Capabilities::empty() }
    fn metadata(&self, _: &str) -> Result<KeyValues> { Ok(KeyValues::new()) }
    fn create(&self, _: &str, _: Option<&str>, _: &CreateOptions) -> Result<()> { Ok(()) }
    fn remove(&self, _: &str) -> Result<()> { Ok(()) }
    fn get(&self, _: &str, _: &MountOptions) -> Result<PathBuf> { Ok(PathBuf::new()) }
    fn put(&self, _: &str) -> Result<()> { Ok(()) }
    fn exists(&self, _: &str) -> Result<bool> { Ok(false) }
    fn list(&self) -> Result<Vec<String>> { Ok(Vec::new()) }
    fn cleanup(&self) -> Result<()> { Ok(()) }
}

export_driver!(Foreign);
"#;
