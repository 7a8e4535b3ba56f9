//! The filesystem on each thin device: made once on the base device (and on
//! a base layer given its own size), grown when a layer's device is bigger
//! than its parent's, mounted by `get`. The tools are e2fsprogs' and
//! xfsprogs'; mounting is a mount(2) call.

use std::path::Path;
use std::process::Command;

use rustix::mount::{MountFlags, UnmountFlags};
use strata_plugin_abi::{DriverError, Result};

/// The filesystems a thin device can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filesystem {
    /// ext4 (the default).
    Ext4,
    /// xfs: thin snapshots share the filesystem's UUID, so it is mounted
    /// with `nouuid`.
    Xfs,
}

impl Filesystem {
    /// The filesystem named `text`, as the `fs` option and the record say.
    pub fn parse(text: &str) -> Option<Filesystem> {
        match text {
            "ext4" => Some(Filesystem::Ext4),
            "xfs" => Some(Filesystem::Xfs),
            _ => None,
        }
    }

    /// Its name, as mount(2) knows it.
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }

    /// Makes the filesystem on `device`. Inode tables and the journal are
    /// written now, not lazily after each mount: a lazy writer would make
    /// every snapshot's first mount allocate blocks in the pool. No discard:
    /// a fresh thin device has nothing to discard.
    pub fn make(self, device: &Path, operation: &str) -> Result<()> {
        let mut command = match self {
            Filesystem::Ext4 => {
                let mut c = Command::new("mkfs.ext4");
                c.args([
                    "-q",
                    "-F",
                    "-E",
                    "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                ]);
                c
            }
            Filesystem::Xfs => {
                let mut c = Command::new("mkfs.xfs");
                c.args(["-q", "-f", "-K"]);
                c
            }
        };
        command.arg(device);
        run(command, operation)
    }

    /// Makes the filesystem on `device` and leaves it empty: mounted on
    /// `at` for the time it takes to remove what mkfs put there (ext4's
    /// `lost+found`: a new layer holds nothing).
    pub fn make_empty(self, device: &Path, at: &Path, operation: &str) -> Result<()> {
        self.make(device, operation)?;
        self.mount(device, at, MountFlags::empty(), "", operation)?;
        let emptied = match std::fs::remove_dir(at.join("lost+found")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DriverError::io(
                format!("{operation}: remove lost+found from the new filesystem"),
                &e,
            )),
            _ => Ok(()),
        };
        let unmounted = unmount(at, operation);
        emptied.and(unmounted)
    }

    /// Grows the filesystem mounted at `mount_point` (on `device`) to fill
    /// its device.
    pub fn grow(self, device: &Path, mount_point: &Path, operation: &str) -> Result<()> {
        let mut command = match self {
            Filesystem::Ext4 => {
                let mut c = Command::new("resize2fs");
                c.arg(device);
                c
            }
            Filesystem::Xfs => {
                let mut c = Command::new("xfs_growfs");
                c.arg(mount_point);
                c
            }
        };
        command.stdout(std::process::Stdio::null());
        run(command, operation)
    }

    /// Mounts `device` on `target` with `flags` and the `data` options
    /// (plus `nouuid` for xfs).
    pub fn mount(
        self,
        device: &Path,
        target: &Path,
        flags: MountFlags,
        data: &str,
        operation: &str,
    ) -> Result<()> {
        let mut data = data.to_string();
        if self == Filesystem::Xfs {
            if !data.is_empty() {
                data.push(',');
            }
            data.push_str("nouuid");
        }
        let data = std::ffi::CString::new(data).map_err(|_| {
            DriverError::invalid_input(format!("{operation}: mount options hold a NUL byte"))
        })?;
        rustix::mount::mount(device, target, self.name(), flags, Some(data.as_c_str())).map_err(
            |e| {
                DriverError::io(
                    format!(
                        "{operation}: mount {} ({}) on {}",
                        device.display(),
                        self.name(),
                        target.display()
                    ),
                    &e.into(),
                )
            },
        )
    }
}

/// Unmounts `target`; Busy when something uses it.
pub fn unmount(target: &Path, operation: &str) -> Result<()> {
    rustix::mount::unmount(target, UnmountFlags::empty()).map_err(|e| {
        DriverError::io(
            format!("{operation}: unmount {}", target.display()),
            &e.into(),
        )
    })
}

/// Runs a filesystem tool; its own words on failure.
fn run(mut command: Command, operation: &str) -> Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DriverError::not_supported(format!(
                "{operation}: {program} is not installed (e2fsprogs or xfsprogs)"
            ))
        } else {
            DriverError::io(format!("{operation}: run {program}"), &e)
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said: String = stderr.trim().chars().take(400).collect();
    Err(DriverError::other(format!(
        "{operation}: {program} failed ({}): {said}",
        output.status
    )))
}
