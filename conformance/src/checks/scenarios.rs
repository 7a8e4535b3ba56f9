//! Small layer histories that tree-comparing and native diffs have got wrong
//! elsewhere: owner-only and mode-only changes, a rename over an existing
//! file, hard links made or broken in a child, directory modes across three
//! layers. Each is checked in the layers themselves, by its exact changes,
//! and through the diff: exported by core and applied to a fresh child of
//! the same parent, it must give the same tree.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::diff::{changes_are, expected, round_trip};
use super::{Layers, check, io, needs_root, set_mtime};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "diff/chown-only-change",
            "A child that only changes the owner of a parent's file and directory has exactly those two Modify changes, and its diff applied to a fresh child of the same parent gives the same tree, owners included (needs root).",
            chown_only_change,
        ),
        check(
            "diff/mode-only-change",
            "A child that only changes the mode of a parent's file and directory has exactly those two Modify changes, and its diff applied to a fresh child of the same parent gives the same tree, modes included.",
            mode_only_change,
        ),
        check(
            "diff/overwrite-by-rename",
            "A child renaming the parent's b over the parent's a reads b's content as a and has no b; its changes are exactly Modify a and Delete b, the parent keeps both, and its diff applied to a fresh child of the same parent gives the same tree.",
            overwrite_by_rename,
        ),
        check(
            "diff/link-lower-file-then-delete-original",
            "A child hard-linking a parent's file under a new name and deleting the original reads the content under the new name only; its changes are exactly Add of the new name and Delete of the original, the parent keeps the original, and its diff applied to a fresh child of the same parent gives the same tree.",
            link_lower_then_delete_original,
        ),
        check(
            "diff/directory-permissions-across-three-layers",
            "A directory made 0700 in a base, chmodded to 0755 with a file added in a child, and given another file in a grandchild shows mode 0700, 0755, 0755 and exactly its files at each layer, and each layer's diff applied to a fresh child of its parent gives the same tree.",
            directory_permissions_across_three_layers,
        ),
        check(
            "diff/unlink-one-name-of-a-hard-link",
            "A child removing one of two names of a parent's hard link keeps the other name's content; its changes are exactly Delete of that name and Modify of its directory, and its diff applied to a fresh child of the same parent gives the same tree (the remaining link count is not prescribed).",
            unlink_one_name_of_a_hard_link,
        ),
    ]
}

fn write(path: &Path, data: &[u8]) -> CheckOutcome {
    io(format!("write {}", path.display()), fs::write(path, data))
}

fn mkdir(path: &Path, mode: u32) -> CheckOutcome {
    io(format!("mkdir {}", path.display()), fs::create_dir(path))?;
    chmod(path, mode)
}

fn chmod(path: &Path, mode: u32) -> CheckOutcome {
    io(
        format!("chmod {}", path.display()),
        fs::set_permissions(path, fs::Permissions::from_mode(mode)),
    )
}

/// A layer without parent, filled by `fill`.
fn parent_with(
    layers: &mut Layers,
    id: &str,
    fill: impl FnOnce(&Path) -> CheckOutcome,
) -> CheckOutcome {
    layers.create(id, None)?;
    let path = layers.mount(id)?;
    let filled = fill(&path);
    layers.unmount(id)?;
    filled
}

/// A child of `parent` changed by `change`.
fn child_with(
    layers: &mut Layers,
    id: &str,
    parent: &str,
    change: impl FnOnce(&Path) -> CheckOutcome,
) -> CheckOutcome {
    layers.create(id, Some(parent))?;
    let path = layers.mount(id)?;
    let changed = change(&path);
    layers.unmount(id)?;
    changed
}

fn chown_only_change(suite: &Suite) -> CheckOutcome {
    needs_root()?;
    let (parent, child) = ("conformance-chown-parent", "conformance-chown-child");
    let mut layers = Layers::new(suite.driver);
    parent_with(&mut layers, parent, |p| {
        mkdir(&p.join("etc"), 0o755)?;
        write(&p.join("etc/owned"), b"owner changes, content does not")?;
        mkdir(&p.join("srv"), 0o755)?;
        write(&p.join("srv/inside"), b"untouched")
    })?;
    child_with(&mut layers, child, parent, |c| {
        for rel in ["etc/owned", "srv"] {
            io(
                format!("chown {rel}"),
                std::os::unix::fs::lchown(c.join(rel), Some(1000), Some(1001)),
            )?;
        }
        Ok(())
    })?;
    let path = layers.mount(child)?;
    let owners: Vec<(u32, u32)> = ["etc/owned", "srv", "srv/inside"]
        .iter()
        .map(|rel| {
            fs::symlink_metadata(path.join(rel))
                .map(|m| (m.uid(), m.gid()))
                .unwrap_or((u32::MAX, u32::MAX))
        })
        .collect();
    let content = fs::read(path.join("etc/owned")).unwrap_or_default();
    layers.unmount(child)?;
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    ensure!(
        owners == [(1000, 1001), (1000, 1001), me],
        "owners in the child (etc/owned, srv, srv/inside): {owners:?}"
    );
    ensure!(
        content == b"owner changes, content does not",
        "a chown changed the file's content to {content:?}"
    );
    changes_are(
        suite,
        &layers,
        child,
        Some(parent),
        &expected(&[("etc", "M"), ("etc/owned", "M"), ("srv", "M")]),
    )?;
    round_trip(suite, &mut layers, parent, child, "conformance-chown-twin")
}

