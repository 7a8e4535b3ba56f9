//! A reference tree holding every kind of file a layer can carry, and an exact
//! comparison of two trees. Used to prove that a copy or a snapshot keeps
//! everything (modes, owners, times, xattrs, links, devices, holes).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

/// `security.capability` granting cap_net_bind_service, effective: a v2
/// capability blob (magic 0x02000001, then permitted/inheritable words).
pub const NET_BIND_CAPABILITY: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    0x00, 0x04, 0x00, 0x00, // permitted, low word: bit 10
    0x00, 0x00, 0x00, 0x00, // inheritable, low word
    0x00, 0x00, 0x00, 0x00, // permitted, high word
    0x00, 0x00, 0x00, 0x00, // inheritable, high word
];

fn set_times(path: &Path, mtime_sec: i64, mtime_nsec: i64) {
    // atime an hour ahead of now: relatime then leaves it alone when the tree is
    // read, so atimes can be compared too.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: now + 3600,
            tv_nsec: 123_456_789,
        },
        last_modification: Timespec {
            tv_sec: mtime_sec,
            tv_nsec: mtime_nsec,
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("set times of {}: {e}", path.display()));
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn mknod(path: &Path, kind: FileType, mode: u32, major: u32, minor: u32) {
    rustix::fs::mknodat(
        CWD,
        path,
        kind,
        Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
    chmod(path, mode);
}

/// Fills `root` (an existing, empty directory) with every kind of entry, as
/// root would find them in real images. Needs root (owners, devices,
/// trusted.* and security.* xattrs).
pub fn build_every_kind(root: &Path) {
    build(root, true);
}

/// [`build_every_kind`] as far as the filesystem under `root` can hold it:
/// without the file capability (`security.capability` on `usr/bin/ping`),
/// and without any xattr the filesystem answers "not supported" for (zfs-fuse
/// keeps none on symlinks). Returns what it left out, for the caller to say.
pub fn build_every_kind_that_fits(root: &Path) -> Vec<String> {
    build(root, false)
}

fn build(root: &Path, strict: bool) -> Vec<String> {
    let p = |rel: &str| root.join(rel);
    let mut omitted = Vec::new();
    if !strict {
        omitted.push("the file capability of usr/bin/ping".to_string());
    }
    let mut xattr = |path: &Path, name: &str, value: &[u8]| match rustix::fs::lsetxattr(
        path,
        name,
        value,
        XattrFlags::empty(),
    ) {
        Ok(()) => {}
        Err(rustix::io::Errno::OPNOTSUPP) if !strict => {
            omitted.push(format!("xattr {name} on {}", path.display()));
        }
        Err(e) => panic!("setxattr {name} on {}: {e}", path.display()),
    };

    fs::create_dir_all(p("etc")).unwrap();
    fs::write(p("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(p("etc/shadow"), b"root:*:19000:0:99999:7:::\n").unwrap();
    chmod(&p("etc/shadow"), 0o640);
    chown(&p("etc/shadow"), 0, 42);

    fs::create_dir_all(p("usr/bin")).unwrap();
    fs::write(p("usr/bin/su"), vec![0x7f; 4096]).unwrap();
    chmod(&p("usr/bin/su"), 0o4755);
    fs::write(p("usr/bin/wall"), b"wall").unwrap();
    chown(&p("usr/bin/wall"), 0, 5);
    chmod(&p("usr/bin/wall"), 0o2755);
    fs::write(p("usr/bin/ping"), b"ping").unwrap();
    chmod(&p("usr/bin/ping"), 0o755);
    if strict {
        xattr(
            &p("usr/bin/ping"),
            "security.capability",
            &NET_BIND_CAPABILITY,
        );
    }
    fs::write(p("usr/bin/odd"), b"odd").unwrap();
    chmod(&p("usr/bin/odd"), 0o1751);
    fs::write(p("usr/bin/nothing"), b"").unwrap();
    chmod(&p("usr/bin/nothing"), 0o000);

    // Hard links, within a directory and across directories.
    fs::write(p("usr/bin/python3.11"), b"#!python").unwrap();
    fs::hard_link(p("usr/bin/python3.11"), p("usr/bin/python3")).unwrap();
    fs::create_dir_all(p("usr/local/bin")).unwrap();
    fs::hard_link(p("usr/bin/python3.11"), p("usr/local/bin/python")).unwrap();

    // Symlinks: relative, absolute, dangling, to a directory, owned.
    symlink("python3.11", p("usr/bin/python")).unwrap();
    symlink("/etc/passwd", p("etc/passwd-link")).unwrap();
    symlink("does/not/exist", p("etc/dangling")).unwrap();
    symlink("usr/bin", p("bin")).unwrap();
    symlink("../bin/su", p("usr/local/bin/su")).unwrap();
    chown(&p("usr/local/bin/su"), 1000, 1000);
    xattr(&p("etc/dangling"), "trusted.strata.test", b"on a symlink");

    // Device nodes, a fifo, a socket.
    fs::create_dir_all(p("dev")).unwrap();
    mknod(&p("dev/null"), FileType::CharacterDevice, 0o666, 1, 3);
    mknod(&p("dev/loop0"), FileType::BlockDevice, 0o660, 7, 0);
    chown(&p("dev/loop0"), 0, 6);
    mknod(&p("dev/initctl"), FileType::Fifo, 0o600, 0, 0);
    mknod(&p("dev/log"), FileType::Socket, 0o666, 0, 0);

    // Directories with special modes and owners.
    fs::create_dir_all(p("tmp")).unwrap();
    chmod(&p("tmp"), 0o1777);
    fs::create_dir_all(p("var/mail")).unwrap();
    chown(&p("var/mail"), 0, 8);
    chmod(&p("var/mail"), 0o2775);
    fs::create_dir_all(p("home/user/.cache")).unwrap();
    fs::write(p("home/user/.profile"), b"export PATH\n").unwrap();
    for rel in ["home/user", "home/user/.cache", "home/user/.profile"] {
        chown(&p(rel), 1000, 1000);
    }
    chmod(&p("home/user"), 0o700);
    fs::create_dir_all(p("root")).unwrap();
    chmod(&p("root"), 0o700);
    fs::create_dir_all(p("locked")).unwrap();
    fs::write(p("locked/inside"), b"still copied").unwrap();
    chmod(&p("locked"), 0o555);

    // Xattrs on a file and a directory, including an empty value.
    fs::write(p("etc/labelled"), b"labelled").unwrap();
    xattr(&p("etc/labelled"), "user.strata.note", b"hello");
    xattr(&p("etc/labelled"), "user.strata.empty", b"");
    xattr(
        &p("etc/labelled"),
        "trusted.strata.secret",
        b"\x00\x01binary\xff",
    );
    xattr(&p("etc"), "user.strata.dir", b"directory xattr");

    // A sparse file (data at 0 and at 8 MiB of 16 MiB) and a larger dense one.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(p("var/sparse.img")).unwrap();
        f.write_all(&[0xAB; 4096]).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&[0xCD; 4096]).unwrap();
        f.set_len(16 << 20).unwrap();
    }
    let dense: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(p("var/dense.bin"), dense).unwrap();

    // A name with bytes that are not UTF-8.
    fs::write(
        root.join(OsStr::from_bytes(b"var/caf\xe9")),
        b"latin-1 name",
    )
    .unwrap();

    // Times last, deepest first, so creating entries does not move them.
    let mut all = Vec::new();
    collect(root, root, &mut all);
    all.sort_by_key(|rel| std::cmp::Reverse(rel.components().count()));
    for (i, rel) in all.iter().enumerate() {
        set_times(
            &root.join(rel),
            1_600_000_000 + i as i64,
            (i as i64 * 7919) % 1_000_000_000,
        );
    }
    set_times(root, 1_500_000_000, 42);
    omitted
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        out.push(path.strip_prefix(root).unwrap().to_path_buf());
        if entry.file_type().unwrap().is_dir() {
            collect(root, &path, out);
        }
    }
}

