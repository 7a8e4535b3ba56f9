//! Changes between trees, exported and applied back: the tree comes back the same.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use strata_archive::{
    ApplyOptions, ApplyTarget, ChangeKind, apply_layer, changes, export_changes, overlay_changes,
};
use strata_testkit::tree::{Compare, build_every_kind, compare_trees_with};

fn cp_a(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// A parent holding every kind of file, and a child that changes it in every way.
fn parent_and_child(scratch: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let parent = scratch.join("parent");
    fs::create_dir(&parent).unwrap();
    build_every_kind(&parent);
    fs::remove_file(parent.join("dev/log")).unwrap(); // tars cannot hold sockets
    let child = scratch.join("child");
    cp_a(&parent, &child);
    fs::write(child.join("etc/passwd"), b"rewritten, longer than before\n").unwrap(); // modify
    fs::write(child.join("etc/new-file"), b"added").unwrap(); // add
    fs::remove_file(child.join("etc/shadow")).unwrap(); // delete a file
    fs::remove_dir_all(child.join("home/user")).unwrap(); // delete a nested directory
    fs::remove_dir_all(child.join("var/mail")).unwrap(); // delete and re-create
    fs::create_dir(child.join("var/mail")).unwrap();
    fs::write(child.join("var/mail/fresh"), b"new mail").unwrap();
    fs::set_permissions(
        child.join("usr/bin/wall"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap(); // mode only
    fs::create_dir_all(child.join("opt/app/lib")).unwrap(); // a new subtree
    fs::write(child.join("opt/app/lib/x.so"), vec![1u8; 10_000]).unwrap();
    fs::hard_link(
        child.join("opt/app/lib/x.so"),
        child.join("opt/app/lib/x.so.1"),
    )
    .unwrap();
    std::os::unix::fs::symlink("x.so", child.join("opt/app/lib/link")).unwrap();
    // A new sparse file: export writes it densely, apply must keep its holes.
    let sparse = fs::File::create(child.join("opt/app/sparse.db")).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"header", 0).unwrap();
    sparse.write_all_at(b"trailer", 20 << 20).unwrap();
    (parent, child)
}

#[test]
fn changes_name_exactly_what_differs() {
    let scratch = tempfile::tempdir().unwrap();
    let (parent, child) = parent_and_child(scratch.path());
    let list = changes(&child, Some(&parent)).unwrap();
    let find = |p: &str| list.iter().find(|c| c.path == Path::new(p)).map(|c| c.kind);
    assert_eq!(find("etc/passwd"), Some(ChangeKind::Modify));
    assert_eq!(find("etc/new-file"), Some(ChangeKind::Add));
    assert_eq!(find("etc/shadow"), Some(ChangeKind::Delete));
    assert_eq!(find("home/user"), Some(ChangeKind::Delete));
    assert_eq!(
        find("home/user/.profile"),
        None,
        "only the top of a deleted subtree"
    );
    assert_eq!(find("usr/bin/wall"), Some(ChangeKind::Modify));
    assert_eq!(find("opt/app/lib/x.so.1"), Some(ChangeKind::Add));
    assert_eq!(
        find("etc"),
        Some(ChangeKind::Modify),
        "parents of changes are listed"
    );
    assert_eq!(
        find("usr/bin/su"),
        None,
        "an untouched file is not a change"
    );
    assert_eq!(find("var/sparse.img"), None);
    // Sorted: every directory before what it holds.
    for (i, change) in list.iter().enumerate() {
        if let Some(dir) = change.path.parent()
            && let Some(j) = list.iter().position(|c| c.path == dir)
        {
            assert!(
                j < i,
                "{} listed after {}",
                dir.display(),
                change.path.display()
            );
        }
    }
    assert!(changes(&parent, Some(&parent)).unwrap().is_empty());
}

#[test]
fn export_then_apply_onto_the_parent_gives_the_child_back() {
    let scratch = tempfile::tempdir().unwrap();
    let (parent, child) = parent_and_child(scratch.path());
    let list = changes(&child, Some(&parent)).unwrap();
    let mut tar = Vec::new();
    let exported = export_changes(&child, &list, &mut tar).unwrap();

    // Deterministic: the same changes give the same bytes.
    let mut again = Vec::new();
    export_changes(&child, &list, &mut again).unwrap();
    assert!(tar == again, "two exports of the same changes differ");

    let rebuilt = scratch.path().join("rebuilt");
    cp_a(&parent, &rebuilt);
    let applied = apply_layer(&rebuilt, &tar[..], &ApplyOptions::default(), None).unwrap();
    assert_eq!(
        applied.size, exported.size,
        "apply and export count size differently"
    );
    let no_atime = Compare { atime: false };
    let differences = compare_trees_with(&child, &rebuilt, no_atime);
    assert!(differences.is_empty(), "{}", differences.join("\n"));

    // The same stream into an overlay upper directory, read back natively,
    // exported and applied again: the same tree.
    let upper = scratch.path().join("upper");
    fs::create_dir(&upper).unwrap();
    let overlay = ApplyOptions {
        target: ApplyTarget::OVERLAY_UPPER,
        ..Default::default()
    };
    apply_layer(&upper, &tar[..], &overlay, None).unwrap();
    let native = overlay_changes(&upper, Some(&parent)).unwrap();
    assert!(
        native
            .iter()
            .any(|c| c.path == Path::new("etc/shadow") && c.kind == ChangeKind::Delete)
    );
    let mut tar2 = Vec::new();
    export_changes(&upper, &native, &mut tar2).unwrap();
    let rebuilt2 = scratch.path().join("rebuilt2");
    cp_a(&parent, &rebuilt2);
    apply_layer(&rebuilt2, &tar2[..], &ApplyOptions::default(), None).unwrap();
    let differences = compare_trees_with(&child, &rebuilt2, no_atime);
    assert!(
        differences.is_empty(),
        "native path: {}",
        differences.join("\n")
    );
}