fn mode_only_change(suite: &Suite) -> CheckOutcome {
    let (parent, child) = ("conformance-chmod-parent", "conformance-chmod-child");
    let mut layers = Layers::new(suite.driver);
    parent_with(&mut layers, parent, |p| {
        mkdir(&p.join("etc"), 0o755)?;
        write(&p.join("etc/secret"), b"mode changes, content does not")?;
        chmod(&p.join("etc/secret"), 0o644)?;
        mkdir(&p.join("srv"), 0o755)?;
        write(&p.join("srv/inside"), b"untouched")
    })?;
    child_with(&mut layers, child, parent, |c| {
        chmod(&c.join("etc/secret"), 0o2640)?;
        chmod(&c.join("srv"), 0o1750)
    })?;
    let path = layers.mount(child)?;
    let modes: Vec<u32> = ["etc/secret", "srv"]
        .iter()
        .map(|rel| {
            fs::symlink_metadata(path.join(rel))
                .map(|m| m.mode() & 0o7777)
                .unwrap_or(0)
        })
        .collect();
    let content = fs::read(path.join("etc/secret")).unwrap_or_default();
    layers.unmount(child)?;
    ensure!(
        modes == [0o2640, 0o1750],
        "modes in the child (etc/secret, srv): {:o} and {:o}, expected 2640 and 1750",
        modes[0],
        modes[1]
    );
    ensure!(
        content == b"mode changes, content does not",
        "a chmod changed the file's content to {content:?}"
    );
    changes_are(
        suite,
        &layers,
        child,
        Some(parent),
        &expected(&[("etc", "M"), ("etc/secret", "M"), ("srv", "M")]),
    )?;
    round_trip(suite, &mut layers, parent, child, "conformance-chmod-twin")
}

fn overwrite_by_rename(suite: &Suite) -> CheckOutcome {
    let (parent, child) = ("conformance-mvover-parent", "conformance-mvover-child");
    let mut layers = Layers::new(suite.driver);
    parent_with(&mut layers, parent, |p| {
        mkdir(&p.join("dir"), 0o755)?;
        // Sizes and times differ, so the rename shows by either.
        write(&p.join("dir/a"), b"a")?;
        write(&p.join("dir/b"), b"b, renamed over a")?;
        set_mtime(&p.join("dir/a"), 1_600_000_000)?;
        set_mtime(&p.join("dir/b"), 1_600_000_100)
    })?;
    child_with(&mut layers, child, parent, |c| {
        io(
            "rename b over a",
            fs::rename(c.join("dir/b"), c.join("dir/a")),
        )
    })?;
    for (id, a, b) in [
        (child, &b"b, renamed over a"[..], None),
        (parent, &b"a"[..], Some(&b"b, renamed over a"[..])),
    ] {
        let path = layers.mount(id)?;
        let read_a = fs::read(path.join("dir/a")).ok();
        let read_b = fs::read(path.join("dir/b")).ok();
        layers.unmount(id)?;
        ensure!(
            read_a.as_deref() == Some(a) && read_b.as_deref() == b,
            "{id} reads a as {read_a:?} and b as {read_b:?}"
        );
    }
    changes_are(
        suite,
        &layers,
        child,
        Some(parent),
        &expected(&[("dir", "M"), ("dir/a", "M"), ("dir/b", "D")]),
    )?;
    round_trip(suite, &mut layers, parent, child, "conformance-mvover-twin")
}

