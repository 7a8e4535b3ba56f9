//! What the tests that drive the `strata` command share: a scratch store on
//! one driver, unmounted whatever happens, and the command that runs on it.
//! (Each test adds the ways it runs commands in an `impl Store` of its own.)

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_testkit::mounts::{LoopFilesystem, LoopFsKind, ZfsFusePool};
use strata_testkit::plugins::build_plugin;

/// A store in a scratch directory of its own, on one driver.
pub struct Store {
    pub scratch: tempfile::TempDir,
    pub driver: &'static str,
    /// The filesystem the scratch directory is on, for a driver that needs
    /// its own (btrfs, zfs); dropped last, after the scratch directory.
    pub backing: Option<Backing>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Whatever happened, nothing stays mounted under the scratch store.
        if let Ok(points) = strata_driver_kit::mounts::mounted_beneath(self.scratch.path()) {
            for point in points {
                let _ = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// What a store's scratch directory is on, held until the store goes.
pub enum Backing {
    Loop(LoopFilesystem),
    Zfs(ZfsFusePool),
}

impl Backing {
    pub fn path(&self) -> &Path {
        match self {
            Backing::Loop(fs) => fs.path(),
            Backing::Zfs(pool) => pool.path(),
        }
    }
}

impl Store {
    /// A new store on `driver`, in `/var/tmp/<prefix>...` (overlay cannot
    /// put upper directories on an overlay `/tmp`), or for btrfs on a loop
    /// btrfs made for it.
    pub fn on(prefix: &str, driver: &'static str) -> Store {
        // btrfs needs btrfs (a loop-mounted one of its own), zfs a pool
        // (zfs-fuse's, on a file); these tests run as root, as every test
        // that mounts does.
        let backing = match driver {
            "btrfs" => Some(Backing::Loop(
                LoopFilesystem::new(LoopFsKind::Btrfs, 4 << 30)
                    .expect("a loop btrfs for the store"),
            )),
            "zfs" => Some(Backing::Zfs(
                ZfsFusePool::new(4 << 30).expect("a zfs-fuse pool for the store"),
            )),
            _ => None,
        };
        let scratch = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(
                backing
                    .as_ref()
                    .map_or(Path::new("/var/tmp"), Backing::path),
            )
            .unwrap();
        Store {
            scratch,
            driver,
            backing,
        }
    }

    /// The graph root.
    pub fn graph(&self) -> PathBuf {
        self.scratch.path().join("graph")
    }

    /// `strata ARGS` on this store, its driver library found through
    /// `STRATA_DRIVER_PATH` and no configuration file read. The library is
    /// built first, unless `STRATA_TEST_DRIVER_DIR` names where it is (in
    /// the test VM, whose view of the build directory is read-only).
    pub fn command(&self, args: &[&str]) -> Command {
        let drivers = match std::env::var_os("STRATA_TEST_DRIVER_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => build_plugin(&format!("strata-driver-{}", self.driver))
                .parent()
                .unwrap()
                .to_path_buf(),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command
            .env("STRATA_DRIVER_PATH", &drivers)
            .env_remove("STRATA_CONFIG")
            .arg("--root")
            .arg(self.graph())
            .arg("--run-root")
            .arg(self.scratch.path().join("run"))
            .args(["--driver", self.driver])
            .args(args);
        command
    }
}

/// What a finished `strata ARGS` gave: its standard output, trimmed, or what
/// it said on failure (or why it could not run).
pub fn outcome(args: &[&str], out: std::io::Result<Output>) -> Result<String, String> {
    let out = out.map_err(|e| format!("strata {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "strata {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