/// Bytes as text for a message: printable ASCII as it is, the rest
/// escaped, cut after 64 bytes.
fn shown_bytes(bytes: &[u8]) -> String {
    let mut text: String = bytes
        .iter()
        .take(64)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if bytes.len() > 64 {
        text.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    format!("\"{text}\"")
}

/// The fields in which two entries differ, in words: `mode 100644 != 100600`,
/// `xattr user.note: "a" != (none)`.
fn what_differs(a: &EntryFacts, b: &EntryFacts) -> String {
    let mut out = Vec::new();
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{name} {x} != {y}"));
        }
    };
    field("mode", format!("{:o}", a.mode), format!("{:o}", b.mode));
    field(
        "owner",
        format!("{}:{}", a.uid, a.gid),
        format!("{}:{}", b.uid, b.gid),
    );
    field("rdev", a.rdev.to_string(), b.rdev.to_string());
    field("size", a.size.to_string(), b.size.to_string());
    field("links", a.nlink.to_string(), b.nlink.to_string());
    field(
        "mtime",
        format!("{}.{:09}", a.mtime.0, a.mtime.1),
        format!("{}.{:09}", b.mtime.0, b.mtime.1),
    );
    field(
        "atime",
        format!("{}.{:09}", a.atime.0, a.atime.1),
        format!("{}.{:09}", b.atime.0, b.atime.1),
    );
    field(
        "symlink target",
        format!("{:?}", a.link_target),
        format!("{:?}", b.link_target),
    );
    field(
        "content",
        format!("{:?}", a.content_digest),
        format!("{:?}", b.content_digest),
    );
    let names: std::collections::BTreeSet<&Vec<u8>> =
        a.xattrs.keys().chain(b.xattrs.keys()).collect();
    for name in names {
        let (x, y) = (a.xattrs.get(name), b.xattrs.get(name));
        if x != y {
            out.push(format!(
                "xattr {}: {} != {}",
                String::from_utf8_lossy(name),
                x.map_or("(none)".into(), |v| shown_bytes(v)),
                y.map_or("(none)".into(), |v| shown_bytes(v))
            ));
        }
    }
    if out.is_empty() {
        "differs".into()
    } else {
        out.join("; ")
    }
}

