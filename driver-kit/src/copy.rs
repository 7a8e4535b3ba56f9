//! Copying a directory tree with everything a container image relies on:
//! modes (setuid, setgid, sticky), owners, nanosecond times, xattrs
//! (`security.capability` included), hard links kept as links, symlinks,
//! device nodes, fifos, sockets and sparse files.
//!
//! File data is cloned with FICLONE where the filesystem shares extents
//! (btrfs, xfs), else copied in the kernel with copy_file_range, so it never
//! passes through this process.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::xattr::{read_xattr_list, read_xattr_value};
use rustix::fs::{
    AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, SeekFrom, Stat, Timespec, Timestamps, Uid,
    XattrFlags,
};

/// How file data is duplicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataCopy {
    /// Share extents (FICLONE); fail where the filesystem cannot.
    Reflink,
    /// Copy bytes in the kernel (copy_file_range), falling back to read/write.
    Full,
}

/// How [`copy_tree`] copies.
#[derive(Clone, Copy, Debug)]
pub struct CopyOptions {
    /// How regular files' data is duplicated.
    pub data: DataCopy,
    /// Owners that cannot be set (rootless, no mapping) are left as they come
    /// out instead of failing the copy.
    pub ignore_chown_errors: bool,
}

/// A failed step: what was being done to which path.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {}: {source}", path.display())]
pub struct CopyError {
    /// The step that failed, as a verb phrase ("create directory", "set
    /// times of"), shown before the path.
    pub operation: &'static str,
    /// The source or destination path the step was working on.
    pub path: PathBuf,
    /// The system's error; its errno is kept.
    #[source]
    pub source: io::Error,
}

/// What [`copy_tree`] copied, by kind, for a driver's logs and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Directories made, the top one included.
    pub directories: u64,
    /// Regular files whose data was copied (each inode once).
    pub files: u64,
    /// Further names of an already copied file, made as hard links.
    pub hard_links: u64,
    /// Symbolic links recreated.
    pub symlinks: u64,
    /// Device nodes, fifos and sockets recreated.
    pub special_files: u64,
    /// The apparent size of the files copied (holes of sparse files
    /// included), not the blocks written.
    pub bytes: u64,
}

/// Copies the tree at `src` to `dst`, which must not exist yet.
pub fn copy_tree(src: &Path, dst: &Path, options: CopyOptions) -> Result<CopyStats, CopyError> {
    let err = |operation, path: &Path| {
        let path = path.to_path_buf();
        move |source: rustix::io::Errno| CopyError {
            operation,
            path,
            source: source.into(),
        }
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let src_fd =
        rustix::fs::openat(CWD, src, dir_flags, Mode::empty()).map_err(err("open", src))?;
    let src_stat = rustix::fs::fstat(&src_fd).map_err(err("stat", src))?;
    rustix::fs::mkdirat(CWD, dst, Mode::from_raw_mode(0o700))
        .map_err(err("create directory", dst))?;
    let dst_fd =
        rustix::fs::openat(CWD, dst, dir_flags, Mode::empty()).map_err(err("open", dst))?;

    let mut copier = TreeCopier {
        options,
        dst_root: dst_fd.try_clone().map_err(|e| CopyError {
            operation: "duplicate descriptor of",
            path: dst.to_path_buf(),
            source: e,
        })?,
        links: HashMap::new(),
        names: Vec::with_capacity(4096),
        value: Vec::with_capacity(4096),
        stats: CopyStats::default(),
    };
    let mut rel = PathBuf::new();
    copier.copy_dir_contents(&src_fd, &dst_fd, src, dst, &mut rel)?;
    copier.apply_dir_metadata(&src_fd, &dst_fd, &src_stat, src, dst)?;
    copier.stats.directories += 1;
    Ok(copier.stats)
}

struct TreeCopier {
    options: CopyOptions,
    dst_root: OwnedFd,
    /// (device, inode) of a multiply-linked source file -> its copy, relative to
    /// the destination root, so later names become links to the same copy.
    links: HashMap<(u64, u64), PathBuf>,
    names: Vec<u8>,
    value: Vec<u8>,
    stats: CopyStats,
}

fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

fn permission_bits(stat: &Stat) -> Mode {
    Mode::from_raw_mode(stat.st_mode & 0o7777)
}

fn timestamps(stat: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: stat.st_atime as _,
            tv_nsec: stat.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: stat.st_mtime as _,
            tv_nsec: stat.st_mtime_nsec as _,
        },
    }
}

