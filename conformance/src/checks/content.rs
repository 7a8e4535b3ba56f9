//! Content across snapshots: what a child shows and what it keeps to itself.

use std::fs;
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::{Layers, check, io, needs_root, set_mtime};
use crate::tree::{Compare, compare_trees_with};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure, tree};

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "content/snapshot-keeps-every-file-kind",
            "A child shows every entry of its parent exactly: modes with setuid/setgid/sticky, owners, times, xattrs, hard links, symlinks, devices, fifos, sockets and holes (needs root).",
            snapshot_keeps_every_file_kind,
        ),
        check(
            "content/snapshot-keeps-file-capabilities",
            "A parent's file capability (security.capability) is in its child, where the filesystem under the home can store one.",
            snapshot_keeps_file_capabilities,
        ),
        check(
            "content/child-writes-stay-in-child",
            "Writes and new files in a child never show in its parent.",
            child_writes_stay_in_child,
        ),
        check(
            "content/same-size-rewrite-and-mode-only-change",
            "A same-size rewrite and a mode-only change in a child read back as made, and the parent keeps its content and mode.",
            rewrite_and_mode_change,
        ),
        check(
            "content/deletions-stay-deleted",
            "Files and directories deleted in a child stay deleted in it and in its children, a re-created directory holds only its new entries, and the parent keeps everything.",
            deletions_stay_deleted,
        ),
        check(
            "content/rename-files",
            "Files renamed in a child, within and across directories, are found under their new names only.",
            rename_files,
        ),
        check(
            "content/rename-directory",
            "A parent's directory renamed in a child keeps its contents under the new name (EXDEV is reported as a skip: callers must copy).",
            rename_directory,
        ),
        check(
            "content/128-layers-recreate-the-same-entries",
            "In a stack of 128 layers, each deleting and re-creating the same two names, one as a file and the other as a directory (swapped at every layer), with content of its own, every layer's tree equals a plain directory to which the same steps were applied in order.",
            recreate_the_same_entries,
        ),
        check(
            "content/hard-links-across-layers",
            "A parent's hard links are one file with two links in a child, and a child can hard-link a parent's file.",
            hard_links_across_layers,
        ),
    ]
}

fn snapshot_keeps_every_file_kind(suite: &Suite) -> CheckOutcome {
    needs_root()?;
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-kinds-parent", None)?;
    let parent = layers.mount("conformance-kinds-parent")?;
    // File capabilities have a check of their own. What the filesystem
    // under the home cannot hold at all is left out, and said below.
    let omitted: Vec<String> = tree::build_every_kind_that_fits(&parent)
        .into_iter()
        .filter(|item| !item.contains("file capability"))
        .collect();
    io(
        "chmod",
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o750)),
    )?;
    // Written through to the disk and mounted afresh before the child is
    // made and the two compared: where allocation is delayed (ZFS) and
    // attributes are cached (FUSE), a file just written reports almost no
    // blocks, and the child's would look like lost holes.
    let root = io("open the parent's tree", fs::File::open(&parent))?;
    io(
        "sync the parent's filesystem",
        rustix::fs::syncfs(&root).map_err(Into::into),
    )?;
    drop(root);
    layers.unmount("conformance-kinds-parent")?;
    let parent = layers.mount("conformance-kinds-parent")?;
    layers.create("conformance-kinds-child", Some("conformance-kinds-parent"))?;
    let child = layers.mount("conformance-kinds-child")?;
    let differences = tree::compare_trees(&parent, &child);
    layers.unmount("conformance-kinds-child")?;
    layers.unmount("conformance-kinds-parent")?;
    ensure!(
        differences.is_empty(),
        "the child differs from its parent:\n{}",
        differences.join("\n")
    );
    if !omitted.is_empty() {
        return Err(Verdict::Skip(format!(
            "every other entry was kept, but the filesystem under the home cannot hold: {}",
            omitted.join("; ")
        )));
    }
    Ok(())
}

