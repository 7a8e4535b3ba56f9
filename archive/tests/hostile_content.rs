//! Hostile layer content: xattr records that would steer overlayfs or stand
//! in for the host's labels, AUFS bookkeeping, streams built to exhaust
//! memory (a GiB after the end of the archive, in a PAX header, in a GNU
//! long name, in a sparse map), and names carrying terminal escapes. Each
//! is dropped, skipped or refused with a clear error; the memory cases run
//! in a child process whose peak resident memory must stay under 64 MiB.

use strata_testkit::fixtures;

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use fixtures::{
    DIRECTORY, GNU_LONGLINK, GNU_LONGNAME, GNU_SPARSE, Generated, PAX, REGULAR, RawTar, SYMLINK,
    mount_overlay,
};
use strata_archive::{ApplyOptions, ApplyTarget, ArchiveError, Sha256Digest, apply_layer};
use strata_testkit::tree::NET_BIND_CAPABILITY;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// The ceiling on an apply's peak resident memory, whatever the stream.
const PEAK_LIMIT_KIB: u64 = 64 * 1024;

/// Xattr records no layer may set, with values an attacker would use.
const DROPPED: &[(&str, &[u8])] = &[
    ("trusted.overlay.redirect", b"/secret"),
    ("trusted.overlay.opaque", b"y"),
    ("trusted.overlay.metacopy", b""),
    ("trusted.overlay.origin", b"\x00\xfb\x21\x00\x01"),
    ("trusted.strata.anything", b"x"),
    ("security.selinux", b"system_u:object_r:shadow_t:s0\0"),
    ("security.ima", b"\x04\x04\x01"),
    ("security.evm", b"\x03\x02\x01"),
    ("security.SMACK64", b"_"),
    ("unknown.namespace", b"x"),
];

fn apply_with(root: &Path, tar: &[u8], options: &ApplyOptions) -> Result<(), ArchiveError> {
    let mut record = Vec::new();
    apply_layer(root, tar, options, Some(&mut record)).map(|_| ())
}

fn options(target: ApplyTarget) -> ApplyOptions {
    ApplyOptions {
        target,
        ..Default::default()
    }
}