/// Everything about one entry that a faithful copy must keep.
#[derive(Debug, PartialEq, Eq)]
struct EntryFacts {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: u64,
    nlink: u64,
    mtime: (i64, i64),
    atime: (i64, i64),
    link_target: Option<PathBuf>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    content_digest: Option<u64>,
    allocated_at_most: Option<u64>,
}

fn facts(path: &Path, with_atime: bool) -> (EntryFacts, (u64, u64)) {
    let meta = fs::symlink_metadata(path).unwrap();
    let is_file = meta.file_type().is_file();
    let mut xattrs = BTreeMap::new();
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
        xattrs.insert(name.to_vec(), value[..len].to_vec());
    }
    let content_digest = is_file.then(|| {
        // FNV-1a: enough to tell contents apart in a test.
        fs::read(path)
            .unwrap()
            .iter()
            .fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x100000001b3)
            })
    });
    let facts = EntryFacts {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev(),
        size: if meta.is_dir() { 0 } else { meta.size() },
        nlink: if meta.is_dir() { 0 } else { meta.nlink() },
        mtime: (meta.mtime(), meta.mtime_nsec()),
        atime: if with_atime && !meta.is_dir() {
            (meta.atime(), meta.atime_nsec())
        } else {
            (0, 0)
        },
        link_target: meta
            .file_type()
            .is_symlink()
            .then(|| fs::read_link(path).unwrap()),
        xattrs,
        content_digest,
        // A hole-keeping copy allocates no more than the original (plus a block
        // of slack for filesystems that allocate differently).
        allocated_at_most: is_file.then(|| meta.blocks() * 512 + 65536),
    };
    (facts, (meta.dev(), meta.ino()))
}

