//! Building tar streams byte by byte, so tests can make the malformed and
//! hostile members no well-behaved tar writer would.

/// A tar stream under construction.
#[derive(Default)]
pub struct RawTar {
    /// The blocks written so far; a test may append or patch bytes directly
    /// to make what the helpers will not.
    pub bytes: Vec<u8>,
}

/// Typeflag of a regular file member, for [`RawTar::header`].
pub const REGULAR: u8 = b'0';
/// Typeflag of a hard link; the link field names the earlier member.
pub const HARD_LINK: u8 = b'1';
/// Typeflag of a symbolic link; the link field is its target.
pub const SYMLINK: u8 = b'2';
/// Typeflag of a character device; [`RawTar::header`] leaves major and
/// minor empty, which reads as 0:0.
pub const CHAR_DEVICE: u8 = b'3';
/// Typeflag of a directory, as [`RawTar::dir`] writes it.
pub const DIRECTORY: u8 = b'5';
/// Typeflag of a fifo (named pipe); like a device, it has no data.
pub const FIFO: u8 = b'6';
/// Typeflag of a PAX extended header, whose records apply to the next
/// member.
pub const PAX: u8 = b'x';
/// Typeflag of a GNU long-name header, whose data is the next member's
/// name.
pub const GNU_LONGNAME: u8 = b'L';
/// Typeflag of a GNU long-link header, whose data is the next member's link
/// target.
pub const GNU_LONGLINK: u8 = b'K';
/// Typeflag of an old GNU sparse file member.
pub const GNU_SPARSE: u8 = b'S';

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    field[..width].copy_from_slice(&text.as_bytes()[text.len() - width..]);
    field[width] = 0;
}

impl RawTar {
    /// An empty stream.
    pub fn new() -> Self {
        RawTar::default()
    }

    /// A header block; `name` and `link` are cut to 100 bytes.
    pub fn header(
        &mut self,
        name: &[u8],
        kind: u8,
        link: &[u8],
        size: u64,
        mode: u32,
    ) -> &mut Self {
        let mut h = [0u8; 512];
        h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        octal(&mut h[100..108], mode as u64);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 1_600_000_000);
        h[156] = kind;
        h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        self.bytes.extend_from_slice(&h);
        self
    }

    /// Data after a header, padded to a block.
    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// A regular file member (mode 0644) holding `data`.
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.header(name.as_bytes(), REGULAR, b"", data.len() as u64, 0o644)
            .data(data)
    }

    /// A directory member, mode 0755.
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.header(name.as_bytes(), DIRECTORY, b"", 0, 0o755)
    }

    /// A symlink member pointing at `target`, taken as it is (absolute and
    /// `..` targets included).
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(name.as_bytes(), SYMLINK, target.as_bytes(), 0, 0o777)
    }

    /// A hard-link member naming `target`, which need not exist: tests
    /// use that for links to nothing or outside the layer.
    pub fn hard_link(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(name.as_bytes(), HARD_LINK, target.as_bytes(), 0, 0o644)
    }

    /// A PAX extended header with these records, for the next member.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (key, value) in records {
            let rest = key.len() + value.len() + 3; // ' ' '=' '\n'
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        self.header(b"PaxHeaders/x", PAX, b"", body.len() as u64, 0o644)
            .data(&body)
    }

    /// A GNU long-name header naming the next member.
    pub fn gnu_long_name(&mut self, name: &[u8]) -> &mut Self {
        let mut body = name.to_vec();
        body.push(0);
        self.header(
            b"././@LongLink",
            GNU_LONGNAME,
            b"",
            body.len() as u64,
            0o644,
        )
        .data(&body)
    }

    /// A PAX extended header setting these xattrs (`SCHILY.xattr.` records),
    /// for the next member.
    pub fn xattrs(&mut self, xattrs: &[(&str, &[u8])]) -> &mut Self {
        let keys: Vec<String> = xattrs
            .iter()
            .map(|(key, _)| format!("SCHILY.xattr.{key}"))
            .collect();
        let records: Vec<(&str, &[u8])> = keys
            .iter()
            .zip(xattrs)
            .map(|(key, (_, value))| (key.as_str(), *value))
            .collect();
        self.pax(&records)
    }

    /// Ends the archive with two zero blocks.
    pub fn finish(&mut self) -> Vec<u8> {
        self.bytes.extend(std::iter::repeat_n(0u8, 1024));
        std::mem::take(&mut self.bytes)
    }
}
pub mod layout;

/// Whether applying a layer keeps the xattr `name`: only `user.*`,
/// `security.capability` and the POSIX ACLs.
pub fn layer_keeps_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || matches!(
            name,
            b"security.capability" | b"system.posix_acl_access" | b"system.posix_acl_default"
        )
}

/// Removes, from `root` and everything below it, the xattrs applying a layer
/// drops (`trusted.*`, `security.*` labels...), so that a tree made into a
/// layer and applied again is expected to come back whole.
pub fn remove_xattrs_layers_drop(root: &std::path::Path) {
    let mut names = vec![0u8; 64 * 1024];
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let n = rustix::fs::llistxattr(&path, &mut names[..]).unwrap_or(0);
        for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if !layer_keeps_xattr(name) {
                rustix::fs::lremovexattr(&path, name).unwrap_or_else(|e| {
                    panic!(
                        "remove {} from {}: {e}",
                        String::from_utf8_lossy(name),
                        path.display()
                    )
                });
            }
        }
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
}

