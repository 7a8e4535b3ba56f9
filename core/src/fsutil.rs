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
    // Until the rename the new bytes are only in the temp file (removed with
    // `temp_path` on any error); after it, `path` has them whole. A kill in
    // between leaves a `.tmp-` file beside the old `path`, never a mix.
    let temp_path = temp.into_temp_path();
    rename_into_place(&temp_path, path, replace)?;
    // The temp file is now `path`; nothing left to delete.
    std::mem::forget(temp_path);
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(unix)]
fn rename_into_place(temp: &Path, path: &Path, replace: bool) -> io::Result<()> {
    let flags = if replace {
        rustix::fs::RenameFlags::empty()
    } else {
        rustix::fs::RenameFlags::NOREPLACE
    };
    match rustix::fs::renameat_with(rustix::fs::CWD, temp, rustix::fs::CWD, path, flags) {
        Ok(()) => Ok(()),
        // FUSE filesystems (zfs-fuse) answer EINVAL to RENAME_NOREPLACE:
        // a hard link is just as atomic and fails the same way on an
        // existing `path`; the temp name is then removed.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if !replace => {
            rustix::fs::linkat(
                rustix::fs::CWD,
                temp,
                rustix::fs::CWD,
                path,
                rustix::fs::AtFlags::empty(),
            )?;
            // `path` is whole now; a temp name left behind is only litter.
            let _ = fs::remove_file(temp);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Windows: MoveFileEx, which replaces only when asked (and then atomically
/// on NTFS), as std's rename and hard_link give it.
#[cfg(not(unix))]
fn rename_into_place(temp: &Path, path: &Path, replace: bool) -> io::Result<()> {
    if replace {
        fs::rename(temp, path)
    } else {
        // A hard link fails on an existing `path`, as RENAME_NOREPLACE does.
        fs::hard_link(temp, path)?;
        // `path` is whole now; a temp name left behind is only litter.
        let _ = fs::remove_file(temp);
        Ok(())
    }
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// NTFS journals its metadata, a rename included; a directory cannot be
/// opened as a file to flush it (std gives no backup-semantics open).
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// A lock on a lock file (exclusive unless made by `shared`), released when
/// dropped or when the process dies, which is what makes it safe across
/// crashes: flock(2) on Linux, LockFileEx on Windows (std's `File::lock`).
pub struct FileLock(#[allow(dead_code)] fs::File);

impl FileLock {
    fn open(path: &Path, create: bool) -> io::Result<fs::File> {
        let mut options = fs::OpenOptions::new();
        options
            .read(true)
            .write(true)
            .create(create)
            .truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path)
    }

    /// Waits for the lock on `path` (made if missing).
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        let file = Self::open(path, true)?;
        file.lock()?;
        Ok(FileLock(file))
    }

    /// Waits for a shared hold on `path` (made if missing): any number of
    /// shared holders, or one exclusive.
    pub fn shared(path: &Path) -> io::Result<FileLock> {
        let file = Self::open(path, true)?;
        file.lock_shared()?;
        Ok(FileLock(file))
    }

    /// Waits for the lock on `path` if the file is there; `None` (at once)
    /// if it is not.
    pub fn exclusive_existing(path: &Path) -> io::Result<Option<FileLock>> {
        let file = match Self::open(path, false) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        file.lock()?;
        Ok(Some(FileLock(file)))
    }

    /// Takes the lock on `path` if nobody holds it; `None` if somebody does.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        Self::try_file(Self::open(path, true)?)
    }

    /// Takes the lock on `path` if the file is there and nobody holds it:
    /// `Missing`, `Held` by somebody, or `Taken`.
    pub fn try_exclusive_existing(path: &Path) -> io::Result<TryExisting> {
        let file = match Self::open(path, false) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TryExisting::Missing),
            Err(e) => return Err(e),
        };
        Ok(match Self::try_file(file)? {
            Some(lock) => TryExisting::Taken(lock),
            None => TryExisting::Held,
        })
    }

    fn try_file(file: fs::File) -> io::Result<Option<FileLock>> {
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock(file))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// What [`FileLock::try_exclusive_existing`] found.
pub enum TryExisting {
    /// No such file.
    Missing,
    /// Another holder has it.
    Held,
    /// Ours now.
    Taken(FileLock),
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
    fn locks_exclude_each_other_and_go_with_their_holder() {
        // Two opens in one process exclude each other as two processes do
        // (flock on Linux, LockFileEx on Windows: both per open file).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = FileLock::exclusive(&path).unwrap();
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
        assert!(matches!(
            FileLock::try_exclusive_existing(&path).unwrap(),
            TryExisting::Held
        ));
        drop(held);
        let shared = FileLock::shared(&path).unwrap();
        let shared_too = FileLock::shared(&path).unwrap();
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
        drop((shared, shared_too));
        assert!(matches!(
            FileLock::try_exclusive_existing(&path).unwrap(),
            TryExisting::Taken(_)
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(
            FileLock::try_exclusive_existing(&missing).unwrap(),
            TryExisting::Missing
        ));
        assert!(FileLock::exclusive_existing(&missing).unwrap().is_none());
        assert!(!missing.exists(), "probing made the file");
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
