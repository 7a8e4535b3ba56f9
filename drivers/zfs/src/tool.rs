//! The `zfs` and `zpool` commands, the one way the driver reaches ZFS.
//!
//! There is no stable libzfs API, and the Rust libzfs_core bindings are
//! unmaintained; the tools' scriptable output (`-H`: no headers, tab
//! separated; `get -p`: exact numbers) is what containerd's zfs
//! snapshotter and moby's driver use too. Everything goes through
//! [`Tool::run`], so a libzfs_core backend could replace this module alone.

use std::process::Command;
use std::time::Duration;

use strata_plugin_abi::DriverError;

/// How many times a "dataset is busy" answer is tried again, and how long
/// to wait between tries (zfs-fuse holds a dataset for a moment after its
/// last user lets go).
const BUSY_TRIES: u32 = 20;
const BUSY_PAUSE: Duration = Duration::from_millis(100);

/// The zfs tools.
#[derive(Clone, Debug, Default)]
pub struct Tool;

/// What a failed command said, kept apart so that callers can tell "no such
/// dataset" and "busy" from the rest.
#[derive(Debug)]
pub struct Failure {
    /// The command line, for messages.
    pub command: String,
    /// Its standard error, trimmed.
    pub stderr: String,
}

impl Failure {
    /// The command answered that the dataset does not exist.
    pub fn is_missing(&self) -> bool {
        self.stderr.contains("does not exist") || self.stderr.contains("no such")
    }

    /// The command answered that the dataset is busy.
    pub fn is_busy(&self) -> bool {
        let text = self.stderr.to_ascii_lowercase();
        text.contains("busy")
    }

    /// The failure as a driver error of `operation` (which names the layer).
    pub fn into_error(self, operation: &str) -> DriverError {
        let message = format!("{operation}: `{}` failed: {}", self.command, self.stderr);
        if self.is_missing() {
            DriverError::not_found(message)
        } else if self.is_busy() {
            DriverError::busy(message)
        } else {
            DriverError::other(message)
        }
    }
}

impl Tool {
    /// Runs `program args`, returning its standard output.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, Failure> {
        let command = format!("{program} {}", args.join(" "));
        tracing::trace!(%command, "zfs tool");
        let out = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| Failure {
                command: command.clone(),
                stderr: format!("cannot run {program}: {e}"),
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(Failure {
                command,
                stderr: if stderr.is_empty() {
                    format!("exited with {}", out.status)
                } else {
                    stderr
                },
            })
        }
    }

    /// `zfs args`.
    pub fn zfs(&self, args: &[&str]) -> Result<String, Failure> {
        self.run("zfs", args)
    }

    /// `zfs args`, tried again while the answer is "busy" (a bounded number
    /// of times), then failing with that reason.
    pub fn zfs_patiently(&self, args: &[&str]) -> Result<String, Failure> {
        let mut tries = 0;
        loop {
            match self.zfs(args) {
                Err(failure) if failure.is_busy() && tries < BUSY_TRIES => {
                    tries += 1;
                    std::thread::sleep(BUSY_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// One property of `dataset`, exactly (`zfs get -Hp -o value`).
    pub fn get(&self, dataset: &str, property: &str) -> Result<String, Failure> {
        self.zfs(&["get", "-H", "-p", "-o", "value", property, dataset])
            .map(|out| out.trim_end_matches('\n').to_string())
    }

    /// Every filesystem dataset with its mountpoint.
    pub fn filesystems(&self) -> Result<Vec<(String, String)>, Failure> {
        let out = self.zfs(&["list", "-H", "-o", "name,mountpoint", "-t", "filesystem"])?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let (name, mountpoint) = line.split_once('\t')?;
                Some((name.to_string(), mountpoint.to_string()))
            })
            .collect())
    }
}
