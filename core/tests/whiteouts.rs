//! Whiteouts and opaque directories, on a full tree and into an overlay upper
//! directory.

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use strata_core::archive::{ApplyOptions, ApplyTarget, apply_layer};
use support::RawTar;

/// A lower layer's tree.
fn lower(root: &Path) {
    for dir in ["a/b", "dir/sub", "opq/old", "keep"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    for file in [
        "file",
        ".hidden",
        "a/b/c",
        "a/b/d",
        "dir/sub/x",
        "opq/old/y",
        "opq/z",
        "keep/k",
        "top1",
        "top2",
    ] {
        fs::write(root.join(file), file.as_bytes()).unwrap();
    }
}

fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &e.path(), out);
            } else {
                out.push(rel);
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

fn apply(root: &Path, tar: &[u8], target: ApplyTarget) {
    let options = ApplyOptions {
        target,
        ..Default::default()
    };
    apply_layer(root, tar, &options, None).unwrap();
}

#[test]
fn whiteouts_delete_on_a_full_tree() {
    let dir = tempfile::tempdir().unwrap();
    lower(dir.path());
    let tar = RawTar::new()
        .file(".wh.file", b"")
        .file(".wh..hidden", b"") // a dotfile's whiteout
        .file("a/b/.wh.c", b"") // nested
        .file(".wh.dir", b"") // a whole directory
        .file("a/.wh.not-there", b"") // nothing to delete is fine
        .finish();
    apply(dir.path(), &tar, ApplyTarget::Tree);
    assert_eq!(
        listing(dir.path()),
        [
            "a/",
            "a/b/",
            "a/b/d",
            "keep/",
            "keep/k",
            "opq/",
            "opq/old/",
            "opq/old/y",
            "opq/z",
            "top1",
            "top2"
        ]
    );
}

#[test]
fn opaque_directories_keep_only_this_layers_entries_whatever_their_order() {
    let dir = tempfile::tempdir().unwrap();
    lower(dir.path());
    let tar = RawTar::new()
        .dir("opq/")
        .file("opq/before", b"same layer, before the marker")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/after", b"same layer, after the marker")
        .finish();
    apply(dir.path(), &tar, ApplyTarget::Tree);
    assert_eq!(listing(&dir.path().join("opq")), ["after", "before"]);

    // Opaque at the root, with entries before and after the marker.
    let dir = tempfile::tempdir().unwrap();
    lower(dir.path());
    let tar = RawTar::new()
        .file("first", b"1")
        .dir("keep/")
        .file("keep/new", b"n")
        .file(".wh..wh..opq", b"")
        .file("last", b"2")
        .finish();
    apply(dir.path(), &tar, ApplyTarget::Tree);
    assert_eq!(listing(dir.path()), ["first", "keep/", "keep/new", "last"]);
}

#[test]
fn into_an_overlay_upper_directory_whiteouts_become_devices_and_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let tar = RawTar::new()
        .file(".wh.gone", b"")
        .file("a/b/.wh..hidden", b"")
        .dir("opq/")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/kept", b"k")
        .finish();
    apply(dir.path(), &tar, ApplyTarget::OverlayUpper);
    for whiteout in ["gone", "a/b/.hidden"] {
        let meta = fs::symlink_metadata(dir.path().join(whiteout)).unwrap();
        assert!(
            meta.file_type().is_char_device(),
            "{whiteout} is not a character device"
        );
        assert_eq!(meta.rdev(), 0, "{whiteout} is not 0:0");
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
    }
    let mut value = [0u8; 8];
    let n = rustix::fs::getxattr(
        dir.path().join("opq"),
        "trusted.overlay.opaque",
        &mut value[..],
    )
    .unwrap();
    assert_eq!(&value[..n], b"y");
    assert_eq!(fs::read(dir.path().join("opq/kept")).unwrap(), b"k");
    // Nothing named .wh.* was written.
    assert!(
        listing(dir.path()).iter().all(|p| !p.contains(".wh.")),
        "{:?}",
        listing(dir.path())
    );
}

#[test]
fn a_whiteout_is_refused_when_it_names_no_single_entry() {
    let dir = tempfile::tempdir().unwrap();
    lower(dir.path());
    for name in [".wh..", ".wh...", "a/.wh."] {
        let tar = RawTar::new().file(name, b"").finish();
        let err = apply_layer(dir.path(), &tar[..], &ApplyOptions::default(), None).unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
    // AUFS bookkeeping entries are ignored, not applied.
    let tar = RawTar::new()
        .file(".wh..wh.plnk/123.456", b"")
        .file(".wh..wh.aufs", b"")
        .finish();
    apply(dir.path(), &tar, ApplyTarget::Tree);
    assert!(!dir.path().join(".wh..wh.aufs").exists());
}