fn link_lower_then_delete_original(suite: &Suite) -> CheckOutcome {
    let (parent, child) = ("conformance-lnmv-parent", "conformance-lnmv-child");
    let mut layers = Layers::new(suite.driver);
    parent_with(&mut layers, parent, |p| {
        mkdir(&p.join("dir"), 0o755)?;
        write(&p.join("dir/original"), b"linked from below")
    })?;
    child_with(&mut layers, child, parent, |c| {
        io(
            "hard-link the parent's file",
            fs::hard_link(c.join("dir/original"), c.join("dir/linked")),
        )?;
        io(
            "delete the original",
            fs::remove_file(c.join("dir/original")),
        )
    })?;
    let path = layers.mount(child)?;
    let linked = fs::read(path.join("dir/linked")).ok();
    let original = path.join("dir/original").exists();
    layers.unmount(child)?;
    let path = layers.mount(parent)?;
    let parent_original = fs::read(path.join("dir/original")).ok();
    let parent_linked = path.join("dir/linked").exists();
    layers.unmount(parent)?;
    ensure!(
        linked.as_deref() == Some(&b"linked from below"[..]) && !original,
        "the child reads the new name as {linked:?}, and the original is there: {original}"
    );
    ensure!(
        parent_original.as_deref() == Some(&b"linked from below"[..]) && !parent_linked,
        "the parent changed: original {parent_original:?}, new name there: {parent_linked}"
    );
    changes_are(
        suite,
        &layers,
        child,
        Some(parent),
        &expected(&[("dir", "M"), ("dir/linked", "A"), ("dir/original", "D")]),
    )?;
    round_trip(suite, &mut layers, parent, child, "conformance-lnmv-twin")
}

/// The mode of `dir` and the names in it, in `id`.
fn mode_and_names(layers: &Layers, id: &str, dir: &str) -> Result<(u32, Vec<String>), Verdict> {
    let path = layers.mount(id)?;
    let mode = fs::symlink_metadata(path.join(dir)).map(|m| m.mode() & 0o7777);
    let names = fs::read_dir(path.join(dir)).map(|list| {
        let mut names: Vec<String> = list
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    });
    layers.unmount(id)?;
    Ok((
        io(format!("stat {dir} in {id}"), mode)?,
        io(format!("list {dir} in {id}"), names)?,
    ))
}

fn directory_permissions_across_three_layers(suite: &Suite) -> CheckOutcome {
    let (base, middle, top) = (
        "conformance-dirperm-base",
        "conformance-dirperm-middle",
        "conformance-dirperm-top",
    );
    let mut layers = Layers::new(suite.driver);
    parent_with(&mut layers, base, |p| {
        mkdir(&p.join("dir"), 0o700)?;
        write(&p.join("dir/one"), b"1")
    })?;
    child_with(&mut layers, middle, base, |c| {
        chmod(&c.join("dir"), 0o755)?;
        write(&c.join("dir/two"), b"2")
    })?;
    child_with(&mut layers, top, middle, |c| {
        write(&c.join("dir/three"), b"3")
    })?;
    for (id, mode, names) in [
        (base, 0o700, &["one"][..]),
        (middle, 0o755, &["one", "two"][..]),
        (top, 0o755, &["one", "three", "two"][..]),
    ] {
        let (found_mode, found_names) = mode_and_names(&layers, id, "dir")?;
        ensure!(
            found_mode == mode && found_names == names,
            "{id}: dir has mode {found_mode:o} and holds {found_names:?}, expected {mode:o} and {names:?}"
        );
    }
    changes_are(
        suite,
        &layers,
        middle,
        Some(base),
        &expected(&[("dir", "M"), ("dir/two", "A")]),
    )?;
    changes_are(
        suite,
        &layers,
        top,
        Some(middle),
        &expected(&[("dir", "M"), ("dir/three", "A")]),
    )?;
    round_trip(
        suite,
        &mut layers,
        base,
        middle,
        "conformance-dirperm-twin1",
    )?;
    round_trip(suite, &mut layers, middle, top, "conformance-dirperm-twin2")
}

fn unlink_one_name_of_a_hard_link(suite: &Suite) -> CheckOutcome {
    let (parent, child) = ("conformance-unlink-parent", "conformance-unlink-child");
    let mut layers = Layers::new(suite.driver);
    parent_with(&mut layers, parent, |p| {
        mkdir(&p.join("links"), 0o755)?;
        write(&p.join("links/one"), b"two names, one file")?;
        io(
            "link",
            fs::hard_link(p.join("links/one"), p.join("links/two")),
        )
    })?;
    child_with(&mut layers, child, parent, |c| {
        io("unlink one name", fs::remove_file(c.join("links/two")))
    })?;
    let path = layers.mount(child)?;
    let one = fs::read(path.join("links/one")).ok();
    let two = path.join("links/two").exists();
    layers.unmount(child)?;
    let path = layers.mount(parent)?;
    let parent_both = fs::read(path.join("links/one")).ok()
        == fs::read(path.join("links/two")).ok()
        && path.join("links/two").exists();
    layers.unmount(parent)?;
    ensure!(
        one.as_deref() == Some(&b"two names, one file"[..]),
        "after one name was removed the other reads {one:?}"
    );
    ensure!(!two, "the removed name is still there in the child");
    ensure!(parent_both, "the parent lost a name of its hard link");
    changes_are(
        suite,
        &layers,
        child,
        Some(parent),
        &expected(&[("links", "M"), ("links/two", "D")]),
    )?;
    round_trip(suite, &mut layers, parent, child, "conformance-unlink-twin")
}
