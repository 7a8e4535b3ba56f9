//! Opening the files of an OCI layout as a hostile one may hold them.
//!
//! A layout is someone else's directory. Its blobs, `index.json` and
//! `oci-layout` are opened only if they are regular files inside it: paths
//! resolve beneath the layout's directory (openat2 `RESOLVE_BENEATH`, no
//! magic links), so a symlink may lead elsewhere in the layout but never
//! out of it; and only a regular file is opened for reading, never a FIFO
//! (the open or the read would wait for a writer forever), a device
//! (`/dev/zero` reads without end; some devices act on open) or a socket.
//! A blob is then read no further than its descriptor declares, plus the
//! one byte that tells a longer blob.

use std::fs;
use std::io::{self, Read};
#[cfg(unix)]
use std::os::fd::OwnedFd;
use std::path::Path;

#[cfg(unix)]
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, Stat};
#[cfg(unix)]
use rustix::io::Errno;

#[cfg(unix)]
use super::shown::shown;

#[cfg(unix)]
const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// Why a file of the layout was not opened, said of the file ("is a FIFO").
#[derive(Debug)]
#[cfg_attr(not(unix), allow(dead_code))]
pub enum Refusal {
    Missing,
    /// Not a regular file: what it is instead.
    NotRegular(&'static str),
    /// A symlink whose target leaves the layout (or cannot be resolved
    /// beneath it); the target as shown.
    LinkOut(String),
    /// A symlink to something inside the layout that is not a regular file.
    LinkTo {
        target: String,
        kind: &'static str,
    },
    /// A symlink whose target does not exist.
    Dangling(String),
    /// A directory on its path is a symlink leading out of the layout.
    PathOut,
    /// It was replaced between being checked and being opened.
    Changed,
    Io(io::Error),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => write!(f, "is missing"),
            Refusal::NotRegular(kind) => write!(f, "is {kind}, not a regular file: refused"),
            Refusal::LinkOut(target) => write!(
                f,
                "is a symbolic link to \"{target}\", which leaves the layout: refused"
            ),
            Refusal::LinkTo { target, kind } => write!(
                f,
                "is a symbolic link to \"{target}\", which is {kind}, not a regular file: refused"
            ),
            Refusal::Dangling(target) => write!(
                f,
                "is a symbolic link to \"{target}\", which does not exist"
            ),
            Refusal::PathOut => write!(
                f,
                "is reached through a symbolic link that leaves the layout: refused"
            ),
            Refusal::Changed => write!(f, "was replaced while it was being opened: refused"),
            Refusal::Io(e) => write!(f, "cannot be opened: {e}"),
        }
    }
}

/// What a file is, as an error message says it ("is a FIFO").
#[cfg(unix)]
fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}

/// The layout's directory, held open: every file is found beneath it.
#[cfg(unix)]
pub struct LayoutDir {
    fd: OwnedFd,
}

#[cfg(unix)]
impl LayoutDir {
    /// Opens `dir`, the layout as the user named it (a symlink there is the
    /// user's own choice and is followed).
    pub fn open(dir: &Path) -> io::Result<LayoutDir> {
        let fd = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(LayoutDir { fd })
    }

