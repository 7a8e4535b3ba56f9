//! Small filesystem helpers every piece of metadata goes through.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` so that a crash leaves either the old content or
/// the new, never a mix: temp file in the same directory, fsync, rename,
/// fsync the directory. With `replace = false` an existing file is kept and
/// `AlreadyExists` returned (the first writer wins).
pub fn write_atomic(path: &Path, bytes: &[u8], replace: bool) -> io::Result<()> {
    write_renamed(path, bytes, replace, true)
}

/// Replaces `path` with `bytes` atomically for other processes (temp file
/// and rename) but without fsync: for run-root state (mount counts) that a
/// reboot discards anyway, where a power cut has nothing to preserve and the
/// fsyncs would sit on every mount's path.
pub fn replace_atomic_volatile(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_renamed(path, bytes, true, false)
}

fn write_renamed(path: &Path, bytes: &[u8], replace: bool, durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let mut temp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    temp.write_all(bytes)?;
    if durable {
        temp.as_file().sync_all()?;
    }
    let temp_path = temp.into_temp_path();
    let flags = if replace {
        rustix::fs::RenameFlags::empty()
    } else {
        rustix::fs::RenameFlags::NOREPLACE
    };
    match rustix::fs::renameat_with(rustix::fs::CWD, &*temp_path, rustix::fs::CWD, path, flags) {
        Ok(()) => {
            // The temp file is now `path`; nothing left to delete.
            std::mem::forget(temp_path);
        }
        // FUSE filesystems (zfs-fuse) answer EINVAL to RENAME_NOREPLACE:
        // a hard link is just as atomic and fails the same way on an
        // existing `path`; the temp name then goes with `temp_path`.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if !replace => {
            rustix::fs::linkat(
                rustix::fs::CWD,
                &*temp_path,
                rustix::fs::CWD,
                path,
                rustix::fs::AtFlags::empty(),
            )?;
        }
        Err(e) => return Err(e.into()),
    }
    if durable {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A flock(2) on a lock file (exclusive unless made by `shared`), released when dropped (or when the
/// process dies, which is what makes it safe across crashes).
pub struct FileLock(#[allow(dead_code)] std::os::fd::OwnedFd);

impl FileLock {
    fn open(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
        Ok(rustix::fs::open(
            path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CREATE | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o600),
        )?)
    }

    /// A lock already taken on `fd`.
    pub(crate) fn from_fd(fd: std::os::fd::OwnedFd) -> FileLock {
        FileLock(fd)
    }

    /// Waits for the lock on `path` (made if missing).
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        let fd = Self::open(path)?;
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(FileLock(fd))
    }

    /// Waits for a shared hold on `path` (made if missing): any number of
    /// shared holders, or one exclusive.
    pub fn shared(path: &Path) -> io::Result<FileLock> {
        let fd = Self::open(path)?;
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockShared)?;
        Ok(FileLock(fd))
    }

    /// Waits for the lock on `path` if the file is there; `None` (at once)
    /// if it is not.
    pub fn exclusive_existing(path: &Path) -> io::Result<Option<FileLock>> {
        let fd = match rustix::fs::open(
            path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(Some(FileLock(fd)))
    }

    /// Takes the lock on `path` if nobody holds it; `None` if somebody does.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        let fd = Self::open(path)?;
        match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock(fd))),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Creates `path` and its missing ancestors, returning the ones it created,
/// outermost first, so a failed operation can take them away again.
pub fn create_dirs_tracked(path: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let mut missing = Vec::new();
    let mut cursor = Some(path);
    while let Some(p) = cursor {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cursor = p.parent();
    }
    missing.reverse();
    fs::create_dir_all(path)?;
    Ok(missing)
}

/// Removes `path` if it holds nothing but empty directories.
pub fn remove_if_only_empty_dirs(path: &Path) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(false);
    }
    let mut all_gone = true;
    for entry in fs::read_dir(path)? {
        all_gone &= remove_if_only_empty_dirs(&entry?.path())?;
    }
    if all_gone {
        fs::remove_dir(path)?;
    }
    Ok(all_gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_or_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.json");
        write_atomic(&path, b"one", false).unwrap();
        let err = write_atomic(&path, b"two", false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"three", true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp files left: {leftovers:?}");
    }

    #[test]
    fn only_empty_directory_trees_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let created = create_dirs_tracked(&dir.path().join("a/b/c")).unwrap();
        assert_eq!(created.len(), 3);
        fs::create_dir_all(dir.path().join("a/b/c/d")).unwrap();
        assert!(remove_if_only_empty_dirs(&dir.path().join("a")).unwrap());
        assert!(!dir.path().join("a").exists());
        fs::create_dir_all(dir.path().join("x/y")).unwrap();
        fs::write(dir.path().join("x/y/file"), b"keep").unwrap();
        assert!(!remove_if_only_empty_dirs(&dir.path().join("x")).unwrap());
        assert!(dir.path().join("x/y/file").exists());
    }
}
