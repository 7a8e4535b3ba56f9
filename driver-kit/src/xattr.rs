//! Extended attributes: names and values read with buffers that grow (a
//! fixed buffer silently truncates or fails on a large ACL or a long list),
//! and copying a directory's own metadata.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, XattrFlags};

/// Reads an xattr name list into `buf`, growing it on ERANGE, and returns its
/// length. A filesystem without xattrs gives an empty list.
pub fn read_xattr_list(
    buf: &mut Vec<u8>,
    mut read: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<usize> {
    loop {
        buf.resize(buf.capacity().max(4096), 0);
        match read(buf) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(0),
            Err(rustix::io::Errno::RANGE) => buf.reserve(buf.len() * 2),
            Err(e) => return Err(e),
        }
    }
}

/// Reads one xattr value into `buf`, growing it on ERANGE.
pub fn read_xattr_value(
    buf: &mut Vec<u8>,
    mut read: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<&[u8]> {
    loop {
        buf.resize(buf.capacity().max(4096), 0);
        match read(buf) {
            Ok(n) => return Ok(&buf[..n]),
            Err(rustix::io::Errno::RANGE) => buf.reserve(buf.len() * 2),
            Err(e) => return Err(e),
        }
    }
}

/// Every xattr of `path` (not following a final symlink), name and value.
pub fn list(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = Vec::new();
    let len = read_xattr_list(&mut names, |buf| rustix::fs::llistxattr(path, buf))?;
    let mut value = Vec::new();
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        match read_xattr_value(&mut value, |buf| rustix::fs::lgetxattr(path, name, buf)) {
            Ok(v) => out.push((name.to_vec(), v.to_vec())),
            // Removed between the list and the read.
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Gives the directory `to` the mode, owner, times and xattrs of `from`,
/// except xattrs for which `skip` answers true (a driver's own bookkeeping,
/// such as `trusted.overlay.*`). How a child layer's root starts as its
/// parent's root where the driver does not copy the tree.
pub fn copy_root_metadata(from: &Path, to: &Path, skip: impl Fn(&[u8]) -> bool) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))?;
    // After chown, which clears setuid/setgid.
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    for (name, value) in list(from)? {
        if !skip(&name) {
            rustix::fs::lsetxattr(to, name.as_slice(), &value, XattrFlags::empty())?;
        }
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(CWD, to, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow_until_the_answer_fits() {
        // As the kernel does: ERANGE while the buffer is too small.
        let answer = vec![b'n'; 10_000];
        let fill = |buf: &mut [u8]| {
            if buf.len() < answer.len() {
                Err(rustix::io::Errno::RANGE)
            } else {
                buf[..answer.len()].copy_from_slice(&answer);
                Ok(answer.len())
            }
        };
        let mut names = Vec::new();
        assert_eq!(read_xattr_list(&mut names, fill).unwrap(), answer.len());
        assert_eq!(&names[..answer.len()], &answer[..]);
        let mut value = Vec::new();
        assert_eq!(read_xattr_value(&mut value, fill).unwrap(), &answer[..]);
        let mut none = Vec::new();
        assert_eq!(
            read_xattr_list(&mut none, |_| Err(rustix::io::Errno::OPNOTSUPP)).unwrap(),
            0,
            "a filesystem without xattrs has an empty list"
        );
    }

    #[test]
    fn root_metadata_is_copied_and_skipped_names_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        std::fs::create_dir(&from).unwrap();
        std::fs::create_dir(&to).unwrap();
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o1710)).unwrap();
        rustix::fs::setxattr(&from, "user.keep", b"1", XattrFlags::empty()).unwrap();
        rustix::fs::setxattr(&from, "user.skip", b"2", XattrFlags::empty()).unwrap();
        copy_root_metadata(&from, &to, |name| name == b"user.skip").unwrap();
        let meta = std::fs::metadata(&to).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o1710);
        let names: Vec<Vec<u8>> = list(&to).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec![b"user.keep".to_vec()]);
        assert_eq!(
            meta.mtime(),
            std::fs::metadata(&from).unwrap().mtime(),
            "times copied"
        );
    }
}