    /// Resolves `rel` beneath the layout. A rename elsewhere in the layout
    /// while `..` is resolved makes the kernel answer EAGAIN rather than
    /// risk a wrong answer; it is asked again.
    fn resolve(&self, rel: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                &self.fd,
                rel,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                BENEATH,
            ) {
                Err(Errno::AGAIN) if tries < 16 => tries += 1,
                other => return other,
            }
        }
    }

    /// Opens the regular file `rel` (a path inside the layout) for reading
    /// and returns it with its size.
    pub fn open_regular(&self, rel: &str) -> Result<(fs::File, u64), Refusal> {
        // First a handle that opens nothing (O_PATH): a device's driver
        // never sees an open, a FIFO never blocks, and a symlink is the
        // link itself (O_NOFOLLOW).
        let handle = self
            .resolve(rel, OFlags::PATH | OFlags::NOFOLLOW)
            .map_err(path_refusal)?;
        let mut stat = fstat(&handle)?;
        let mut follow = false;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
            let target = rustix::fs::readlinkat(&handle, "", Vec::new())
                .map(|t| shown(&t.to_string_lossy()))
                .unwrap_or_else(|_| "?".to_string());
            // Followed beneath the layout: a target outside it (absolute, or
            // climbing out with ..) is EXDEV; a loop, or a magic link of
            // /proc, ELOOP.
            let target_handle = match self.resolve(rel, OFlags::PATH) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Err(Refusal::Dangling(target)),
                Err(Errno::XDEV | Errno::LOOP) => return Err(Refusal::LinkOut(target)),
                Err(e) => return Err(Refusal::Io(e.into())),
            };
            stat = fstat(&target_handle)?;
            let kind = FileType::from_raw_mode(stat.st_mode);
            if kind != FileType::RegularFile {
                return Err(Refusal::LinkTo {
                    target,
                    kind: kind_name(kind),
                });
            }
            follow = true;
        }
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return Err(Refusal::NotRegular(kind_name(kind)));
        }
        // Now opened for reading, by path again (an O_PATH handle cannot be
        // reopened without /proc). O_NONBLOCK: should it have become a FIFO
        // meanwhile, the open does not wait for a writer; the check below
        // then refuses it.
        let mut flags = OFlags::RDONLY | OFlags::NONBLOCK;
        if !follow {
            flags |= OFlags::NOFOLLOW;
        }
        let fd = self.resolve(rel, flags).map_err(|e| match e {
            Errno::LOOP | Errno::XDEV | Errno::NOENT | Errno::NXIO => Refusal::Changed,
            e => Refusal::Io(e.into()),
        })?;
        let opened = fstat(&fd)?;
        if FileType::from_raw_mode(opened.st_mode) != FileType::RegularFile
            || (opened.st_dev, opened.st_ino) != (stat.st_dev, stat.st_ino)
        {
            return Err(Refusal::Changed);
        }
        Ok((fs::File::from(fd), opened.st_size.max(0) as u64))
    }
}

#[cfg(unix)]
fn fstat(fd: &OwnedFd) -> Result<Stat, Refusal> {
    rustix::fs::fstat(fd).map_err(|e| Refusal::Io(e.into()))
}

/// Why resolving a path in the layout failed, for its last component taken
/// as it is (O_NOFOLLOW).
#[cfg(unix)]
fn path_refusal(e: Errno) -> Refusal {
    match e {
        Errno::NOENT => Refusal::Missing,
        // A directory on the way (blobs/, blobs/sha256/) is a symlink out
        // of the layout, or loops.
        Errno::XDEV | Errno::LOOP => Refusal::PathOut,
        e => Refusal::Io(e.into()),
    }
}

/// The layout's directory on Windows, where openat2 does not exist. No
/// reparse point is followed at all (a symbolic link or junction inside
/// the layout is refused even when it stays inside, which Linux allows):
/// each directory on a file's path is checked not to be one, and the file is
/// opened with `FILE_FLAG_OPEN_REPARSE_POINT`, so a file swapped for a link
/// after the check opens as the link and is refused. A directory on the path
/// swapped for a junction between its check and the open is not caught; the
/// Linux path (openat2 beneath the layout) has no such window.
#[cfg(windows)]
pub struct LayoutDir {
    dir: std::path::PathBuf,
}

#[cfg(windows)]
impl LayoutDir {
    /// Opens `dir`, the layout as the user named it (a link there is the
    /// user's own choice and is followed).
    pub fn open(dir: &Path) -> io::Result<LayoutDir> {
        let dir = dir.canonicalize()?;
        if !fs::metadata(&dir)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(LayoutDir { dir })
    }

    /// Opens the regular file `rel` (a path inside the layout, `/`-separated)
    /// for reading and returns it with its size.
    pub fn open_regular(&self, rel: &str) -> Result<(fs::File, u64), Refusal> {
        use std::os::windows::fs::OpenOptionsExt;
        // FILE_FLAG_OPEN_REPARSE_POINT: open a link itself, never its target.
        const OPEN_REPARSE_POINT: u32 = 0x0020_0000;
        let parts: Vec<&str> = rel.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains(['\\', ':']))
        {
            return Err(Refusal::PathOut);
        }
        let mut path = self.dir.clone();
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Refusal::Missing),
                Err(e) => return Err(Refusal::Io(e)),
            };
            let last = i + 1 == parts.len();
            if meta.file_type().is_symlink() {
                return Err(if last {
                    Refusal::NotRegular("a symbolic link or junction (not followed on Windows)")
                } else {
                    Refusal::PathOut
                });
            }
            if last && !meta.is_file() {
                return Err(Refusal::NotRegular(if meta.is_dir() {
                    "a directory"
                } else {
                    "a file of unknown type"
                }));
            }
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(OPEN_REPARSE_POINT)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Refusal::Changed,
                _ => Refusal::Io(e),
            })?;
        let opened = file.metadata().map_err(Refusal::Io)?;
        if !opened.is_file() || opened.file_type().is_symlink() {
            return Err(Refusal::Changed);
        }
        Ok((file, opened.len()))
    }
}