impl TreeCopier {
    fn copy_dir_contents(
        &mut self,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        src_path: &Path,
        dst_path: &Path,
        rel: &mut PathBuf,
    ) -> Result<(), CopyError> {
        let mut entries = Dir::read_from(src_dir).map_err(|e| CopyError {
            operation: "read directory",
            path: src_path.to_path_buf(),
            source: e.into(),
        })?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|e| CopyError {
                operation: "read directory",
                path: src_path.to_path_buf(),
                source: e.into(),
            })?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let name = name.to_owned();
            let os_name = OsStr::from_bytes(name.to_bytes());
            rel.push(os_name);
            let result = self.copy_entry(src_dir, dst_dir, &name, src_path, dst_path, rel);
            rel.pop();
            result?;
        }
        Ok(())
    }

    fn copy_entry(
        &mut self,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        name: &CStr,
        src_parent: &Path,
        dst_parent: &Path,
        rel: &Path,
    ) -> Result<(), CopyError> {
        let os_name = OsStr::from_bytes(name.to_bytes());
        let src_path = src_parent.join(os_name);
        let dst_path = dst_parent.join(os_name);
        let fail = |operation: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |e: rustix::io::Errno| CopyError {
                operation,
                path,
                source: e.into(),
            }
        };
        let stat = rustix::fs::statat(src_dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(fail("stat", &src_path))?;

        match file_type(&stat) {
            FileType::Directory => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let src_fd = rustix::fs::openat(src_dir, name, flags, Mode::empty())
                    .map_err(fail("open", &src_path))?;
                // Owner-only until the contents are in, then the real mode: a
                // read-only source directory must still be writable while filling.
                rustix::fs::mkdirat(dst_dir, name, Mode::from_raw_mode(0o700))
                    .map_err(fail("create directory", &dst_path))?;
                let dst_fd = rustix::fs::openat(dst_dir, name, flags, Mode::empty())
                    .map_err(fail("open", &dst_path))?;
                let mut rel = rel.to_path_buf();
                self.copy_dir_contents(&src_fd, &dst_fd, &src_path, &dst_path, &mut rel)?;
                self.apply_dir_metadata(&src_fd, &dst_fd, &stat, &src_path, &dst_path)?;
                self.stats.directories += 1;
            }
            FileType::RegularFile => {
                if stat.st_nlink > 1 {
                    if let Some(first) = self.links.get(&(stat.st_dev, stat.st_ino)) {
                        rustix::fs::linkat(&self.dst_root, first, dst_dir, name, AtFlags::empty())
                            .map_err(fail("link", &dst_path))?;
                        self.stats.hard_links += 1;
                        return Ok(());
                    }
                    self.links
                        .insert((stat.st_dev, stat.st_ino), rel.to_path_buf());
                }
                self.copy_file(src_dir, dst_dir, name, &stat, &src_path, &dst_path)?;
                self.stats.files += 1;
                self.stats.bytes += stat.st_size as u64;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src_dir, name, Vec::new())
                    .map_err(fail("read link", &src_path))?;
                rustix::fs::symlinkat(target.as_c_str(), dst_dir, name)
                    .map_err(fail("create symlink", &dst_path))?;
                self.chown_at(dst_dir, name, &stat, &dst_path)?;
                self.copy_xattrs_by_path(&src_path, &dst_path)?;
                rustix::fs::utimensat(dst_dir, name, &timestamps(&stat), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(fail("set times of", &dst_path))?;
                self.stats.symlinks += 1;
            }
            kind @ (FileType::CharacterDevice
            | FileType::BlockDevice
            | FileType::Fifo
            | FileType::Socket) => {
                rustix::fs::mknodat(
                    dst_dir,
                    name,
                    kind,
                    Mode::from_raw_mode(0o600),
                    stat.st_rdev,
                )
                .map_err(fail("create node", &dst_path))?;
                self.chown_at(dst_dir, name, &stat, &dst_path)?;
                rustix::fs::chmodat(dst_dir, name, permission_bits(&stat), AtFlags::empty())
                    .map_err(fail("set mode of", &dst_path))?;
                self.copy_xattrs_by_path(&src_path, &dst_path)?;
                rustix::fs::utimensat(dst_dir, name, &timestamps(&stat), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(fail("set times of", &dst_path))?;
                self.stats.special_files += 1;
            }
            FileType::Unknown => {
                return Err(CopyError {
                    operation: "copy",
                    path: src_path,
                    source: io::Error::new(io::ErrorKind::Unsupported, "unknown file type"),
                });
            }
        }
        Ok(())
    }

    fn copy_file(
        &mut self,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        name: &CStr,
        stat: &Stat,
        src_path: &Path,
        dst_path: &Path,
    ) -> Result<(), CopyError> {
        let fail = |operation: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |e: io::Error| CopyError {
                operation,
                path,
                source: e,
            }
        };
        let src = rustix::fs::openat(
            src_dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail("open", src_path)(e.into()))?;
        let dst = rustix::fs::openat(
            dst_dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| fail("create", dst_path)(e.into()))?;
        if stat.st_size > 0 {
            copy_data(&src, &dst, stat, self.options.data)
                .map_err(fail("copy data to", dst_path))?;
        }
        // Owner first: chown clears setuid/setgid and security.capability, so
        // the mode and the xattrs go on after it.
        if let Err(e) = rustix::fs::fchown(
            &dst,
            Some(Uid::from_raw(stat.st_uid)),
            Some(Gid::from_raw(stat.st_gid)),
        ) && !self.options.ignore_chown_errors
        {
            return Err(fail("set owner of", dst_path)(e.into()));
        }
        rustix::fs::fchmod(&dst, permission_bits(stat))
            .map_err(|e| fail("set mode of", dst_path)(e.into()))?;
        self.copy_xattrs_fd(&src, &dst, src_path, dst_path)?;
        rustix::fs::futimens(&dst, &timestamps(stat))
            .map_err(|e| fail("set times of", dst_path)(e.into()))?;
        Ok(())
    }

    fn apply_dir_metadata(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        stat: &Stat,
        src_path: &Path,
        dst_path: &Path,
    ) -> Result<(), CopyError> {
        let fail = |operation: &'static str| {
            let path = dst_path.to_path_buf();
            move |e: rustix::io::Errno| CopyError {
                operation,
                path,
                source: e.into(),
            }
        };
        if let Err(e) = rustix::fs::fchown(
            dst,
            Some(Uid::from_raw(stat.st_uid)),
            Some(Gid::from_raw(stat.st_gid)),
        ) && !self.options.ignore_chown_errors
        {
            return Err(fail("set owner of")(e));
        }
        rustix::fs::fchmod(dst, permission_bits(stat)).map_err(fail("set mode of"))?;
        self.copy_xattrs_fd(src, dst, src_path, dst_path)?;
        // Last, after every entry went in, or creating them would move the time.
        rustix::fs::futimens(dst, &timestamps(stat)).map_err(fail("set times of"))?;
        Ok(())
    }

    fn chown_at(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        stat: &Stat,
        path: &Path,
    ) -> Result<(), CopyError> {
        match rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(stat.st_uid)),
            Some(Gid::from_raw(stat.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Err(e) if !self.options.ignore_chown_errors => Err(CopyError {
                operation: "set owner of",
                path: path.to_path_buf(),
                source: e.into(),
            }),
            _ => Ok(()),
        }
    }

    fn copy_xattrs_fd(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        src_path: &Path,
        dst_path: &Path,
    ) -> Result<(), CopyError> {
        let len = read_xattr_list(&mut self.names, |buf| rustix::fs::flistxattr(src, buf))
            .map_err(|e| xattr_error("list xattrs of", src_path, e))?;
        for name in self.names[..len]
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
        {
            let value =
                read_xattr_value(&mut self.value, |buf| rustix::fs::fgetxattr(src, name, buf))
                    .map_err(|e| xattr_error("read xattr of", src_path, e))?;
            rustix::fs::fsetxattr(dst, name, value, XattrFlags::empty())
                .map_err(|e| xattr_error("set xattr of", dst_path, e))?;
        }
        Ok(())
    }

    fn copy_xattrs_by_path(&mut self, src_path: &Path, dst_path: &Path) -> Result<(), CopyError> {
        let len = read_xattr_list(&mut self.names, |buf| rustix::fs::llistxattr(src_path, buf))
            .map_err(|e| xattr_error("list xattrs of", src_path, e))?;
        for name in self.names[..len]
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
        {
            let value = read_xattr_value(&mut self.value, |buf| {
                rustix::fs::lgetxattr(src_path, name, buf)
            })
            .map_err(|e| xattr_error("read xattr of", src_path, e))?;
            rustix::fs::lsetxattr(dst_path, name, value, XattrFlags::empty())
                .map_err(|e| xattr_error("set xattr of", dst_path, e))?;
        }
        Ok(())
    }
}

