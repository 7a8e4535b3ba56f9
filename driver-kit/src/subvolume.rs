//! btrfs subvolumes, wherever a layer on btrfs meets them: the btrfs driver
//! makes each layer one, and a container may make more inside any layer on
//! btrfs (its own subvolumes, at any depth). Deleting a tree that holds one
//! with unlink and rmdir fails ("directory not empty" on a subvolume that
//! holds another, "read-only file system" in a read-only snapshot), a
//! long-standing cause of layers that cannot be removed. Here a subvolume is
//! deleted as one (the kernel's snapshot-destroy, which also takes read-only
//! ones), the subvolumes nested in it first, found through the kernel's
//! list of a subvolume's children rather than by walking its files.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use btrfs_uapi::subvolume::{self, SubvolumeFlags};
use rustix::fs::{AtFlags, CWD, Mode, OFlags, StatxFlags};

/// The inode number of every subvolume's root directory on btrfs.
const SUBVOLUME_ROOT_INODE: u64 = 256;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The error a btrfs ioctl answered (an errno), as an `io::Error`.
fn io_error<E: Into<i32>>(errno: E) -> io::Error {
    io::Error::from_raw_os_error(errno.into())
}

/// Whether `error` is the errno `expected`.
fn is(error: &io::Error, expected: rustix::io::Errno) -> bool {
    error.raw_os_error() == Some(expected.raw_os_error())
}

/// Whether the open directory `dir`, on btrfs, is a subvolume's root. Call
/// it only for directories known to be on btrfs: elsewhere inode 256 is an
/// ordinary inode.
pub fn is_subvolume_root(dir: impl AsFd) -> io::Result<bool> {
    let statx = rustix::fs::statx(dir, c"", AtFlags::EMPTY_PATH, StatxFlags::INO)?;
    Ok(statx.stx_ino == SUBVOLUME_ROOT_INODE)
}

/// Whether `path` is a btrfs subvolume's root directory.
pub fn is_subvolume(path: &Path) -> io::Result<bool> {
    let dir = rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty())?;
    Ok(crate::fs_type::of_fd(&dir)? == crate::fs_type::FsType::Btrfs && is_subvolume_root(&dir)?)
}

/// Makes the subvolume whose root is `dir` writable or read-only.
pub fn set_read_only(dir: impl AsFd, read_only: bool) -> io::Result<()> {
    let flags = subvolume::subvolume_flags_get(dir.as_fd()).map_err(|e| io_error(e as i32))?;
    let wanted = if read_only {
        flags | SubvolumeFlags::RDONLY
    } else {
        flags - SubvolumeFlags::RDONLY
    };
    if wanted != flags {
        subvolume::subvolume_flags_set(dir.as_fd(), wanted).map_err(|e| io_error(e as i32))?;
    }
    Ok(())
}

/// Whether the subvolume whose root is `dir` is read-only.
pub fn is_read_only(dir: impl AsFd) -> io::Result<bool> {
    let flags = subvolume::subvolume_flags_get(dir.as_fd()).map_err(|e| io_error(e as i32))?;
    Ok(flags.contains(SubvolumeFlags::RDONLY))
}

/// Deletes the subvolume `name` in the directory `parent`, with every
/// subvolume nested in it at any depth (the deepest first). `shown` names
/// the parent in errors.
///
/// The kernel deletes a subvolume as one (its files are reclaimed in the
/// background). Where it refuses (no `CAP_SYS_ADMIN` and no
/// `user_subvol_rm_allowed`), the subvolume is made writable, emptied and
/// removed like a directory, which the kernel allows its owner.
pub fn delete(parent: &OwnedFd, name: &CStr, shown: &Path) -> io::Result<()> {
    use rustix::io::Errno;
    match subvolume::subvolume_delete(parent.as_fd(), name).map_err(|e| io_error(e as i32)) {
        Ok(()) => return Ok(()),
        Err(e) if is(&e, Errno::NOENT) => return Ok(()),
        Err(e) if is(&e, Errno::NOTEMPTY) => {}
        Err(e) if is(&e, Errno::PERM) || is(&e, Errno::ACCESS) => {
            return delete_as_directory(parent, name, shown);
        }
        Err(e) => return Err(with_path(e, shown, name)),
    }
    // Subvolumes inside it: each is deleted (with its own nested ones)
    // where it sits, then this one, now holding none, as one.
    let dir = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
    let inside = shown.join(name.to_string_lossy().as_ref());
    // A read-only subvolume's entries cannot be removed, its nested
    // subvolumes' included.
    set_read_only(&dir, false).map_err(|e| with_path(e, shown, name))?;
    for child in subvolume::subvol_rootrefs(dir.as_fd()).map_err(|e| io_error(e as i32))? {
        let found = btrfs_uapi::inode::ino_lookup_user(dir.as_fd(), child.treeid, child.dirid)
            .map_err(|e| io_error(e as i32))?;
        let holder = if found.path.is_empty() {
            rustix::fs::openat(&dir, c".", DIR_FLAGS, Mode::empty())?
        } else {
            let relative = CString::new(found.path.trim_end_matches('/'))
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            rustix::fs::openat(&dir, relative.as_c_str(), DIR_FLAGS, Mode::empty())?
        };
        let child_name =
            CString::new(found.name).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        delete(&holder, &child_name, &inside.join(&found.path))?;
    }
    drop(dir);
    match subvolume::subvolume_delete(parent.as_fd(), name).map_err(|e| io_error(e as i32)) {
        Ok(()) => Ok(()),
        Err(e) if is(&e, Errno::NOENT) => Ok(()),
        Err(e) => Err(with_path(e, shown, name)),
    }
}

/// The fallback where the kernel will not delete subvolumes for us: made
/// writable, emptied (nested subvolumes through [`delete`]) and removed.
fn delete_as_directory(parent: &OwnedFd, name: &CStr, shown: &Path) -> io::Result<()> {
    let dir = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
    set_read_only(&dir, false).map_err(|e| with_path(e, shown, name))?;
    crate::delete::empty(&dir, shown)?;
    drop(dir);
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(with_path(e.into(), shown, name)),
    }
}

fn with_path(error: io::Error, shown: &Path, name: &CStr) -> io::Error {
    io::Error::new(
        error.kind(),
        format!(
            "delete subvolume {}: {error}",
            shown.join(name.to_string_lossy().as_ref()).display()
        ),
    )
}