/// The value of xattr `name` on `path` (not following a symlink), if set.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut value = vec![0u8; 64 * 1024];
    match rustix::fs::lgetxattr(path, name, &mut value[..]) {
        Ok(n) => Some(value[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        // An unknown namespace cannot even be asked for.
        Err(rustix::io::Errno::NOTSUP) => None,
        Err(e) => panic!("getxattr {name} on {}: {e}", path.display()),
    }
}

/// A POSIX ACL (version 2) matching `mode` (owner, mask and other from its
/// bits, as a chmod would set them), plus user 1000 and the group with read
/// access. The named user makes it more than the mode bits, so it is kept
/// as an xattr.
fn acl(mode: u32) -> Vec<u8> {
    let bits = |shift: u32| ((mode >> shift) & 7) as u16;
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, bits(6), u32::MAX),
        (0x02, 4, 1000),
        (0x04, 4, u32::MAX),
        (0x10, bits(3), u32::MAX),
        (0x20, bits(0), u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    acl
}

/// Whether the filesystem under `dir` takes POSIX ACLs.
fn acls_supported(dir: &Path) -> bool {
    let probe = dir.join("acl-probe");
    fs::write(&probe, b"").unwrap();
    let ok = rustix::fs::setxattr(
        &probe,
        "system.posix_acl_access",
        &acl(0o644),
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok();
    fs::remove_file(&probe).unwrap();
    ok
}

#[test]
fn hostile_xattr_records_are_dropped_and_content_ones_kept_on_both_targets() {
    for target in [ApplyTarget::Tree, ApplyTarget::OVERLAY_UPPER] {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        fs::create_dir(&root).unwrap();
        // As the mode bits of the members that carry them (the builder's
        // 0755 directories and 0644 files).
        let (dir_acl, file_acl) = (acl(0o755), acl(0o644));
        let mut file_kept: Vec<(&str, &[u8])> = vec![
            ("user.note", &b"kept"[..]),
            ("security.capability", &NET_BIND_CAPABILITY[..]),
        ];
        let mut dir_kept: Vec<(&str, &[u8])> = vec![("user.note", &b"kept"[..])];
        if acls_supported(scratch.path()) {
            file_kept.push(("system.posix_acl_access", &file_acl));
            dir_kept.push(("system.posix_acl_access", &dir_acl));
            dir_kept.push(("system.posix_acl_default", &file_acl));
        } else {
            strata_testkit::skip::cannot_run(
                "the POSIX ACL half of the xattr check",
                "the temporary directory's filesystem has no POSIX ACLs",
            );
        }
        let dir_all: Vec<(&str, &[u8])> = DROPPED.iter().chain(&dir_kept).copied().collect();
        let file_all: Vec<(&str, &[u8])> = DROPPED.iter().chain(&file_kept).copied().collect();
        let tar = RawTar::new()
            .xattrs(&dir_all)
            .dir("d/")
            .xattrs(&file_all)
            .file("d/f", b"content")
            // A symlink can carry no user.* xattr: only dropped ones.
            .xattrs(DROPPED)
            .symlink("d/l", "f")
            .xattrs(DROPPED)
            .dir("./")
            .finish();
        apply_with(&root, &tar, &options(target)).unwrap_or_else(|e| panic!("{target:?}: {e}"));

        for (path, kept) in [
            (root.clone(), &[][..]),
            (root.join("d"), &dir_kept[..]),
            (root.join("d/f"), &file_kept[..]),
            (root.join("d/l"), &[][..]),
        ] {
            for (key, _) in DROPPED {
                assert_eq!(
                    xattr(&path, key),
                    None,
                    "{target:?}: {key} was applied to {}",
                    path.display()
                );
            }
            for (key, value) in kept {
                assert_eq!(
                    xattr(&path, key).as_deref(),
                    Some(*value),
                    "{target:?}: {key} was not applied to {}",
                    path.display()
                );
            }
        }
        assert_eq!(fs::read(root.join("d/f")).unwrap(), b"content");
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn smuggled_overlay_xattrs_do_nothing_through_an_overlay_mount() {
    let scratch = tempfile::tempdir().unwrap();
    let lower = scratch.path().join("lower");
    let upper = scratch.path().join("upper");
    for dir in ["a", "secret", "b", "o"] {
        fs::create_dir_all(lower.join(dir)).unwrap();
    }
    fs::write(lower.join("a/from-lower"), b"lower a").unwrap();
    fs::write(lower.join("secret/hidden"), b"not for a's readers").unwrap();
    fs::write(lower.join("b/lower-entry"), b"lower b").unwrap();
    fs::write(lower.join("o/lower-entry"), b"lower o").unwrap();
    fs::write(lower.join("c"), b"lower c").unwrap();
    fs::create_dir(&upper).unwrap();

    let tar = RawTar::new()
        // A redirect would make a/ show the lower /secret instead.
        .xattrs(&[("trusted.overlay.redirect", b"/secret")])
        .dir("a/")
        .file("a/new", b"new a")
        // An opaque xattr would hide the lower b/.
        .xattrs(&[("trusted.overlay.opaque", b"y")])
        .dir("b/")
        .file("b/new", b"new b")
        // A metacopy xattr would make c unreadable.
        .xattrs(&[
            ("trusted.overlay.metacopy", b""),
            ("trusted.overlay.origin", b"\x00\xfb\x21\x00\x01"),
        ])
        .file("c", b"upper c")
        // The one way to an opaque directory: its marker.
        .dir("o/")
        .file("o/.wh..wh..opq", b"")
        .file("o/new", b"new o")
        .xattrs(&[
            ("user.note", b"kept"),
            ("security.capability", &NET_BIND_CAPABILITY),
        ])
        .file("u", b"u")
        .finish();
    let options = ApplyOptions {
        target: ApplyTarget::OVERLAY_UPPER,
        lower: Some(lower.clone()),
        ..Default::default()
    };
    apply_with(&upper, &tar, &options).unwrap();

    // The upper holds none of the smuggled records; the marker's xattr is
    // the applier's own.
    assert_eq!(xattr(&upper.join("a"), "trusted.overlay.redirect"), None);
    assert_eq!(xattr(&upper.join("b"), "trusted.overlay.opaque"), None);
    assert_eq!(xattr(&upper.join("c"), "trusted.overlay.metacopy"), None);
    assert_eq!(xattr(&upper.join("c"), "trusted.overlay.origin"), None);
    assert_eq!(
        xattr(&upper.join("o"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );

    let mounted = mount_overlay(scratch.path(), &lower, &upper);
    let merged = &mounted.merged;
    assert_eq!(names(&merged.join("a")), ["from-lower", "new"]);
    assert_eq!(names(&merged.join("b")), ["lower-entry", "new"]);
    assert_eq!(
        fs::read(merged.join("c")).expect("read c through the mount"),
        b"upper c"
    );
    assert_eq!(names(&merged.join("o")), ["new"]);
    assert_eq!(
        xattr(&merged.join("u"), "user.note").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(
        xattr(&merged.join("u"), "security.capability").as_deref(),
        Some(&NET_BIND_CAPABILITY[..])
    );
    drop(mounted);
}

/// Every path under `root`, directories with a trailing `/`.
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn aufs_bookkeeping_and_what_is_below_it_are_never_applied_on_either_target() {
    let tar = RawTar::new()
        .dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/123.456", b"a hard link's inode")
        .file(".wh..wh.aufs", b"")
        .dir(".wh..wh.orph/")
        .file(".wh..wh.orph/orphan", b"")
        .dir("sub/")
        .dir("sub/.wh..wh.plnk/")
        .file("sub/.wh..wh.plnk/deep/file", b"")
        .header(b"sub/.wh..wh.orph/link", SYMLINK, b"/etc", 0, 0o777)
        .file("./x/../.wh..wh.aufs/below", b"")
        .file("kept", b"kept")
        .finish();
    for target in [ApplyTarget::Tree, ApplyTarget::OVERLAY_UPPER] {
        let dir = tempfile::tempdir().unwrap();
        apply_with(dir.path(), &tar, &options(target)).unwrap();
        assert_eq!(
            listing(dir.path()),
            ["kept", "sub/"],
            "{target:?}: AUFS bookkeeping applied"
        );
    }

    // A hard link into it has nothing to link to: refused, saying why.
    let tar = RawTar::new()
        .file(".wh..wh.plnk/123.456", b"x")
        .hard_link("usr/bin/tool", ".wh..wh.plnk/123.456")
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let err = apply_with(dir.path(), &tar, &options(ApplyTarget::Tree)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("usr/bin/tool") && message.contains("AUFS"),
        "{message}"
    );
}

/// A `MakeWriter` that keeps what is logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Applies `tar` (plain: applied on this thread) and returns what it logged.
fn logged_applying(tar: &[u8]) -> (Result<(), ArchiveError>, String) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let result = tracing::subscriber::with_default(subscriber, || {
        apply_with(dir.path(), tar, &options(ApplyTarget::Tree))
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (result, log)
}

#[test]
fn dropped_xattrs_are_warned_once_per_key_with_a_count() {
    let mut tar = RawTar::new();
    for name in ["first", "second", "third"] {
        tar.xattrs(&[
            ("trusted.overlay.opaque", b"y"),
            ("security.selinux", b"label"),
            ("user.kept", b"yes"),
        ])
        .file(name, b"x");
    }
    tar.xattrs(&[("trusted.overlay.opaque", b"y")]).dir("d/");
    let (result, log) = logged_applying(&tar.finish());
    result.unwrap();
    let lines = |key: &str| -> Vec<&str> { log.lines().filter(|l| l.contains(key)).collect() };
    let opaque = lines("trusted.overlay.opaque");
    assert_eq!(opaque.len(), 1, "{log}");
    assert!(
        opaque[0].contains("WARN")
            && opaque[0].contains("4 member")
            && opaque[0].contains("\"first\""),
        "{log}"
    );
    let selinux = lines("security.selinux");
    assert_eq!(selinux.len(), 1, "{log}");
    assert!(selinux[0].contains("3 member"), "{log}");
    assert!(lines("user.kept").is_empty(), "{log}");
}

/// What a message must never hold: raw control characters (terminal
/// escapes, bells, newlines that forge log lines).
fn assert_escaped(message: &str) {
    assert!(
        !message.chars().any(|c| c.is_control()),
        "a raw control character in {message:?}"
    );
}

#[test]
fn names_in_errors_and_warnings_are_escaped_and_contents_never_quoted() {
    let hostile = b"evil\x1b]0;owned\x07\x1b[2J\nname";

    // The stream ends inside the member's data.
    let mut tar = RawTar::new();
    tar.header(hostile, REGULAR, b"", 1000, 0o644);
    tar.bytes.extend_from_slice(b"ten bytes!");
    let dir = tempfile::tempdir().unwrap();
    let message = apply_with(dir.path(), &tar.bytes, &options(ApplyTarget::Tree))
        .unwrap_err()
        .to_string();
    assert_escaped(&message);
    assert!(message.contains("evil\\u{1b}]0;owned\\u{7}"), "{message}");

    // Climbing out.
    let tar = RawTar::new().file("../\x1b[31mred", b"x").finish();
    let message = apply_with(dir.path(), &tar, &options(ApplyTarget::Tree))
        .unwrap_err()
        .to_string();
    assert_escaped(&message);
    assert!(message.contains("\\u{1b}[31mred"), "{message}");

    // An oversized PAX header, named by its own (hostile) name.
    let mut tar = RawTar::new();
    tar.header(b"PaxHeaders/\x1b[31mx", PAX, b"", 2 * MIB, 0o644);
    let message = apply_with(dir.path(), &tar.finish(), &options(ApplyTarget::Tree))
        .unwrap_err()
        .to_string();
    assert_escaped(&message);
    assert!(message.contains("PaxHeaders/\\u{1b}[31mx"), "{message}");

    // A header field that is not a number: which field, never its bytes.
    let mut bad_mode = RawTar::new().file("m", b"x").finish();
    bad_mode[100..108].copy_from_slice(b"SECRET!\0");
    bad_mode[148..156].copy_from_slice(b"        ");
    let sum: u32 = bad_mode[..512].iter().map(|b| u32::from(*b)).sum();
    bad_mode[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let message = apply_with(dir.path(), &bad_mode, &options(ApplyTarget::Tree))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("mode") && !message.contains("SECRET"),
        "{message}"
    );

    // A dropped xattr's warning names the member escaped.
    let mut tar = RawTar::new();
    tar.xattrs(&[("trusted.overlay.opaque", b"y")])
        .header(b"w\x1b[2Jw", DIRECTORY, b"", 0, 0o755);
    let (result, log) = logged_applying(&tar.finish());
    result.unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("trusted.overlay.opaque"))
        .unwrap_or_else(|| panic!("no warning in {log:?}"));
    assert_escaped(warning);
    assert!(warning.contains("w\\u{1b}[2Jw"), "{warning}");
}

/// A PAX record `"<len> comment=aaa...\n"` of exactly `len` bytes.
fn comment_record(len: usize) -> Vec<u8> {
    let digits = len.to_string().len();
    let fill = len - digits - " comment=\n".len();
    let mut record = format!("{len} comment=").into_bytes();
    record.extend(std::iter::repeat_n(b'a', fill));
    record.push(b'\n');
    assert_eq!(record.len(), len);
    record
}

/// PAX records (ignored comments) of exactly `len` bytes in all.
fn pax_body(len: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(len);
    while len - body.len() >= 1024 {
        body.extend(comment_record(512));
    }
    body.extend(comment_record(len - body.len()));
    body
}

#[test]
fn the_limits_hold_exactly_at_their_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let apply = |tar: &[u8]| {
        let root = dir.path().join(format!("root-{}", rand_suffix()));
        fs::create_dir(&root).unwrap();
        apply_layer(&root, tar, &ApplyOptions::default(), Some(&mut Vec::new()))
    };

    // A PAX header of 1 MiB is read; one byte more is refused.
    for (len, ok) in [(MIB as usize, true), (MIB as usize + 1, false)] {
        let body = pax_body(len);
        let tar = RawTar::new()
            .header(b"PaxHeaders/f", PAX, b"", body.len() as u64, 0o644)
            .data(&body)
            .file("f", b"x")
            .finish();
        match apply(&tar) {
            Ok(_) => assert!(ok, "a PAX header of {len} bytes was accepted"),
            Err(e) => {
                let message = e.to_string();
                assert!(!ok, "a PAX header of {len} bytes: {message}");
                assert!(
                    message.contains("PAX extended header")
                        && message.contains("at byte 0")
                        && message.contains("1 MiB"),
                    "{message}"
                );
            }
        }
    }

    // A GNU long name of 64 KiB (NUL included) is read; one byte more is
    // refused.
    for (len, ok) in [(64 * 1024usize, true), (64 * 1024 + 1, false)] {
        let mut name = b"./".repeat((len - 2) / 2);
        if len % 2 == 1 {
            name.insert(0, b'/');
        }
        name.push(b'f');
        let tar = RawTar::new().gnu_long_name(&name).file("f", b"x").finish();
        assert_eq!(
            u64::from_str_radix(std::str::from_utf8(&tar[124..135]).unwrap(), 8).unwrap(),
            len as u64
        );
        match apply(&tar) {
            Ok(_) => assert!(ok, "a long name of {len} bytes was accepted"),
            Err(e) => {
                let message = e.to_string();
                assert!(!ok, "a long name of {len} bytes: {message}");
                assert!(
                    message.contains("GNU long name")
                        && message.contains("at byte 0")
                        && message.contains("64 KiB"),
                    "{message}"
                );
            }
        }
    }

    // 1 MiB after the end-of-archive blocks is read, digested and counted;
    // one byte more is refused.
    let tar = RawTar::new().file("f", b"x").finish();
    let mut within = tar.clone();
    within.extend(std::iter::repeat_n(0u8, MIB as usize));
    let report = apply(&within).unwrap();
    assert_eq!(report.uncompressed_size, within.len() as u64);
    assert_eq!(report.uncompressed_digest, Sha256Digest::of(&within));
    let mut past = within.clone();
    past.push(0);
    let message = apply(&past).unwrap_err().to_string();
    assert!(
        message.contains("after the end of the archive") && message.contains("1 MiB"),
        "{message}"
    );
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Memory: each case is applied in a child process (this test binary run
// again, selecting the case with an environment variable), which reports
// its own peak resident memory (VmHWM) when done.

const CASE_VAR: &str = "STRATA_HOSTILE_CONTENT_CASE";

/// Ends a tar after its last member: two zero blocks.
fn end_blocks() -> Vec<u8> {
    vec![0u8; 1024]
}

fn header(name: &[u8], kind: u8, link: &[u8], size: u64) -> Vec<u8> {
    let mut tar = RawTar::new();
    tar.header(name, kind, link, size, 0o644);
    std::mem::take(&mut tar.bytes)
}

/// A GNU sparse (`S`) header whose map goes on in extension blocks.
fn gnu_sparse_header(name: &[u8]) -> Vec<u8> {
    let mut h = header(name, GNU_SPARSE, b"", 0);
    h[257..265].copy_from_slice(b"ustar  \0"); // GNU magic and version
    h[482] = 1; // isextended
    h[483..495].copy_from_slice(b"00000000000\0"); // real size 0
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A GNU sparse extension block: 21 empty-length regions at offset 0, and
/// "more follow".
fn gnu_sparse_extension() -> Vec<u8> {
    let mut block = vec![0u8; 512];
    for i in 0..21 {
        block[i * 24..i * 24 + 12].copy_from_slice(b"00000000000\0");
        block[i * 24 + 12..i * 24 + 24].copy_from_slice(b"00000000000\0");
    }
    block[504] = 1;
    block
}

/// The stream of one case, generated as it is read.
fn case_stream(case: &str) -> Box<dyn Read> {
    let small = || RawTar::new().file("f", b"data").finish();
    let stream = match case {
        // 1 GiB of zeros after the end-of-archive blocks.
        "trailing-1g" | "trailing-1g-gzip" => Generated::new().bytes(small()).repeat(&[0], GIB),
        // As much as the limit allows.
        "trailing-1m" => Generated::new().bytes(small()).repeat(&[0], MIB),
        // A PAX header declaring 1 GiB of (well-formed) records.
        "pax-1g" => Generated::new()
            .bytes(header(b"PaxHeaders/f", PAX, b"", GIB))
            .repeat(&comment_record(512), GIB)
            .bytes(small()),
        // A GNU long name of 1 GiB (and its NUL).
        "longname-1g" => Generated::new()
            .bytes(header(b"././@LongLink", GNU_LONGNAME, b"", GIB + 1))
            .repeat(b"a", GIB)
            .bytes(vec![0u8; 512])
            .bytes(small()),
        // A GNU long link name of 1 GiB, for a symlink.
        "longlink-1g" => Generated::new()
            .bytes(header(b"././@LongLink", GNU_LONGLINK, b"", GIB + 1))
            .repeat(b"a", GIB)
            .bytes(vec![0u8; 512])
            .bytes(header(b"l", SYMLINK, b"short", 0))
            .bytes(end_blocks()),
        // A GNU sparse map going on for 1 GiB of extension blocks.
        "sparse-map-1g" => Generated::new()
            .bytes(gnu_sparse_header(b"sparse"))
            .repeat(&gnu_sparse_extension(), GIB)
            .bytes(end_blocks()),
        other => match other.split_once('-') {
            // N empty files, or N directories, all at the root.
            Some(("files" | "dirs", count)) => {
                return Box::new(ManyMembers {
                    directories: other.starts_with("dirs"),
                    count: count.parse().unwrap(),
                    next: 0,
                    pending: Vec::new(),
                    at: 0,
                });
            }
            _ => panic!("no case {other}"),
        },
    };
    if case.ends_with("-gzip") {
        Box::new(flate2::read::GzEncoder::new(
            stream,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(stream)
    }
}

/// A tar of `count` distinct members, made as it is read.
struct ManyMembers {
    directories: bool,
    count: u64,
    next: u64,
    pending: Vec<u8>,
    at: usize,
}

impl Read for ManyMembers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.pending.len() {
            self.at = 0;
            self.pending = if self.next < self.count {
                let name = if self.directories {
                    format!("directory-{:010}/", self.next)
                } else {
                    format!("file-{:010}", self.next)
                };
                self.next += 1;
                let kind = if self.directories { b'5' } else { b'0' };
                header(name.as_bytes(), kind, b"", 0)
            } else if self.next == self.count {
                self.next += 1;
                end_blocks()
            } else {
                Vec::new()
            };
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn peak_resident_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// In the child process (the variable set): applies the case's stream,
/// recording tar-split too, prints the outcome and the peak resident memory,
/// and says it ran, for the test to return at once.
fn ran_as_child() -> bool {
    let Ok(case) = std::env::var(CASE_VAR) else {
        return false;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut record = io::sink();
    // "CASE-cap-N": CASE applied with at most N tracked paths.
    let (case, options) = match case.split_once("-cap-") {
        Some((case, cap)) => (
            case.to_string(),
            ApplyOptions {
                max_tracked_paths: cap.parse().unwrap(),
                ..Default::default()
            },
        ),
        None => (case, ApplyOptions::default()),
    };
    let outcome = apply_layer(dir.path(), case_stream(&case), &options, Some(&mut record));
    match outcome {
        Ok(report) => println!("outcome: ok {}", report.uncompressed_size),
        Err(e) => println!("outcome: error {:?}", e.to_string()),
    }
    println!("peak-kib: {}", peak_resident_kib());
    true
}

/// Applies `case` in a child process, this binary running only `test`
/// (which must start with `ran_as_child`): its outcome (the error message,
/// if any) and its peak resident memory in KiB.
fn in_child(test: &str, case: &str) -> (Result<u64, String>, u64) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CASE_VAR, case)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{case}: the child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| {
        stdout
            .lines()
            // (libtest's "test <name> ... " may precede it on its line)
            .find_map(|l| l.find(name).map(|at| &l[at + name.len()..]))
            .unwrap_or_else(|| panic!("{case}: no {name:?} in {stdout}"))
            .to_string()
    };
    let outcome = field("outcome: ");
    let outcome = match outcome.strip_prefix("ok ") {
        Some(size) => Ok(size.parse().unwrap()),
        None => Err(outcome.trim_start_matches("error ").to_string()),
    };
    let peak = field("peak-kib: ").parse().unwrap();
    println!(
        "{case}: peak resident memory {:.1} MiB",
        peak as f64 / 1024.0
    );
    assert!(
        peak < PEAK_LIMIT_KIB,
        "{case}: peak resident memory {peak} KiB, over {PEAK_LIMIT_KIB} KiB"
    );
    (outcome, peak)
}

/// Asserts the case was refused with a message holding every one of `words`.
fn refused(test: &str, case: &str, words: &[&str]) {
    let (outcome, _) = in_child(test, case);
    let message = outcome.expect_err(case);
    for word in words {
        assert!(message.contains(word), "{case}: {word:?} not in {message}");
    }
}

#[test]
fn trailing_data_is_accepted_within_its_limit_and_refused_past_it_in_bounded_memory() {
    const TEST: &str =
        "trailing_data_is_accepted_within_its_limit_and_refused_past_it_in_bounded_memory";
    if ran_as_child() {
        return;
    }
    let (outcome, _) = in_child(TEST, "trailing-1m");
    let size = outcome.expect("within the limit");
    assert_eq!(size, 4 * 512 + MIB);
    for case in ["trailing-1g", "trailing-1g-gzip"] {
        refused(TEST, case, &["after the end of the archive", "1 MiB"]);
    }
}

#[test]
fn a_gib_pax_header_is_refused_in_bounded_memory() {
    const TEST: &str = "a_gib_pax_header_is_refused_in_bounded_memory";
    if ran_as_child() {
        return;
    }
    let words = [
        "PAX extended header",
        "\\\"PaxHeaders/f\\\"",
        "at byte 0",
        "1073741824 bytes",
        "1 MiB",
    ];
    refused(TEST, "pax-1g", &words);
}

#[test]
fn a_gib_gnu_long_name_or_link_name_is_refused_in_bounded_memory() {
    const TEST: &str = "a_gib_gnu_long_name_or_link_name_is_refused_in_bounded_memory";
    if ran_as_child() {
        return;
    }
    let words = ["at byte 0", "1073741825 bytes", "64 KiB"];
    refused(
        TEST,
        "longname-1g",
        &[&["GNU long name"][..], &words].concat(),
    );
    refused(
        TEST,
        "longlink-1g",
        &[&["GNU long link name"][..], &words].concat(),
    );
}

#[test]
fn a_gib_sparse_map_is_refused_in_bounded_memory() {
    const TEST: &str = "a_gib_sparse_map_is_refused_in_bounded_memory";
    if ran_as_child() {
        return;
    }
    refused(
        TEST,
        "sparse-map-1g",
        &["\\\"sparse\\\"", "at byte 0", "regions"],
    );
}

#[test]
fn many_members_are_applied_in_bounded_memory() {
    const TEST: &str = "many_members_are_applied_in_bounded_memory";
    if ran_as_child() {
        return;
    }
    // Memory grows by a hash a path (9 bytes), not a path: 1.5 million
    // paths (the most an apply tracks) stay near 30 MiB.
    for case in ["files-200000", "dirs-100000"] {
        let (outcome, peak) = in_child(TEST, case);
        outcome.unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(peak < 16 * 1024, "{case}: {peak} KiB");
    }
    // Past the most paths tracked: refused, naming the member.
    for (case, member) in [
        ("files-3000-cap-1000", "file-0000000999"),
        ("dirs-3000-cap-1000", "directory-0000000999"),
    ] {
        refused(TEST, case, &[member, "more than 1000 paths"]);
    }
}
