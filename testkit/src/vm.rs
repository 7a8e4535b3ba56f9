//! A throwaway qemu VM booting Debian's own kernel, for tests of kernel
//! features this host lacks (device-mapper). The runner is
//! `scripts/in-vm.sh`, embedded here so an installed test binary or
//! conformance runner carries it: [`InVm::command`] writes it (and the
//! guest's init) to a private directory and gives a command that runs a
//! program in the VM. The guest sees the host's root read-only, runs the
//! program in the same directory with a fresh ext4 `/tmp` and `/var/tmp`,
//! and the command's exit status is the program's. The script tears
//! everything down (VM, disk, scratch) however the run ends.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const IN_VM: &str = include_str!("../../scripts/in-vm.sh");
const INIT: &str = include_str!("../../scripts/vm/init");

/// Why the VM cannot run here, if it cannot: a missing qemu or
/// busybox-static (the two packages the runner needs on the host).
pub fn unavailable() -> Option<String> {
    let found = |program: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    };
    if !found("qemu-system-x86_64") {
        return Some("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)".into());
    }
    if !std::path::Path::new("/bin/busybox").is_file() {
        return Some("/bin/busybox is missing (Debian package busybox-static)".into());
    }
    None
}

/// The runner, written out; the directory goes when this is dropped.
pub struct InVm {
    dir: tempfile::TempDir,
}

impl InVm {
    /// Writes the runner to a private directory.
    pub fn new() -> io::Result<InVm> {
        let dir = tempfile::Builder::new().prefix("strata-in-vm.").tempdir()?;
        fs::create_dir(dir.path().join("vm"))?;
        let script = dir.path().join("in-vm.sh");
        fs::write(&script, IN_VM)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        let init = dir.path().join("vm/init");
        fs::write(&init, INIT)?;
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
        Ok(InVm { dir })
    }

    /// A command running `program` with `args` in the VM. The caller adds
    /// environment (`STRATA_*`, `RUST_LOG`, `RUST_BACKTRACE` and
    /// `DM_DISABLE_UDEV` reach the program; `STRATA_VM_SHARE` names host
    /// directories the guest may write) and runs it.
    pub fn command<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(self.dir.path().join("in-vm.sh"));
        command.arg(program).args(args);
        command
    }
}