/// A stream produced as it is read, for inputs too large to hold: pieces of
/// literal bytes and long runs of a repeated pattern, one after another.
/// Never holds more than its literal pieces and one pattern.
pub struct Generated {
    pieces: std::collections::VecDeque<Piece>,
}

enum Piece {
    Bytes(Vec<u8>, usize),
    Repeat {
        pattern: Vec<u8>,
        at: usize,
        left: u64,
    },
}

impl Generated {
    /// An empty stream; add pieces with [`bytes`](Self::bytes) and
    /// [`repeat`](Self::repeat).
    pub fn new() -> Self {
        Generated {
            pieces: std::collections::VecDeque::new(),
        }
    }

    /// These bytes, as they are.
    pub fn bytes(mut self, bytes: Vec<u8>) -> Self {
        self.pieces.push_back(Piece::Bytes(bytes, 0));
        self
    }

    /// `len` bytes of `pattern` over and over (cut wherever `len` ends).
    pub fn repeat(mut self, pattern: &[u8], len: u64) -> Self {
        assert!(!pattern.is_empty());
        self.pieces.push_back(Piece::Repeat {
            pattern: pattern.to_vec(),
            at: 0,
            left: len,
        });
        self
    }
}

impl Default for Generated {
    fn default() -> Self {
        Self::new()
    }
}

impl std::io::Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(piece) = self.pieces.front_mut() else {
                return Ok(0);
            };
            let n = match piece {
                Piece::Bytes(bytes, at) => {
                    let n = buf.len().min(bytes.len() - *at);
                    buf[..n].copy_from_slice(&bytes[*at..*at + n]);
                    *at += n;
                    n
                }
                Piece::Repeat { pattern, at, left } => {
                    let mut n = 0;
                    while n < buf.len() && *left > 0 {
                        let run = (pattern.len() - *at)
                            .min(buf.len() - n)
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        buf[n..n + run].copy_from_slice(&pattern[*at..*at + run]);
                        n += run;
                        *at = (*at + run) % pattern.len();
                        *left -= run as u64;
                    }
                    n
                }
            };
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.pieces.pop_front();
        }
    }
}

/// An overlay mount that is unmounted when dropped, whatever the test did.
pub struct Mounted {
    /// The merged directory, `scratch/merged`.
    pub merged: std::path::PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::empty()).is_err() {
            // Busy (a failing assertion may still hold something open):
            // detach it, so no mount outlives the test either way.
            let _ = rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// Mounts overlayfs over `lower` and `upper` at `scratch/merged`, with the
/// options the overlay driver uses (redirects, metacopy and the index off).
pub fn mount_overlay(
    scratch: &std::path::Path,
    lower: &std::path::Path,
    upper: &std::path::Path,
) -> Mounted {
    let work = scratch.join("work");
    let merged = scratch.join("merged");
    std::fs::create_dir(&work).unwrap();
    std::fs::create_dir(&merged).unwrap();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data).unwrap();
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .unwrap();
    Mounted { merged }
}

/// A tar of a directory `prefix` holding `files` files of `size` bytes each
/// (each file's bytes differ).
pub fn tar_of_many(prefix: &str, files: usize, size: usize) -> Vec<u8> {
    let mut tar = RawTar::new();
    tar.dir(&format!("{prefix}/"));
    for i in 0..files {
        let data: Vec<u8> = (0..size).map(|b| ((b * 31 + i) % 251) as u8).collect();
        tar.file(&format!("{prefix}/file-{i:05}"), &data);
    }
    tar.finish()
}

/// A tar of a minimal Debian bookworm root filesystem, made once with
/// debootstrap and kept under `target/bench-fixtures` (for benches and for
/// the tests that run real clients on a real distribution tree).
pub fn debian_rootfs_tar() -> std::path::PathBuf {
    // One maker at a time, across the threads of a test binary (its tests
    // run in parallel) and across processes: the others wait, then find it.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _in_process = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = crate::workspace_root().join("target/bench-fixtures");
    let tar = dir.join("debian-bookworm-minbase.tar");
    if tar.exists() {
        return tar;
    }
    std::fs::create_dir_all(&dir).expect("create target/bench-fixtures");
    let lock = std::fs::File::create(dir.join("debian-bookworm-minbase.lock"))
        .expect("create the fixture's lock file");
    lock.lock().expect("lock the fixture");
    if tar.exists() {
        return tar;
    }
    let scratch = tempfile::tempdir_in(&dir).expect("scratch directory");
    let root = scratch.path().join("rootfs");
    eprintln!("making a Debian root filesystem with debootstrap (once)...");
    // No mirror given: debootstrap's own default serves.
    crate::run_ok(
        std::process::Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&root),
    );
    let partial = scratch.path().join("debian-bookworm-minbase.tar.partial");
    crate::run_ok(
        std::process::Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
    );
    // Whole or not at all: a maker killed before this leaves no tar.
    std::fs::rename(&partial, &tar).expect("move the tar into place");
    tar
}
