//! Scratch filesystems for tests, unmounted when dropped (failure or not).

use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

/// A tmpfs of a fixed size, mounted on a fresh temporary directory.
pub struct ScratchTmpfs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl ScratchTmpfs {
    /// Mounts a tmpfs of `size` bytes (needs root).
    pub fn new(size: u64) -> std::io::Result<ScratchTmpfs> {
        let dir = tempfile::tempdir()?;
        let data = std::ffi::CString::new(format!("size={size},mode=0755")).expect("no NUL");
        rustix::mount::mount(
            "strata-test",
            dir.path(),
            "tmpfs",
            MountFlags::empty(),
            Some(data.as_c_str()),
        )?;
        Ok(ScratchTmpfs { dir, mounted: true })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_buf(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for ScratchTmpfs {
    fn drop(&mut self) {
        if self.mounted {
            // Detach even if something still holds a file open there.
            let _ = rustix::mount::unmount(self.dir.path(), UnmountFlags::DETACH);
            self.mounted = false;
        }
    }
}
