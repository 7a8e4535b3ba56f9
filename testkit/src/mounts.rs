//! Backends the runner sets up for a driver, and scratch filesystems for
//! tests: each unmounted and detached when dropped, failure or not.

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

    /// Where the tmpfs is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// [`path`](Self::path), owned.
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

/// A filesystem kind a test can make on a loop device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopFsKind {
    /// mkfs.ext4 defaults: the reference filesystem for benches that create files.
    Ext4,
    /// Shares extents (reflink) and has subvolumes.
    Btrfs,
    /// Shares extents (reflink=1 is mkfs.xfs's default).
    Xfs,
}

impl LoopFsKind {
    fn mkfs(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            LoopFsKind::Ext4 => ("mkfs.ext4", &["-q", "-F"], "ext4"),
            LoopFsKind::Btrfs => ("mkfs.btrfs", &["-q", "-f"], "btrfs"),
            LoopFsKind::Xfs => ("mkfs.xfs", &["-q", "-f"], "xfs"),
        }
    }
}

/// A filesystem on a loop device over a sparse image file, mounted on a
/// temporary directory. Dropping it unmounts, detaches the loop device and
/// deletes the image, whether the test passed or not.
pub struct LoopFilesystem {
    mountpoint: tempfile::TempDir,
    device: Option<loopdev::LoopDevice>,
    mounted: bool,
    // Declared last so the image goes after the device is detached.
    _image_dir: tempfile::TempDir,
}

impl LoopFilesystem {
    /// Makes and mounts a `kind` filesystem of `size` bytes (needs root and the
    /// mkfs tool for the kind).
    pub fn new(kind: LoopFsKind, size: u64) -> std::io::Result<LoopFilesystem> {
        let image_dir = tempfile::tempdir()?;
        let image = image_dir.path().join("fs.img");
        std::fs::File::create(&image)?.set_len(size)?;
        // Another test (or process) may take the free device between
        // finding and attaching it: then the next free one is tried.
        let mut attempts = 0;
        let device = loop {
            let device = loopdev::LoopControl::open()?.next_free()?;
            match device.with().autoclear(true).attach(&image) {
                Ok(()) => break device,
                Err(e)
                    if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
                        && attempts < 20 =>
                {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let mut fs = LoopFilesystem {
            mountpoint: tempfile::tempdir()?,
            device: Some(device),
            mounted: false,
            _image_dir: image_dir,
        };
        let dev_path = fs
            .device
            .as_ref()
            .and_then(|d| d.path())
            .ok_or_else(|| std::io::Error::other("loop device has no path"))?;
        let (mkfs, args, fstype) = kind.mkfs();
        let out = std::process::Command::new(mkfs)
            .args(args)
            .arg(&dev_path)
            .output()
            .map_err(|e| std::io::Error::other(format!("run {mkfs}: {e}")))?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{mkfs} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        rustix::mount::mount(
            dev_path.as_path(),
            fs.mountpoint.path(),
            fstype,
            MountFlags::empty(),
            None::<&std::ffi::CStr>,
        )?;
        fs.mounted = true;
        Ok(fs)
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }
}

impl Drop for LoopFilesystem {
    fn drop(&mut self) {
        if self.mounted {
            if rustix::mount::unmount(self.mountpoint.path(), UnmountFlags::empty()).is_err() {
                let _ = rustix::mount::unmount(self.mountpoint.path(), UnmountFlags::DETACH);
            }
            self.mounted = false;
        }
        if let Some(device) = self.device.take() {
            // Autoclear detaches once the last user closes it; detaching
            // explicitly as well covers a mount that was never made.
            let _ = device.detach();
        }
    }
}

pub use crate::zfs_fuse::ZfsFusePool;

/// Detaches every mount at or beneath `path`, deepest first (lazily, so a
/// mount whose daemon died goes too); returns how many there were.
pub(crate) fn lazy_unmount_beneath(path: &Path) -> std::io::Result<usize> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_point(field)))
        .filter(|point| point.starts_with(path))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points.dedup();
    for point in &points {
        let _ = rustix::mount::unmount(point, UnmountFlags::DETACH);
    }
    Ok(points.len())
}

/// A mount point as mountinfo writes it: space, tab, newline and backslash
/// as three octal digits after a backslash.
fn unescape_mount_point(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(digits) = field.get(i + 1..i + 4)
            && let Ok(code) = u8::from_str_radix(digits, 8)
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::unescape_mount_point;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_point("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(
            unescape_mount_point("/tmp/back\\134slash"),
            "/tmp/back\\slash"
        );
        assert_eq!(unescape_mount_point("/plain"), "/plain");
        assert_eq!(unescape_mount_point("/end\\"), "/end\\");
    }
}