/// Compares the trees at `a` (the original) and `b` (the copy) and returns every
/// difference found, in words; empty means identical. Hard links must link the
/// same names; sizes on disk of `b` must not exceed `a`'s (holes kept).
pub fn compare_trees(a: &Path, b: &Path) -> Vec<String> {
    compare_trees_with(a, b, Compare { atime: true })
}

/// What a comparison looks at beyond the always-compared facts.
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    /// Access times. A layer diff does not carry them (reading a file to
    /// export it would move them), so diff round trips leave them out.
    pub atime: bool,
}

/// `compare_trees` with a choice of what to compare.
pub fn compare_trees_with(a: &Path, b: &Path, compare: Compare) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut a_entries = Vec::new();
    let mut b_entries = Vec::new();
    collect(a, a, &mut a_entries);
    collect(b, b, &mut b_entries);
    a_entries.sort();
    b_entries.sort();
    if a_entries != b_entries {
        for rel in a_entries.iter().filter(|r| !b_entries.contains(r)) {
            diffs.push(format!("{}: missing from the copy", rel.display()));
        }
        for rel in b_entries.iter().filter(|r| !a_entries.contains(r)) {
            diffs.push(format!("{}: only in the copy", rel.display()));
        }
    }
    let mut a_inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut b_inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let roots = std::iter::once(PathBuf::new());
    for rel in roots.chain(a_entries.iter().filter(|r| b_entries.contains(r)).cloned()) {
        let (mut fa, ia) = facts(&a.join(&rel), compare.atime);
        let (fb, ib) = facts(&b.join(&rel), compare.atime);
        if let (Some(limit), Some(_)) = (fa.allocated_at_most, fb.allocated_at_most) {
            let used = fs::symlink_metadata(b.join(&rel)).unwrap().blocks() * 512;
            if used > limit {
                diffs.push(format!(
                    "{}: the copy allocates {used} bytes, the original {} (holes lost?)",
                    rel.display(),
                    limit - 65536
                ));
            }
        }
        fa.allocated_at_most = fb.allocated_at_most;
        if fa != fb {
            diffs.push(format!("{}: {}", rel.display(), what_differs(&fa, &fb)));
        }
        a_inodes.entry(ia).or_default().push(rel.clone());
        b_inodes.entry(ib).or_default().push(rel);
    }
    let groups = |m: HashMap<(u64, u64), Vec<PathBuf>>| {
        let mut g: Vec<Vec<PathBuf>> = m.into_values().filter(|v| v.len() > 1).collect();
        g.iter_mut().for_each(|v| v.sort());
        g.sort();
        g
    };
    let (ga, gb) = (groups(a_inodes), groups(b_inodes));
    if ga != gb {
        diffs.push(format!("hard-link groups differ: {ga:?} != {gb:?}"));
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_comparison_agrees_with_gnu_cp_and_catches_each_kind_of_loss() {
        let scratch = tempfile::tempdir().unwrap();
        let original = scratch.path().join("original");
        fs::create_dir(&original).unwrap();
        build_every_kind(&original);
        let copy = scratch.path().join("copy");
        let status = Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(&original)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        let diffs = compare_trees(&original, &copy);
        assert!(
            diffs.is_empty(),
            "cp -a copy differs:\n{}",
            diffs.join("\n")
        );

        // Each kind of loss is noticed.
        chmod(&copy.join("usr/bin/su"), 0o755);
        rustix::fs::lremovexattr(copy.join("usr/bin/ping"), "security.capability").unwrap();
        fs::remove_file(copy.join("usr/local/bin/python")).unwrap();
        fs::copy(
            copy.join("usr/bin/python3.11"),
            copy.join("usr/local/bin/python"),
        )
        .unwrap();
        chown(&copy.join("etc/shadow"), 0, 0);
        let diffs = compare_trees(&original, &copy).join("\n");
        for needle in [
            "usr/bin/su",
            "usr/bin/ping",
            "hard-link groups differ",
            "etc/shadow",
        ] {
            assert!(diffs.contains(needle), "{needle} not reported in:\n{diffs}");
        }
    }
}