fn xattr_error(operation: &'static str, path: &Path, e: rustix::io::Errno) -> CopyError {
    CopyError {
        operation,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Duplicates the data of `src` into the empty `dst`.
fn copy_data(src: &OwnedFd, dst: &OwnedFd, stat: &Stat, how: DataCopy) -> io::Result<()> {
    let size = stat.st_size as u64;
    if how == DataCopy::Reflink {
        return rustix::fs::ioctl_ficlone(dst, src).map_err(Into::into);
    }
    // Fewer allocated blocks than the size says: there are holes to keep.
    let looks_sparse = (stat.st_blocks as u64) * 512 < size;
    if looks_sparse {
        copy_data_regions(src, dst, size)
    } else {
        // The whole file is read once, front to back: a bigger readahead window
        // helps when it is not cached. Advice only; failure changes nothing.
        let _ = rustix::fs::fadvise(src, 0, None, rustix::fs::Advice::Sequential);
        copy_range(src, dst, 0, size)
    }
}

/// Copies `[offset, end)` of `src` to the same place in `dst`, in the kernel when
/// it can.
fn copy_range(src: &OwnedFd, dst: &OwnedFd, offset: u64, end: u64) -> io::Result<()> {
    let mut in_off = offset;
    let mut out_off = offset;
    while in_off < end {
        let want = (end - in_off).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut in_off), dst, Some(&mut out_off), want) {
            Ok(0) => break, // the file shrank under us; copy what there is
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL,
            ) => return copy_range_by_reading(src, dst, in_off, end),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_range_by_reading(
    src: &OwnedFd,
    dst: &OwnedFd,
    mut offset: u64,
    end: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; 128 * 1024];
    while offset < end {
        let want = ((end - offset) as usize).min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], offset)?;
        if n == 0 {
            break;
        }
        let mut written = 0;
        while written < n {
            written += rustix::io::pwrite(dst, &buf[written..n], offset + written as u64)?;
        }
        offset += n as u64;
    }
    Ok(())
}

/// Copies only the data regions (SEEK_DATA/SEEK_HOLE) and sets the size, so
/// holes stay holes.
fn copy_data_regions(src: &OwnedFd, dst: &OwnedFd, size: u64) -> io::Result<()> {
    let mut pos = 0;
    while pos < size {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(off) => off,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                return copy_range(src, dst, 0, size);
            }
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data))?.min(size);
        copy_range(src, dst, data, hole)?;
        pos = hole;
    }
    rustix::fs::ftruncate(dst, size)?;
    Ok(())
}

/// Whether FICLONE works between two files in `dir`; asked once per driver.
pub fn reflink_works_in(dir: &Path) -> bool {
    let probe = || -> io::Result<()> {
        let a = tempfile_in(dir)?;
        rustix::io::write(&a, b"strata reflink probe")?;
        let b = tempfile_in(dir)?;
        rustix::fs::ioctl_ficlone(&b, &a)?;
        Ok(())
    };
    probe().is_ok()
}

/// An unnamed file in `dir` (O_TMPFILE), gone when closed.
fn tempfile_in(dir: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::fs::openat(
        CWD,
        dir,
        OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(fd)
}