/// Where a layout's files are: its directory, or the tar of an
/// `oci-archive:` (read in place, never unpacked).
pub enum LayoutRoot {
    /// A layout directory.
    Dir(LayoutDir),
    /// An OCI archive.
    Archive(ArchiveLayout),
}

impl LayoutRoot {
    /// Opens the regular file `rel` (a path inside the layout) for reading,
    /// no further than its size, and returns it with its size.
    pub fn open_regular(&self, rel: &str) -> Result<(Box<dyn Read + Send>, u64), Refusal> {
        match self {
            LayoutRoot::Dir(dir) => dir
                .open_regular(rel)
                .map(|(file, size)| (Box::new(file) as Box<dyn Read + Send>, size)),
            LayoutRoot::Archive(archive) => archive.open_regular(rel),
        }
    }
}

/// The most members an OCI archive may have: its index is kept in memory
/// (about a hundred bytes a member), so a hostile archive of millions of
/// tiny members is refused rather than held.
pub const MAX_ARCHIVE_MEMBERS: usize = 200_000;

/// What an archive member is.
enum ArchiveMember {
    /// A regular file's data: where it starts in the archive, and its size.
    File { offset: u64, size: u64 },
    /// Anything else (a link, a device): what it is.
    Other(&'static str),
    /// A file made from the archive's own (a docker archive's manifest,
    /// index and marker, as a layout has them).
    Bytes(Vec<u8>),
}

/// An OCI archive (`oci-archive:`, a tar of a layout, as skopeo, podman and
/// buildah write one), read in place: one pass over its headers seeks past
/// every member's data and notes where each file's data is; a blob is then
/// read straight from there. Nothing is unpacked, and no data is read
/// twice.
pub struct ArchiveLayout {
    path: std::path::PathBuf,
    members: std::collections::HashMap<String, ArchiveMember>,
}

impl ArchiveLayout {
    /// The member `name`'s bytes, at most `limit` of them (an error beyond).
    pub fn read_member(&self, name: &str, limit: u64) -> Result<Vec<u8>, String> {
        let (reader, size) = self.open_regular(name).map_err(|r| format!("{name} {r}"))?;
        if size > limit {
            return Err(format!(
                "{name} is {size} bytes, more than the {limit} allowed"
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("read {name}: {e}"))?;
        Ok(bytes)
    }

    /// The size of the regular file `name` in the archive.
    pub fn read_member_size(&self, name: &str) -> Result<u64, String> {
        match self.members.get(name) {
            Some(ArchiveMember::File { size, .. }) => Ok(*size),
            Some(ArchiveMember::Bytes(bytes)) => Ok(bytes.len() as u64),
            Some(ArchiveMember::Other(kind)) => Err(format!("{name} is {kind}")),
            None => Err(format!("{name} is missing")),
        }
    }

    /// Names the member `from` also as `to` (a docker archive's config and
    /// layers, under the blob names a layout gives them).
    pub fn alias(&mut self, from: &str, to: String) -> Result<(), String> {
        let member = match self.members.get(from) {
            Some(ArchiveMember::File { offset, size }) => ArchiveMember::File {
                offset: *offset,
                size: *size,
            },
            Some(ArchiveMember::Bytes(bytes)) => ArchiveMember::Bytes(bytes.clone()),
            Some(ArchiveMember::Other(kind)) => return Err(format!("{from} is {kind}")),
            None => return Err(format!("{from} is missing")),
        };
        self.members.insert(to, member);
        Ok(())
    }

    /// Adds a file of the archive's own making under `name`.
    pub fn add(&mut self, name: String, bytes: Vec<u8>) {
        self.members.insert(name, ArchiveMember::Bytes(bytes));
    }

    /// Indexes the archive at `path` (a regular file: a FIFO or device is
    /// refused before it is opened, as in a layout).
    pub fn open(path: &Path) -> io::Result<ArchiveLayout> {
        let meta = fs::metadata(path)?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (an OCI archive is a tar file)",
            ));
        }
        let mut archive = tar::Archive::new(fs::File::open(path)?);
        let mut members = std::collections::HashMap::new();
        let not_a_tar = |e: io::Error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a tar archive (an OCI archive is an uncompressed tar): {e}"),
            )
        };
        for entry in archive.entries_with_seek().map_err(not_a_tar)? {
            let entry = entry.map_err(not_a_tar)?;
            if members.len() >= MAX_ARCHIVE_MEMBERS {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_ARCHIVE_MEMBERS} members: refused"),
                ));
            }
            let Ok(name) = std::str::from_utf8(&entry.path_bytes()).map(str::to_string) else {
                continue; // no layout file has such a name
            };
            let name = name
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => ArchiveMember::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Directory => continue,
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    ArchiveMember::Other("a link (an archive's files are read as they are)")
                }
                _ => ArchiveMember::Other("a member that is not a regular file"),
            };
            // As when unpacking: a later member of the same name wins.
            members.insert(name, member);
        }
        Ok(ArchiveLayout {
            path: path.to_path_buf(),
            members,
        })
    }

    fn open_regular(&self, rel: &str) -> Result<(Box<dyn Read + Send>, u64), Refusal> {
        match self.members.get(rel) {
            None => Err(Refusal::Missing),
            Some(ArchiveMember::Other(kind)) => Err(Refusal::NotRegular(kind)),
            Some(ArchiveMember::Bytes(bytes)) => {
                Ok((Box::new(io::Cursor::new(bytes.clone())), bytes.len() as u64))
            }
            Some(ArchiveMember::File { offset, size }) => {
                use std::io::Seek;
                let mut file = fs::File::open(&self.path).map_err(Refusal::Io)?;
                file.seek(io::SeekFrom::Start(*offset))
                    .map_err(Refusal::Io)?;
                Ok((Box::new(file.take(*size)), *size))
            }
        }
    }
}