fn snapshot_keeps_file_capabilities(suite: &Suite) -> CheckOutcome {
    needs_root()?;
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-caps-parent", None)?;
    let parent = layers.mount("conformance-caps-parent")?;
    let ping = parent.join("ping");
    io("write", fs::write(&ping, b"ping"))?;
    let set = rustix::fs::lsetxattr(
        &ping,
        "security.capability",
        &tree::NET_BIND_CAPABILITY,
        rustix::fs::XattrFlags::empty(),
    );
    layers.unmount("conformance-caps-parent")?;
    match set {
        Ok(()) => {}
        Err(rustix::io::Errno::OPNOTSUPP) => {
            return Err(Verdict::Skip(
                "the filesystem under the home cannot store file capabilities \
                 (security.capability): there is nothing for the driver to keep"
                    .into(),
            ));
        }
        Err(e) => {
            return Err(Verdict::Fail(format!(
                "set security.capability in a layer: {e}"
            )));
        }
    }
    layers.create("conformance-caps-child", Some("conformance-caps-parent"))?;
    let child = layers.mount("conformance-caps-child")?;
    let mut value = vec![0u8; 64];
    let read = rustix::fs::lgetxattr(child.join("ping"), "security.capability", &mut value);
    layers.unmount("conformance-caps-child")?;
    let length =
        read.map_err(|e| Verdict::Fail(format!("the child's copy lost its file capability: {e}")))?;
    ensure!(
        value[..length] == tree::NET_BIND_CAPABILITY,
        "the child's file capability differs from its parent's"
    );
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> CheckOutcome {
    io(format!("write {}", path.display()), fs::write(path, data))
}

fn child_writes_stay_in_child(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-iso-parent", None)?;
    let parent = layers.mount("conformance-iso-parent")?;
    write(&parent.join("shared"), b"parent")?;
    layers.create("conformance-iso-child", Some("conformance-iso-parent"))?;
    let child = layers.mount("conformance-iso-child")?;
    write(&child.join("shared"), b"child")?;
    write(&child.join("new"), b"only in child")?;
    let parent_shared = fs::read(parent.join("shared")).unwrap_or_default();
    let leaked = parent.join("new").exists();
    layers.unmount("conformance-iso-child")?;
    layers.unmount("conformance-iso-parent")?;
    ensure!(
        parent_shared == b"parent",
        "a write in the child changed the parent's file"
    );
    ensure!(
        !leaked,
        "a file created in the child appeared in the parent"
    );
    Ok(())
}

fn rewrite_and_mode_change(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-rw-parent", None)?;
    let parent = layers.mount("conformance-rw-parent")?;
    write(&parent.join("same-size"), b"aaaa")?;
    write(&parent.join("mode-only"), b"keep")?;
    io(
        "chmod",
        fs::set_permissions(parent.join("mode-only"), fs::Permissions::from_mode(0o644)),
    )?;
    layers.unmount("conformance-rw-parent")?;
    layers.create("conformance-rw-child", Some("conformance-rw-parent"))?;
    let child = layers.mount("conformance-rw-child")?;
    write(&child.join("same-size"), b"bbbb")?;
    io(
        "chmod",
        fs::set_permissions(child.join("mode-only"), fs::Permissions::from_mode(0o4750)),
    )?;
    let rewritten = fs::read(child.join("same-size")).unwrap_or_default();
    let mode = io("stat", fs::metadata(child.join("mode-only")))?.mode() & 0o7777;
    let kept = fs::read(child.join("mode-only")).unwrap_or_default();
    layers.unmount("conformance-rw-child")?;
    let parent = layers.mount("conformance-rw-parent")?;
    let parent_same = fs::read(parent.join("same-size")).unwrap_or_default();
    let parent_mode = io("stat", fs::metadata(parent.join("mode-only")))?.mode() & 0o7777;
    layers.unmount("conformance-rw-parent")?;
    ensure!(
        rewritten == b"bbbb",
        "a same-size rewrite reads back {rewritten:?}"
    );
    ensure!(
        mode == 0o4750 && kept == b"keep",
        "a mode-only change gave mode {mode:o}, content {kept:?}"
    );
    ensure!(
        parent_same == b"aaaa" && parent_mode == 0o644,
        "the parent changed with its child"
    );
    Ok(())
}

fn deletions_stay_deleted(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-del-parent", None)?;
    let parent = layers.mount("conformance-del-parent")?;
    io("mkdir", fs::create_dir_all(parent.join("nested/deeper")))?;
    io("mkdir", fs::create_dir_all(parent.join("recreated")))?;
    write(&parent.join("file"), b"x")?;
    write(&parent.join("nested/deeper/leaf"), b"x")?;
    write(&parent.join("recreated/old"), b"x")?;
    layers.unmount("conformance-del-parent")?;
    layers.create("conformance-del-child", Some("conformance-del-parent"))?;
    let child = layers.mount("conformance-del-child")?;
    io("delete a file", fs::remove_file(child.join("file")))?;
    io(
        "delete a nested directory",
        fs::remove_dir_all(child.join("nested")),
    )?;
    io(
        "delete a directory",
        fs::remove_dir_all(child.join("recreated")),
    )?;
    io("re-create it", fs::create_dir(child.join("recreated")))?;
    write(&child.join("recreated/new"), b"y")?;
    layers.unmount("conformance-del-child")?;
    // A grandchild inherits the deletions.
    layers.create("conformance-del-grandchild", Some("conformance-del-child"))?;
    for id in ["conformance-del-child", "conformance-del-grandchild"] {
        let path = layers.mount(id)?;
        let file = path.join("file").exists();
        let nested = path.join("nested").exists();
        let mut recreated: Vec<String> = io("list", fs::read_dir(path.join("recreated")))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        recreated.sort();
        layers.unmount(id)?;
        ensure!(!file, "{id}: a deleted file is back");
        ensure!(!nested, "{id}: a deleted directory is back");
        ensure!(
            recreated == ["new"],
            "{id}: a re-created directory holds {recreated:?}, old files resurrected"
        );
    }
    let parent = layers.mount("conformance-del-parent")?;
    let intact = parent.join("file").exists() && parent.join("nested/deeper/leaf").exists();
    layers.unmount("conformance-del-parent")?;
    ensure!(intact, "deleting in the child deleted in the parent");
    Ok(())
}

fn rename_files(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-mv-parent", None)?;
    let parent = layers.mount("conformance-mv-parent")?;
    io("mkdir", fs::create_dir_all(parent.join("a")))?;
    io("mkdir", fs::create_dir_all(parent.join("b")))?;
    write(&parent.join("a/one"), b"1")?;
    write(&parent.join("a/two"), b"2")?;
    layers.unmount("conformance-mv-parent")?;
    layers.create("conformance-mv-child", Some("conformance-mv-parent"))?;
    let child = layers.mount("conformance-mv-child")?;
    io(
        "rename within a directory",
        fs::rename(child.join("a/one"), child.join("a/uno")),
    )?;
    io(
        "rename across directories",
        fs::rename(child.join("a/two"), child.join("b/two")),
    )?;
    let moved = fs::read(child.join("a/uno")).unwrap_or_default() == b"1"
        && fs::read(child.join("b/two")).unwrap_or_default() == b"2";
    let gone = !child.join("a/one").exists() && !child.join("a/two").exists();
    layers.unmount("conformance-mv-child")?;
    ensure!(moved && gone, "renamed files are not where they were moved");
    Ok(())
}

/// Renaming a directory that came from the parent. overlayfs answers EXDEV
/// unless redirect_dir is on (tools then copy and delete); that answer is
/// reported as a skip with the reason, never hidden.
fn rename_directory(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-mvdir-parent", None)?;
    let parent = layers.mount("conformance-mvdir-parent")?;
    io("mkdir", fs::create_dir_all(parent.join("dir/sub")))?;
    write(&parent.join("dir/sub/file"), b"f")?;
    layers.unmount("conformance-mvdir-parent")?;
    layers.create("conformance-mvdir-child", Some("conformance-mvdir-parent"))?;
    let child = layers.mount("conformance-mvdir-child")?;
    let renamed = fs::rename(child.join("dir"), child.join("moved"));
    let ok = fs::read(child.join("moved/sub/file")).unwrap_or_default() == b"f"
        && !child.join("dir").exists();
    layers.unmount("conformance-mvdir-child")?;
    match renamed {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => Err(Verdict::Skip(
            "renaming a directory from the parent answers EXDEV (overlay without redirect_dir); callers must copy".into(),
        )),
        Err(e) => Err(Verdict::Fail(format!("rename of a directory from the parent: {e}"))),
        Ok(()) => {
            ensure!(ok, "the renamed directory's contents are not under its new name");
            Ok(())
        }
    }
}

fn hard_links_across_layers(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-ln-parent", None)?;
    let parent = layers.mount("conformance-ln-parent")?;
    write(&parent.join("first"), b"linked")?;
    io(
        "link",
        fs::hard_link(parent.join("first"), parent.join("second")),
    )?;
    layers.unmount("conformance-ln-parent")?;
    layers.create("conformance-ln-child", Some("conformance-ln-parent"))?;
    let child = layers.mount("conformance-ln-child")?;
    let a = io("stat", fs::metadata(child.join("first")))?;
    let b = io("stat", fs::metadata(child.join("second")))?;
    let same = fs::read(child.join("first")).unwrap_or_default() == b"linked"
        && fs::read(child.join("second")).unwrap_or_default() == b"linked";
    // A new link in the child to a file of the parent.
    let linked = fs::hard_link(child.join("first"), child.join("third"));
    layers.unmount("conformance-ln-child")?;
    ensure!(same, "hard-linked files read differently in the child");
    ensure!(
        a.nlink() == 2 && b.nlink() == 2,
        "the child sees link counts {} and {}",
        a.nlink(),
        b.nlink()
    );
    ensure!(
        a.ino() == b.ino(),
        "the two names of a hard link are different files in the child"
    );
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == IoKind::Unsupported => {
            Err(Verdict::Skip(format!("linking in the child: {e}")))
        }
        Err(e) => Err(Verdict::Fail(format!(
            "a hard link in the child to a parent's file: {e}"
        ))),
    }
}

