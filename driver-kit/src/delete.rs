//! Deleting a directory tree without ever crossing into another filesystem.
//!
//! std's `remove_dir_all` descends into whatever is mounted below the tree
//! and deletes its contents before the final rmdir fails: a runtime's bind
//! mount (a volume) left under a layer by a killed process would lose its
//! data. Here every directory is opened beneath its parent without following
//! links and its mount (statx's mount id, which tells a bind mount of the same
//! filesystem apart; the device where the kernel has no mount ids) compared
//! with the tree's; a directory on another mount is refused (EBUSY),
//! untouched. On btrfs a subvolume inside the tree (a container may make
//! them) is deleted as one, with those nested in it (see `subvolume`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::fs_type::FsType;
use crate::subvolume;

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Deletes `path` and everything below it that is on `path`'s filesystem;
/// a mount point below it is an EBUSY error and stays as it is. A missing
/// `path` is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match rustix::fs::lstat(path) {
        Ok(meta) => meta,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(meta.st_mode) != FileType::Directory {
        return rustix::fs::unlink(path).map_err(Into::into);
    }
    let dir = rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty())?;
    if crate::fs_type::of_fd(&dir)? == FsType::Btrfs && subvolume::is_subvolume_root(&dir)? {
        // A subvolume goes as one, through the directory that holds it.
        drop(dir);
        let (holder, name) = holder_of(path)?;
        return subvolume::delete(&holder, &name, path.parent().unwrap_or(path));
    }
    empty(&dir, path)?;
    drop(dir);
    match rustix::fs::rmdir(path) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The directory holding `path`, open, and `path`'s last component.
fn holder_of(path: &Path) -> io::Result<(OwnedFd, CString)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let holder = rustix::fs::openat(CWD, parent, DIR_FLAGS, Mode::empty())?;
    Ok((holder, name))
}

/// Deletes what the open directory `dir` holds (on its own mount, btrfs
/// subvolumes as one), leaving `dir` itself; `shown` names it in errors.
pub(crate) fn empty(dir: &OwnedFd, shown: &Path) -> io::Result<()> {
    let mount = mount_of(dir)?;
    let on_btrfs = crate::fs_type::of_fd(dir)? == FsType::Btrfs;
    empty_dir(dir, Walk { mount, on_btrfs }, shown)
}

/// What every directory of one deletion shares: the mount it must stay on,
/// and whether that is btrfs (where a directory may be a subvolume).
#[derive(Clone, Copy)]
struct Walk {
    mount: MountOf,
    on_btrfs: bool,
}

/// Which mount an open directory is on: its mount id, or its device where
/// the kernel gives no mount ids (before Linux 5.8).
#[derive(Clone, Copy, PartialEq, Eq)]
enum MountOf {
    Id(u64),
    Device(u64),
}

fn mount_of(dir: &OwnedFd) -> io::Result<MountOf> {
    let statx = rustix::fs::statx(
        dir,
        c"",
        AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::MNT_ID,
    )?;
    if statx.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() != 0 {
        Ok(MountOf::Id(statx.stx_mnt_id))
    } else {
        Ok(MountOf::Device(rustix::fs::makedev(
            statx.stx_dev_major,
            statx.stx_dev_minor,
        )))
    }
}

/// Deletes the contents of `dir` (on the walk's mount).
fn empty_dir(dir: &OwnedFd, walk: Walk, shown: &Path) -> io::Result<()> {
    // Names first, then deletions: changing a directory while reading it
    // may skip entries.
    let mut names: Vec<(CString, FileType)> = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push((name.to_owned(), entry.file_type()));
        }
    }
    for (name, kind) in names {
        remove_entry(dir, &name, kind, walk, shown)?;
    }
    Ok(())
}

fn remove_entry(
    parent: &OwnedFd,
    name: &CStr,
    kind: FileType,
    walk: Walk,
    shown: &Path,
) -> io::Result<()> {
    let kind = match kind {
        FileType::Unknown => {
            let stat = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
            FileType::from_raw_mode(stat.st_mode)
        }
        kind => kind,
    };
    if kind != FileType::Directory {
        return match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    let child = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
    if mount_of(&child)? != walk.mount {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "{}/{} is a mount point; left as it is",
                shown.display(),
                name.to_string_lossy()
            ),
        ));
    }
    if walk.on_btrfs && subvolume::is_subvolume_root(&child)? {
        drop(child);
        return subvolume::delete(parent, name, shown);
    }
    empty_dir(&child, walk, shown)?;
    drop(child);
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_tree_goes_whole_but_a_mount_inside_it_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", tree.join("a/link")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(Path::new("/etc/passwd").exists(), "a symlink was followed");

        if !strata_testkit::skip::is_root() {
            strata_testkit::skip::cannot_run(
                "the mount half of the tree removal test",
                "mounting takes root",
            );
            return;
        }
        let volume = dir.path().join("volume");
        fs::create_dir_all(&volume).unwrap();
        fs::write(volume.join("precious"), b"keep").unwrap();
        fs::create_dir_all(tree.join("mnt")).unwrap();
        rustix::mount::mount_bind(&volume, tree.join("mnt")).unwrap();
        let err = remove_tree(&tree).unwrap_err();
        rustix::mount::unmount(tree.join("mnt"), rustix::mount::UnmountFlags::DETACH).unwrap();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
        assert_eq!(fs::read(volume.join("precious")).unwrap(), b"keep");
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }
}
