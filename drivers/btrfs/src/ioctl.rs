//! The btrfs operations the driver uses, by path, through the kernel's
//! ioctls (the `btrfs-uapi` crate; no `btrfs` command, no C library).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use btrfs_uapi::quota::{self, QgroupLimitFlags, QgroupStatusFlags};
use btrfs_uapi::subvolume;
use rustix::fs::{CWD, Mode, OFlags};
use strata_driver_kit::subvolume as kit;

/// The errno a btrfs ioctl answered, as an `io::Error`.
fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The directory holding `path`, open, and `path`'s name in it.
fn holder_and_name(path: &Path) -> io::Result<(OwnedFd, CString)> {
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok((open_dir(parent)?, name))
}

/// Makes an empty subvolume at `path`.
pub fn create_subvolume(path: &Path) -> io::Result<()> {
    let (holder, name) = holder_and_name(path)?;
    subvolume::subvolume_create(holder.as_fd(), &name, &[]).map_err(|e| errno(e as i32))
}

/// Makes `path` a snapshot of the subvolume `source`, read-only or not.
pub fn snapshot(source: &Path, path: &Path, read_only: bool) -> io::Result<()> {
    let source = open_dir(source)?;
    let (holder, name) = holder_and_name(path)?;
    subvolume::snapshot_create(holder.as_fd(), source.as_fd(), &name, read_only, &[])
        .map_err(|e| errno(e as i32))
}

/// Makes the subvolume at `path` read-only or writable.
pub fn set_read_only(path: &Path, read_only: bool) -> io::Result<()> {
    kit::set_read_only(open_dir(path)?, read_only)
}

/// Whether the kernel lets this process make, seal and delete subvolumes in
/// `dir` (a scratch directory on the home's filesystem).
pub fn probe(dir: &Path) -> io::Result<()> {
    let probe = dir.join("probe");
    create_subvolume(&probe)?;
    let sealed = set_read_only(&probe, true);
    let (holder, name) = holder_and_name(&probe)?;
    let deleted = kit::delete(&holder, &name, dir);
    sealed.and(deleted)
}

/// Whether this process holds CAP_SYS_ADMIN, under which the kernel
/// allows every subvolume operation.
pub fn has_sys_admin() -> bool {
    rustix::thread::capabilities(None).is_ok_and(|caps| {
        caps.effective
            .contains(rustix::thread::CapabilitySet::SYS_ADMIN)
    })
}

/// Whether quota accounting is on for the filesystem of `path`.
pub fn quota_on(path: &Path) -> io::Result<bool> {
    let fd = open_dir(path)?;
    let list = quota::qgroup_list(fd.as_fd()).map_err(|e| errno(e as i32))?;
    Ok(list.status_flags.contains(QgroupStatusFlags::ON))
}

/// Turns quota accounting on for the filesystem of `path`, if it is off.
pub fn ensure_quota(path: &Path) -> io::Result<()> {
    if quota_on(path)? {
        return Ok(());
    }
    let fd = open_dir(path)?;
    match quota::quota_enable(fd.as_fd(), false) {
        Ok(()) => Ok(()),
        // Another process turned them on meanwhile.
        Err(e) if quota_on(path).unwrap_or(false) => {
            tracing::debug!(error = %e, "quotas were turned on by another process");
            Ok(())
        }
        Err(e) => Err(errno(e as i32)),
    }
}

/// Limits what the subvolume at `path` may reference to `bytes`.
pub fn limit(path: &Path, bytes: u64) -> io::Result<()> {
    let fd = open_dir(path)?;
    let id = subvolume::subvolume_info(fd.as_fd())
        .map_err(|e| errno(e as i32))?
        .id;
    // A level-0 qgroup's id is its subvolume's.
    quota::qgroup_limit(fd.as_fd(), id, QgroupLimitFlags::MAX_RFER, bytes, 0)
        .map_err(|e| errno(e as i32))
}

/// Deletes the qgroups of subvolumes that are gone.
pub fn clear_stale_qgroups(path: &Path) -> io::Result<usize> {
    if !quota_on(path)? {
        return Ok(0);
    }
    let fd = open_dir(path)?;
    quota::qgroup_clear_stale(fd.as_fd()).map_err(|e| errno(e as i32))
}

/// A subvolume's space, as its qgroup accounts it.
pub struct Usage {
    pub referenced: u64,
    pub exclusive: u64,
    pub limit: Option<u64>,
}

/// What `metadata` says of a layer's subvolume.
pub struct Facts {
    pub id: u64,
    pub generation: u64,
    pub read_only: bool,
    /// `None` where quotas are off.
    pub usage: Option<Usage>,
}

/// The facts of the subvolume at `path`.
pub fn facts(path: &Path) -> io::Result<Facts> {
    let fd = open_dir(path)?;
    let info = subvolume::subvolume_info(fd.as_fd()).map_err(|e| errno(e as i32))?;
    let read_only = kit::is_read_only(&fd)?;
    let usage = match quota::qgroup_list(fd.as_fd()) {
        Ok(list) if list.status_flags.contains(QgroupStatusFlags::ON) => list
            .qgroups
            .into_iter()
            .find(|q| q.qgroupid == info.id)
            .map(|q| Usage {
                referenced: q.rfer,
                exclusive: q.excl,
                limit: q
                    .limit_flags
                    .contains(QgroupLimitFlags::MAX_RFER)
                    .then_some(q.max_rfer),
            }),
        _ => None,
    };
    Ok(Facts {
        id: info.id,
        generation: info.generation,
        read_only,
        usage,
    })
}