/// How many layers the re-creation check stacks.
const RECREATE_LAYERS: usize = 128;

/// Step `i` of the re-creation stack, on a layer or on the flat reference:
/// `a` and `b` are removed whatever they are, then one is made a file and
/// the other a directory holding a file (swapped at every step), with
/// content naming the step; a file of the step's own is added; everything
/// touched gets the step's time, so the two trees compare by what they hold.
fn recreate_step(root: &Path, i: usize) -> CheckOutcome {
    for name in ["a", "b"] {
        let path = root.join(name);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => io(
                format!("step {i}: remove the directory {name}"),
                fs::remove_dir_all(&path),
            )?,
            Ok(_) => io(
                format!("step {i}: remove the file {name}"),
                fs::remove_file(&path),
            )?,
            Err(e) if e.kind() == IoKind::NotFound => {}
            Err(e) => return Err(Verdict::Fail(format!("step {i}: stat {name}: {e}"))),
        }
    }
    let (file, dir) = [("a", "b"), ("b", "a")][i % 2];
    write(
        &root.join(file),
        format!("step {i}: {file} is a file").as_bytes(),
    )?;
    io(
        format!("step {i}: mkdir {dir}"),
        fs::create_dir(root.join(dir)),
    )?;
    io(
        format!("step {i}: chmod {dir}"),
        fs::set_permissions(root.join(dir), fs::Permissions::from_mode(0o755)),
    )?;
    let inside = root.join(dir).join("inside");
    write(
        &inside,
        format!("step {i}: {dir} is a directory").as_bytes(),
    )?;
    let own = root.join(format!("own-{i:03}"));
    write(&own, i.to_string().as_bytes())?;
    let stamp = 1_600_000_000 + i as i64;
    for path in [
        root.join(file),
        inside,
        root.join(dir),
        own,
        root.to_path_buf(),
    ] {
        set_mtime(&path, stamp)?;
    }
    Ok(())
}

fn recreate_the_same_entries(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    let id = |i: usize| format!("conformance-recreate-{i:03}");
    for i in 0..RECREATE_LAYERS {
        let parent = (i > 0).then(|| id(i - 1));
        layers.create(&id(i), parent.as_deref())?;
        let path = layers.mount(&id(i))?;
        let stepped = recreate_step(&path, i);
        layers.unmount(&id(i))?;
        stepped?;
    }
    // Compared only once all are made: a child must not change its parents.
    let scratch = io("a scratch directory", tempfile::tempdir())?;
    let flat = scratch.path().join("flat");
    io("mkdir the reference", fs::create_dir(&flat))?;
    io(
        "chmod the reference",
        fs::set_permissions(&flat, fs::Permissions::from_mode(0o755)),
    )?;
    for i in 0..RECREATE_LAYERS {
        recreate_step(&flat, i)?;
        let path = layers.mount(&id(i))?;
        let differences = compare_trees_with(&flat, &path, Compare { atime: false });
        layers.unmount(&id(i))?;
        ensure!(
            differences.is_empty(),
            "layer {i} of {RECREATE_LAYERS} differs from the reference after the same {} steps:\n{}",
            i + 1,
            differences.join("\n")
        );
    }
    Ok(())
}
