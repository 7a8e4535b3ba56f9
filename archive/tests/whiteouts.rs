//! Whiteouts and opaque directories, on a full tree and into an overlay upper
//! directory.

use strata_testkit::fixtures;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use fixtures::{RawTar, mount_overlay};
use strata_archive::{ApplyOptions, ApplyTarget, apply_layer};

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
    apply(dir.path(), &tar, ApplyTarget::OVERLAY_UPPER);
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

// ---------------------------------------------------------------------------
// The same layer through an overlay mount and onto a full tree.

/// One line per entry under `root` (the root itself left out: a merged
/// root takes the upper directory's own metadata): its path, kind, mode and
/// owner, and the contents, link target or device number.
fn snapshot(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let what = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_file() {
                format!(
                    "file {:?}",
                    String::from_utf8_lossy(&fs::read(&path).unwrap())
                )
            } else if ft.is_symlink() {
                format!("symlink {}", fs::read_link(&path).unwrap().display())
            } else {
                format!("special {:o} {}", meta.mode() & 0o170000, meta.rdev())
            };
            out.push(format!(
                "{rel} {what} {:o} {}:{}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ));
            if ft.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// What `tar` gives over the `lower()` tree, seen through an overlay mount
/// of the upper directory it is applied into; and the upper directory itself
/// (for its xattrs). Asserts that applying `tar` onto a full copy of the
/// lower tree gives the same tree.
fn through_overlay(scratch: &Path, tar: &[u8]) -> (Vec<String>, Vec<String>) {
    let lower_dir = scratch.join("lower");
    let upper = scratch.join("upper");
    let tree = scratch.join("tree");
    for dir in [&lower_dir, &upper, &tree] {
        fs::create_dir(dir).unwrap();
    }
    lower(&lower_dir);
    lower(&tree);
    apply(&tree, tar, ApplyTarget::Tree);
    let options = ApplyOptions {
        target: ApplyTarget::OVERLAY_UPPER,
        lower: Some(lower_dir.clone()),
        ..Default::default()
    };
    apply_layer(&upper, tar, &options, None).unwrap();
    let mounted = mount_overlay(scratch, &lower_dir, &upper);
    let merged = snapshot(&mounted.merged);
    let full_tree = snapshot(&tree);
    drop(mounted);
    assert_eq!(
        merged, full_tree,
        "the overlay's merged view and the full tree differ"
    );
    (merged, listing(&upper))
}

/// The paths of a snapshot, directories with a trailing `/`.
fn paths(snapshot: &[String]) -> Vec<String> {
    snapshot
        .iter()
        .map(|line| {
            let mut words = line.split(' ');
            let path = words.next().unwrap();
            if words.next() == Some("dir") {
                format!("{path}/")
            } else {
                path.to_string()
            }
        })
        .collect()
}

fn contents<'a>(snapshot: &'a [String], path: &str) -> &'a str {
    let prefix = format!("{path} ");
    snapshot
        .iter()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{path} not in {snapshot:?}"))
}

fn is_opaque(dir: &Path) -> bool {
    let mut value = [0u8; 8];
    matches!(
        rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut value[..]),
        Ok(1) if value[0] == b'y'
    )
}

fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

