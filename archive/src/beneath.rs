//! File operations confined to a root directory.
//!
//! Every path an archive names is resolved with openat2(RESOLVE_IN_ROOT): `..`
//! stops at the root and symlinks resolve as if the root were `/`, the way
//! they will inside the container. The final component is then operated on
//! with *at calls that never follow it. Nothing here checks path strings for
//! safety; the kernel does the confining.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Turns an archive member name into a path relative to the root: leading `/`
/// and `./` are dropped and `.`/`..` folded. A name that climbs above the root
/// is refused. The empty path means the root itself.
pub fn normalize(name: &[u8]) -> Result<PathBuf, &'static str> {
    if name.contains(&0) {
        return Err("the name contains a NUL byte");
    }
    let mut parts: Vec<&OsStr> = Vec::new();
    for component in Path::new(OsStr::from_bytes(name)).components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err("the name climbs above the layer's root with '..'");
                }
            }
            Component::Normal(part) => parts.push(part),
        }
    }
    Ok(parts.iter().collect())
}

/// An open root directory under which everything happens.
pub struct Root {
    fd: OwnedFd,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

impl Root {
    /// Opens the directory at `path` as the root everything else resolves
    /// in (an O_PATH handle; symlinks in `path` itself are followed).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    /// The root's own O_PATH handle, for *at calls on entries directly in
    /// it.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Opens directory `rel` (resolved in the root) as an O_PATH handle.
    pub fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return self.fd.try_clone();
        }
        Ok(rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        )?)
    }

    /// Opens directory `rel`, creating what is missing of it (mode 0755), and
    /// calls `created` with each directory it made.
    pub fn dir_creating(&self, rel: &Path, mut created: impl FnMut(&Path)) -> io::Result<OwnedFd> {
        match self.dir(rel) {
            Err(e) if e.raw_os_error() == Some(libc_enoent()) => {}
            other => return other,
        }
        let mut current = self.fd.try_clone()?;
        let mut so_far = PathBuf::new();
        for part in rel.components() {
            let Component::Normal(part) = part else {
                continue;
            };
            so_far.push(part);
            let name = cstr(part)?;
            current = match self.dir(&so_far) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc_enoent()) => {
                    match rustix::fs::mkdirat(&current, name.as_c_str(), Mode::from_raw_mode(0o755))
                    {
                        Ok(()) => created(&so_far),
                        Err(rustix::io::Errno::EXIST) => {
                            // Something is there that does not resolve: a
                            // symlink to a directory that does not exist.
                            return Err(io::Error::new(
                                io::ErrorKind::NotFound,
                                format!(
                                    // Debug: the path is the stream's, escaped.
                                    "{so_far:?} is a symlink to a directory that does not exist"
                                ),
                            ));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    self.dir(&so_far)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(current)
    }

    /// Opens an existing file or directory for reading, resolved in the root,
    /// not following a final symlink.
    pub fn open_read(&self, rel: &Path) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        )?)
    }
}

/// Splits `rel` into its parent and final name; the root itself has none.
pub fn split(rel: &Path) -> Option<(&Path, &OsStr)> {
    Some((rel.parent()?, rel.file_name()?))
}

/// `name` as a C string for an *at call; a name holding a NUL byte is an
/// `InvalidInput` error.
pub fn name_cstr(name: &OsStr) -> io::Result<CString> {
    cstr(name)
}

/// Removes `name` in `dir`, a whole tree if it is a directory, never
/// following symlinks. Missing is fine.
pub fn remove_all_at(dir: &impl AsFd, name: &CStr) -> io::Result<()> {
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory {
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        remove_children(&sub, |_| true)?;
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}

/// Removes the children of the open directory `dir` for which `keep_not`
/// answers true (given the child's name).
pub fn remove_children(dir: &OwnedFd, mut remove: impl FnMut(&CStr) -> bool) -> io::Result<()> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." && remove(name) {
            names.push(name.to_owned());
        }
    }
    for name in names {
        remove_all_at(dir, &name)?;
    }
    Ok(())
}

/// A path naming `name` in the directory `dir` through /proc, for the calls
/// that only take paths (l*xattr on symlinks and device nodes). The directory
/// part is the already-confined handle; the final component is not followed
/// by the l* calls.
pub fn proc_path(dir: &impl AsRawFd, name: &OsStr) -> PathBuf {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(name);
    path
}

const fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_folded_and_climbing_out_is_refused() {
        let ok = |n: &str| normalize(n.as_bytes()).unwrap();
        assert_eq!(ok("./etc/passwd"), PathBuf::from("etc/passwd"));
        assert_eq!(ok("/etc/passwd"), PathBuf::from("etc/passwd"));
        assert_eq!(ok("a/./b/../c/"), PathBuf::from("a/c"));
        assert_eq!(ok("./"), PathBuf::new());
        assert!(normalize(b"../etc").is_err());
        assert!(normalize(b"a/../../etc").is_err());
        assert!(normalize(b"a\0b").is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("dots")).unwrap();
        let r = Root::open(&root).unwrap();
        // Both resolve to the root itself, not to the host's /.
        let via_abs = r.dir_creating(Path::new("up/made"), |_| {}).unwrap();
        drop(via_abs);
        assert!(root.join("made").is_dir());
        r.dir_creating(Path::new("dots/also"), |_| {}).unwrap();
        assert!(root.join("also").is_dir());
        assert!(!Path::new("/made").exists() && !Path::new("/also").exists());
    }
}
