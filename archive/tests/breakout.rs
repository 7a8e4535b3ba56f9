//! Hostile layer streams: none may create, change or delete anything outside
//! the layer's root. Each case either is refused with an error naming the
//! member, or lands entirely inside the root (symlinks resolve as they would
//! in the container, where `/` is the root); the world outside is compared
//! before and after, always.

use strata_testkit::fixtures;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use fixtures::*;
use strata_archive::{ApplyOptions, ApplyTarget, apply_layer};

/// Every file under `dir` with its content (or link target), excluding `skip`.
fn world(dir: &Path, skip: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(dir: &Path, base: &Path, skip: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path == skip {
                continue;
            }
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel + "/", Vec::new());
                walk(&path, base, skip, out);
            } else if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    walk(dir, dir, skip, &mut out);
    out
}

enum Expect {
    /// Refused; the error names this text (the member).
    Refused(&'static str),
    /// Applied, confined to the root: this path exists inside the root.
    Confined(&'static str),
}

/// A unique name that must never appear on the host.
fn host_canary(case: usize) -> String {
    format!("strata-breakout-{}-{case}", std::process::id())
}

fn cases() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::*;
    let canary = |n: usize| host_canary(n);
    vec![
        (
            "dot-dot file",
            RawTar::new().file("../escape", b"x").finish(),
            Refused("../escape"),
        ),
        (
            "dot-dot twice",
            RawTar::new().file("../../escape", b"x").finish(),
            Refused("../../escape"),
        ),
        (
            "dot-dot after a dir",
            RawTar::new().file("a/../../escape", b"x").finish(),
            Refused("a/../../escape"),
        ),
        (
            "dot-dot after the root",
            RawTar::new().file("/../escape", b"x").finish(),
            Refused("/../escape"),
        ),
        (
            "dot-dot directory",
            RawTar::new().dir("../newdir/").finish(),
            Refused("../newdir/"),
        ),
        (
            "dot-dot symlink",
            RawTar::new().symlink("../link", "/").finish(),
            Refused("../link"),
        ),
        (
            "dot-dot device",
            RawTar::new()
                .header(b"../null", CHAR_DEVICE, b"", 0, 0o666)
                .finish(),
            Refused("../null"),
        ),
        (
            "dot-dot fifo",
            RawTar::new()
                .header(b"../fifo", FIFO, b"", 0, 0o666)
                .finish(),
            Refused("../fifo"),
        ),
        (
            "PAX path climbing out",
            RawTar::new()
                .pax(&[("path", b"../escape")])
                .file("innocent", b"x")
                .finish(),
            Refused("../escape"),
        ),
        (
            "GNU long name climbing out",
            RawTar::new()
                .gnu_long_name(b"../../escape")
                .file("innocent", b"x")
                .finish(),
            Refused("../../escape"),
        ),
        (
            "NUL in a PAX path",
            RawTar::new()
                .pax(&[("path", b"a\0b")])
                .file("innocent", b"x")
                .finish(),
            Refused("a"),
        ),
        (
            "hard link to a dot-dot target",
            RawTar::new().hard_link("hl", "../outside/secret").finish(),
            Refused("hl"),
        ),
        (
            "hard link to an absolute host file",
            RawTar::new().hard_link("hl", "/etc/passwd").finish(),
            Refused("hl"),
        ),
        (
            "hard link through a symlink to the host",
            RawTar::new()
                .symlink("sl", "/etc")
                .hard_link("hl", "sl/passwd")
                .finish(),
            Refused("hl"),
        ),
        (
            "hard link through a dot-dot symlink",
            RawTar::new()
                .symlink("sl", "../outside")
                .hard_link("hl", "sl/secret")
                .finish(),
            Refused("hl"),
        ),
        (
            "hard link to a directory",
            RawTar::new().dir("d/").hard_link("hl", "d").finish(),
            Refused("hl"),
        ),
        (
            "hard link to nothing",
            RawTar::new().hard_link("hl", "missing").finish(),
            Refused("hl"),
        ),
        (
            "whiteout of dot",
            RawTar::new().file(".wh..", b"").finish(),
            Refused(".wh.."),
        ),
        (
            "whiteout of dot-dot",
            RawTar::new().file(".wh...", b"").finish(),
            Refused(".wh..."),
        ),
        (
            "whiteout of nothing",
            RawTar::new().file("a/.wh.", b"").finish(),
            Refused("a/.wh."),
        ),
        (
            "whiteout climbing out",
            RawTar::new().file("../.wh.secret", b"").finish(),
            Refused("../.wh.secret"),
        ),
        (
            "a file standing for the root",
            RawTar::new().file("./", b"x").finish(),
            Refused("./"),
        ),
        (
            "a symlink standing for the root",
            RawTar::new().symlink(".", "/").finish(),
            Refused("."),
        ),
        (
            "a directory that climbs then names the root",
            RawTar::new().symlink("a/..", "/").finish(),
            Refused("a/.."),
        ),
        // Confined: these resolve inside the root, as in the container.
        (
            "write through a symlink to /",
            RawTar::new()
                .symlink("sl", "/")
                .file("sl/etc-evil", b"x")
                .finish(),
            Confined("etc-evil"),
        ),
        (
            "write through a dot-dot symlink",
            RawTar::new()
                .symlink("sl", "../..")
                .file("sl/pwned", b"x")
                .finish(),
            Confined("pwned"),
        ),
        (
            "write through a symlink chain",
            RawTar::new()
                .symlink("a", "b")
                .symlink("b", "../../..")
                .file("a/chained", b"x")
                .finish(),
            Confined("chained"),
        ),
        (
            "write through a dangling dot-dot symlink",
            RawTar::new()
                .symlink("sl", "../outside")
                .file("sl/pwned", b"x")
                .finish(),
            Refused("sl/pwned"),
        ),
        (
            "directory replaced by a symlink, then written through",
            RawTar::new()
                .dir("d/")
                .file("d/f", b"x")
                .symlink("d", "/")
                .file("d/through", b"x")
                .finish(),
            Confined("through"),
        ),
        (
            "directory made through a symlink",
            RawTar::new()
                .symlink("sl", "../../")
                .dir("sl/newdir/")
                .finish(),
            Confined("newdir"),
        ),
        (
            "absolute member name",
            RawTar::new()
                .file(&format!("/{}", canary(29)), b"x")
                .finish(),
            Confined(""),
        ),
        (
            "symlink to the host, then a file over it",
            RawTar::new()
                .symlink("sl", "/etc/passwd")
                .file("sl", b"mine")
                .finish(),
            Confined("sl"),
        ),
        (
            "whiteout under a symlinked parent",
            RawTar::new()
                .symlink("sl", "../..")
                .file("sl/.wh.secret", b"")
                .finish(),
            Confined("sl"),
        ),
        (
            "opaque marker under a dangling symlinked parent",
            RawTar::new()
                .symlink("sl", "../outside")
                .file("sl/.wh..wh..opq", b"")
                .finish(),
            Refused("sl/.wh..wh..opq"),
        ),
        (
            "opaque marker under a symlink to the root",
            RawTar::new()
                .symlink("sl", "../..")
                .file("sl/.wh..wh..opq", b"")
                .finish(),
            Confined(""),
        ),
        (
            "PAX symlink target to the host, written through",
            RawTar::new()
                .dir("etc/")
                .pax(&[("linkpath", b"/etc")])
                .symlink("sl", "x")
                .file("sl/host-evil", b"x")
                .finish(),
            Confined("etc/host-evil"),
        ),
        (
            "absolute symlink to a host path, file through it",
            RawTar::new()
                .symlink("sl", &format!("/tmp/{}", canary(34)))
                .file("sl", b"")
                .finish(),
            Confined("sl"),
        ),
    ]
}

#[test]
fn no_hostile_stream_touches_anything_outside_the_root() {
    let all = cases();
    assert!(all.len() >= 30, "the table has {} cases", all.len());
    for target in [ApplyTarget::Tree, ApplyTarget::OVERLAY_UPPER] {
        for (case, (what, tar, expect)) in all.iter().enumerate() {
            let scratch = tempfile::tempdir().unwrap();
            let outside = scratch.path().join("outside");
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("secret"), b"do not touch").unwrap();
            let root = scratch.path().join("root");
            fs::create_dir(&root).unwrap();
            fs::write(root.join("lower"), b"from a lower layer").unwrap();
            let before = world(scratch.path(), &root);

            let options = ApplyOptions {
                target,
                ..Default::default()
            };
            let result = apply_layer(&root, &tar[..], &options, None);

            let after = world(scratch.path(), &root);
            assert_eq!(
                before, after,
                "{target:?} {what}: the world outside the root changed"
            );
            for n in [29, 34] {
                let canary = host_canary(n);
                assert!(
                    !Path::new("/").join(&canary).exists(),
                    "{what}: created /{canary}"
                );
                assert!(
                    !Path::new("/tmp").join(&canary).exists(),
                    "{what}: created /tmp/{canary}"
                );
            }
            assert!(!Path::new("/etc/host-evil").exists() && !Path::new("/etc-evil").exists());
            match expect {
                Expect::Refused(name) => {
                    let err = result
                        .expect_err(&format!("{target:?} {what}: applied, expected a refusal"));
                    let text = err.to_string();
                    assert!(
                        text.contains(name),
                        "{what}: the error does not name {name:?}: {text}"
                    );
                }
                Expect::Confined(inside) => {
                    if let Err(e) = &result {
                        panic!(
                            "{target:?} {what}: refused ({e}), expected it confined to the root"
                        );
                    }
                    assert!(
                        fs::symlink_metadata(root.join(inside)).is_ok(),
                        "{target:?} {what}: {inside} is not inside the root"
                    );
                }
            }
            let _ = case;
        }
    }
}
