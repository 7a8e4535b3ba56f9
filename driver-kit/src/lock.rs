//! Inter-process locks on files and directories (flock(2)).
//!
//! flock locks belong to an open file description, so two opens in one
//! process exclude each other like two processes do: the same lock serves
//! threads and processes. The kernel drops a lock when its holder dies, which
//! is what lets a dead process's work be recognised without trusting pids
//! (which another pid namespace cannot see).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{CWD, FlockOperation, Mode, OFlags};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Held {
    fd: OwnedFd,
}

impl Held {
    /// The locked file or directory.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// Takes an exclusive lock on the file at `path`, creating it (mode 0600) if
/// needed, waiting for other holders.
pub fn exclusive_file(path: &Path) -> io::Result<Held> {
    let fd = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )?;
    lock_waiting(&fd, FlockOperation::LockExclusive)?;
    Ok(Held { fd })
}

/// Opens a directory to lock it: without following a final symlink, so a
/// lock is always on the directory itself.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Locks an open directory exclusively, waiting for other holders.
pub fn exclusive_dir(fd: OwnedFd) -> io::Result<Held> {
    lock_waiting(&fd, FlockOperation::LockExclusive)?;
    Ok(Held { fd })
}

/// Locks an open file or directory exclusively if nobody holds it; `None`
/// when someone does.
pub fn try_exclusive(fd: OwnedFd) -> io::Result<Option<Held>> {
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Held { fd })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn lock_waiting(fd: impl AsFd, operation: FlockOperation) -> io::Result<()> {
    loop {
        match rustix::fs::flock(&fd, operation) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_opens_in_one_process_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = exclusive_file(&path).unwrap();
        let other =
            rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
        let other = try_exclusive(other).unwrap();
        assert!(other.is_none(), "a second open took a held lock");
        drop(held);
        let again =
            rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
        assert!(try_exclusive(again).unwrap().is_some());
    }
}