#[test]
fn an_opaque_root_hides_the_whole_lower_tree_through_overlay() {
    // Entries made before the marker, after it, in a lower directory the
    // layer only writes into, and over a whiteout of its own.
    let scratch = tempfile::tempdir().unwrap();
    let tar = RawTar::new()
        .file("first", b"1")
        .dir("keep/")
        .file("keep/new", b"n")
        .file(".wh.top1", b"")
        .file("a/new", b"a") // a lower directory, written into before the marker
        .file("a/b/.wh.c", b"") // then only whited out in: it goes with the marker
        .file(".wh..wh..opq", b"")
        .file("last", b"2")
        .file("dir/sub/late", b"l") // lower directories, written into after the marker
        .file(".wh.file", b"")
        .file("file", b"re-created") // replaces the whiteout just made
        .finish();
    let (merged, upper) = through_overlay(scratch.path(), &tar);
    assert_eq!(
        paths(&merged),
        [
            "a/",
            "a/new",
            "dir/",
            "dir/sub/",
            "dir/sub/late",
            "file",
            "first",
            "keep/",
            "keep/new",
            "last"
        ]
    );
    assert!(contents(&merged, "file").starts_with("file \"re-created\""));
    // Every other lower root entry is whited out in the upper root.
    for name in [".hidden", "opq", "top1", "top2"] {
        assert!(
            is_whiteout(&scratch.path().join("upper").join(name)),
            "{name}: {upper:?}"
        );
    }

    // The marker first: everything after it stays.
    let scratch = tempfile::tempdir().unwrap();
    let tar = RawTar::new()
        .file(".wh..wh..opq", b"")
        .dir("opq/")
        .file("opq/z", b"new z")
        .file("a/b/.wh.c", b"") // only a whiteout in a hidden directory
        .finish();
    let (merged, _) = through_overlay(scratch.path(), &tar);
    // A whiteout's directory is made (as containers/storage makes it), but
    // nothing of the lower `a/b` shows in it, nor the whiteout itself.
    assert_eq!(paths(&merged), ["a/", "a/b/", "opq/", "opq/z"]);
    assert!(contents(&merged, "opq/z").starts_with("file \"new z\""));
}

#[test]
fn a_directory_whited_out_and_re_created_in_one_layer_hides_the_lower_one() {
    // (the layer's members, what the merged `dir` then holds)
    let cases: [(&[&str], &[&str]); 7] = [
        (&[".wh.dir", "dir/", "dir/y"], &["dir/", "dir/y"]),
        (&["dir/", "dir/y", ".wh.dir"], &["dir/", "dir/y"]),
        // Without a member for the directory itself.
        (&[".wh.dir", "dir/y"], &["dir/", "dir/y"]),
        (&["dir/y", ".wh.dir"], &["dir/", "dir/y"]),
        // Deeper: the lower `dir/sub` does not come back either.
        (
            &[".wh.dir", "dir/sub/y"],
            &["dir/", "dir/sub/", "dir/sub/y"],
        ),
        // Other whiteouts inside, before and after: no lower entry to hide.
        (&["dir/y", "dir/sub/.wh.x", ".wh.dir"], &["dir/", "dir/y"]),
        (&[".wh.dir", "dir/.wh.sub", "dir/y"], &["dir/", "dir/y"]),
    ];
    for (members, expected) in cases {
        let scratch = tempfile::tempdir().unwrap();
        let mut tar = RawTar::new();
        for member in members {
            if member.ends_with('/') {
                tar.dir(member);
            } else {
                tar.file(member, b"");
            }
        }
        let (merged, upper) = through_overlay(scratch.path(), &tar.finish());
        let in_dir: Vec<String> = paths(&merged)
            .into_iter()
            .filter(|p| p.starts_with("dir/"))
            .collect();
        assert_eq!(in_dir, expected, "{members:?}");
        assert!(
            is_opaque(&scratch.path().join("upper/dir")),
            "{members:?}: dir is not opaque in the upper: {upper:?}"
        );
        // The rest of the lower tree is untouched.
        assert!(paths(&merged).contains(&"a/b/c".to_string()), "{members:?}");
    }
}

#[test]
fn a_file_re_created_after_its_whiteout_replaces_it() {
    for members in [
        &[".wh.file", "file"][..],
        &[".wh.dir", "dir"][..], // a file where the lower layer had a directory
    ] {
        let scratch = tempfile::tempdir().unwrap();
        let name = members[1];
        let tar = RawTar::new()
            .file(members[0], b"")
            .file(name, b"new")
            .finish();
        let (merged, upper) = through_overlay(scratch.path(), &tar);
        assert!(
            contents(&merged, name).starts_with("file \"new\""),
            "{members:?}: {merged:?}"
        );
        assert!(
            !is_whiteout(&scratch.path().join("upper").join(name)),
            "{upper:?}"
        );
        // Nothing of a lower directory by that name shows.
        let below = format!("{name}/");
        assert!(
            !paths(&merged).iter().any(|p| p.starts_with(&below)),
            "{merged:?}"
        );
    }
}