/// Why a blob read stopped short of what its descriptor declares.
#[derive(Clone, Copy, Debug)]
pub enum SizeFault {
    /// More bytes followed the declared size.
    Longer,
    /// The blob ended after this many bytes.
    Shorter(u64),
}

/// A blob read as its descriptor declares it: at most `declared` bytes are
/// given out, and at most one more is read, to tell a longer blob. A blob
/// that is longer or shorter makes `read` fail and is remembered in
/// `fault`, so that whoever reads it (the layer applier, which words read
/// errors its own way) can be overruled by the real cause.
pub struct BlobReader {
    file: Box<dyn Read + Send>,
    declared: u64,
    delivered: u64,
    fault: Option<SizeFault>,
}

impl BlobReader {
    /// Reads `file`, a blob whose descriptor declares `declared` bytes.
    pub fn new(file: Box<dyn Read + Send>, declared: u64) -> BlobReader {
        BlobReader {
            file,
            declared,
            delivered: 0,
            fault: None,
        }
    }

    /// Why reading failed, if it was the blob's size.
    pub fn fault(&self) -> Option<SizeFault> {
        self.fault
    }

    fn failed(&mut self, fault: SizeFault) -> io::Error {
        self.fault = Some(fault);
        let text = match fault {
            SizeFault::Longer => format!(
                "the blob is longer than its declared {} bytes",
                self.declared
            ),
            SizeFault::Shorter(n) => format!(
                "the blob ends after {n} bytes; its descriptor declares {}",
                self.declared
            ),
        };
        io::Error::new(io::ErrorKind::InvalidData, text)
    }

    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(fault) = self.fault {
            return Err(self.failed(fault));
        }
        let left = self.declared - self.delivered;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.read_some(&mut buf[..want])?;
        if n == 0 {
            return Err(self.failed(SizeFault::Shorter(self.delivered)));
        }
        self.delivered += n as u64;
        if self.delivered == self.declared {
            // The last declared byte is given out only once the blob is
            // known to end there: a reader that stops at the declared size
            // (it need not read to the end) cannot miss a longer blob.
            let mut probe = [0u8; 1];
            if self.read_some(&mut probe)? != 0 {
                return Err(self.failed(SizeFault::Longer));
            }
        }
        Ok(n)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn layout() -> (tempfile::TempDir, LayoutDir) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        let opened = LayoutDir::open(dir.path()).unwrap();
        (dir, opened)
    }

    #[test]
    fn regular_files_and_links_inside_the_layout_open() {
        let (dir, layout) = layout();
        fs::write(dir.path().join("blobs/sha256/a"), b"abc").unwrap();
        symlink("a", dir.path().join("blobs/sha256/b")).unwrap();
        symlink("../../blobs/sha256/a", dir.path().join("blobs/sha256/c")).unwrap();
        for name in ["a", "b", "c"] {
            let (mut file, size) = layout
                .open_regular(&format!("blobs/sha256/{name}"))
                .unwrap();
            let mut text = String::new();
            file.read_to_string(&mut text).unwrap();
            assert_eq!((text.as_str(), size), ("abc", 3));
        }
    }

    #[test]
    fn everything_else_is_refused_and_named() {
        let (dir, layout) = layout();
        let blobs = dir.path().join("blobs/sha256");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            blobs.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        fs::create_dir(blobs.join("dir")).unwrap();
        symlink("/dev/zero", blobs.join("zero")).unwrap();
        symlink("../../../outside", blobs.join("out")).unwrap();
        symlink("fifo", blobs.join("to-fifo")).unwrap();
        symlink("nothing", blobs.join("dangling")).unwrap();
        let refusal = |name: &str| {
            layout
                .open_regular(&format!("blobs/sha256/{name}"))
                .unwrap_err()
                .to_string()
        };
        assert!(refusal("fifo").contains("FIFO"));
        assert!(refusal("dir").contains("a directory"));
        assert!(refusal("zero").contains("\"/dev/zero\", which leaves the layout"));
        assert!(refusal("out").contains("leaves the layout"));
        assert!(refusal("to-fifo").contains("which is a FIFO"));
        assert!(refusal("dangling").contains("does not exist"));
        assert_eq!(refusal("none"), "is missing");
        // A directory on the path that leads out.
        fs::remove_dir_all(dir.path().join("blobs")).unwrap();
        symlink("/", dir.path().join("blobs")).unwrap();
        assert!(refusal("x").contains("leaves the layout"));
    }

    #[test]
    fn blobs_are_read_to_their_declared_size_and_no_further() {
        let (dir, layout) = layout();
        let path = dir.path().join("blobs/sha256/a");
        fs::write(&path, b"0123456789").unwrap();
        let reader = |declared| {
            BlobReader::new(
                Box::new(layout.open_regular("blobs/sha256/a").unwrap().0),
                declared,
            )
        };
        let mut exact = Vec::new();
        reader(10).read_to_end(&mut exact).unwrap();
        assert_eq!(exact, b"0123456789");
        let mut long = reader(4);
        let mut buf = [0u8; 64];
        assert!(long.read(&mut buf).is_err());
        assert!(matches!(long.fault(), Some(SizeFault::Longer)));
        let mut short = reader(20);
        assert!(short.read_to_end(&mut Vec::new()).is_err());
        assert!(matches!(short.fault(), Some(SizeFault::Shorter(10))));
    }
}

/// What both platforms' openers must do alike.
#[cfg(test)]
mod portable_tests {
    use super::*;

    #[test]
    fn regular_files_open_and_everything_else_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::write(dir.path().join("blobs/sha256/aa"), b"hello").unwrap();
        let layout = LayoutDir::open(dir.path()).unwrap();
        let (mut file, size) = layout.open_regular("blobs/sha256/aa").unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!((text.as_str(), size), ("hello", 5));
        assert!(matches!(
            layout.open_regular("blobs/sha256/bb"),
            Err(Refusal::Missing)
        ));
        assert!(matches!(
            layout.open_regular("blobs/sha256"),
            Err(Refusal::NotRegular("a directory"))
        ));
        // The layout's own parent directory exists for sure.
        let parent = dir.path().parent().unwrap().file_name().unwrap();
        let climbing = format!("../../{}", parent.to_str().unwrap());
        assert!(
            matches!(layout.open_regular(&climbing), Err(Refusal::PathOut)),
            "a path climbing out of the layout was not refused as such"
        );
    }
}
