//! Diffs: changes against the parent, and a diff applied to a fresh child of
//! the same parent giving the same tree. The layer format is core's; the
//! driver provides the trees (or its native diff directory).

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use strata_core::archive::{self, ApplyOptions, ApplyTarget, ArchiveError, ChangeKind};
use strata_core::layers::LayerStore;
use strata_plugin_abi::{Capabilities, CreateOptions, WhiteoutFormat};

use super::{Layers, check, io};
use crate::tree::{Compare, compare_trees_with};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "diff/changes-against-the-parent-are-exact",
            "Core's changes of a child against its parent are exactly the adds, modifies and deletes made, each directory above them as modified.",
            changes_are_exact,
        ),
        check(
            "diff/export-then-apply-gives-the-same-tree",
            "A child's diff exported by core and applied to a fresh child of the same parent gives the same tree, and apply counts the size export counted.",
            export_then_apply,
        ),
        check(
            "diff/echo-nested-directories",
            "At every depth 0 to 9, a layer adding subdir1/../subdirD/file, its child deleting the file and a grandchild re-creating it have exactly these changes: an Add of each directory and the file; a Modify of each directory and a Delete of the file; a Modify of each directory and an Add of the file (by tree comparison, and by the native diff when there is one).",
            echo,
        ),
        check(
            "diff/driver-diff-apply-round-trip",
            "For drivers claiming owns-diff-format: the driver's diff of a child, applied with apply_diff to a fresh child of the same parent, gives the same tree, and apply_diff returns the size diff_size gives.",
            driver_diff_apply_round_trip,
        ),
        check(
            "diff/native-and-naive-diffs-agree",
            "For drivers claiming native-diff: the changes read from the native diff directory are those found by comparing trees (plus unchanged copied-up directories).",
            native_and_naive_agree,
        ),
        check(
            "diff/a-broken-stream-fails-cleanly",
            "A junk stream is refused as bad input (by the driver if it owns the format, else by core), and the layer store keeps no layer made from it.",
            broken_stream_fails_cleanly,
        ),
    ]
}

/// A parent and a child that adds, modifies and deletes.
fn parent_and_child(layers: &mut Layers, prefix: &str) -> Result<(String, String), Verdict> {
    let parent_id = format!("{prefix}-parent");
    let child_id = format!("{prefix}-child");
    layers.create(&parent_id, None)?;
    let parent = layers.mount(&parent_id)?;
    io("mkdir", fs::create_dir_all(parent.join("etc/conf.d")))?;
    io("mkdir", fs::create_dir_all(parent.join("gone/deep")))?;
    io("write", fs::write(parent.join("etc/keep"), b"unchanged"))?;
    io("write", fs::write(parent.join("etc/modify"), b"before"))?;
    io("write", fs::write(parent.join("etc/delete"), b"doomed"))?;
    io("write", fs::write(parent.join("gone/deep/leaf"), b"doomed"))?;
    layers.unmount(&parent_id)?;
    layers.create(&child_id, Some(&parent_id))?;
    let child = layers.mount(&child_id)?;
    io(
        "write",
        fs::write(child.join("etc/modify"), b"after, longer"),
    )?;
    io("write", fs::write(child.join("etc/conf.d/added"), b"new"))?;
    io("delete", fs::remove_file(child.join("etc/delete")))?;
    io("delete", fs::remove_dir_all(child.join("gone")))?;
    layers.unmount(&child_id)?;
    Ok((parent_id, child_id))
}

pub(crate) fn change_set(changes: &[archive::Change]) -> ChangeSet {
    changes
        .iter()
        .filter(|c| !c.path.as_os_str().is_empty())
        .map(|c| {
            let kind = match c.kind {
                ChangeKind::Add => "A",
                ChangeKind::Modify => "M",
                ChangeKind::Delete => "D",
            };
            (c.path.display().to_string(), kind)
        })
        .collect()
}

fn changes_are_exact(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    let (parent_id, child_id) = parent_and_child(&mut layers, "conformance-changes")?;
    let parent = layers.mount(&parent_id)?;
    let child = layers.mount(&child_id)?;
    let changes = archive::changes(&child, Some(&parent));
    layers.unmount(&child_id)?;
    layers.unmount(&parent_id)?;
    let found = change_set(&io("compute changes", changes)?);
    let expected: BTreeSet<(String, &str)> = [
        ("etc", "M"),
        ("etc/conf.d", "M"),
        ("etc/conf.d/added", "A"),
        ("etc/delete", "D"),
        ("etc/modify", "M"),
        ("gone", "D"),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_string(), k))
    .collect();
    ensure!(
        found == expected,
        "changes {found:?}, expected {expected:?}"
    );
    Ok(())
}

/// Where a diff is applied for a layer: its native diff directory (in its
/// whiteout convention) or its tree.
pub(crate) fn apply_target(
    suite: &Suite,
    layers: &Layers,
    id: &str,
) -> Result<(PathBuf, ApplyTarget, bool), Verdict> {
    if suite
        .driver
        .capabilities()
        .contains(Capabilities::NATIVE_DIFF)
        && let Some(native) = suite
            .driver
            .native_diff(id)
            .map_err(|e| Verdict::Fail(format!("native diff of {id}: {e}")))?
    {
        let target = match native.whiteouts {
            WhiteoutFormat::Overlay => ApplyTarget::OVERLAY_UPPER,
            WhiteoutFormat::Aufs => {
                return Err(Verdict::Fail(
                    "a native diff in AUFS whiteouts cannot be applied into".into(),
                ));
            }
            WhiteoutFormat::Unknown(code) => {
                return Err(Verdict::Fail(format!(
                    "native diff with unknown whiteout format {code}"
                )));
            }
        };
        return Ok((native.path, target, false));
    }
    Ok((layers.mount(id)?, ApplyTarget::Tree, true))
}

fn export_then_apply(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    let (parent_id, child_id) = parent_and_child(&mut layers, "conformance-export")?;
    round_trip(
        suite,
        &mut layers,
        &parent_id,
        &child_id,
        "conformance-export-twin",
    )
}

/// Exports `child_id`'s changes against `parent_id` with core's export,
/// applies them to a new child `twin_id` of the same parent (into its native
/// diff directory or its tree), and fails unless the applied size is the
/// exported size and the twin's tree is the child's: contents, modes,
/// owners, times, xattrs and links.
pub(crate) fn round_trip(
    suite: &Suite,
    layers: &mut Layers,
    parent_id: &str,
    child_id: &str,
    twin_id: &str,
) -> CheckOutcome {
    let parent = layers.mount(parent_id)?;
    let child = layers.mount(child_id)?;
    let changes = archive::changes(&child, Some(&parent));
    let mut tar = Vec::new();
    let exported = changes.and_then(|changes| archive::export_changes(&child, &changes, &mut tar));
    layers.unmount(child_id)?;
    layers.unmount(parent_id)?;
    let exported = io(format!("export the diff of {child_id}"), exported)?;

    layers.create(twin_id, Some(parent_id))?;
    let (dir, target, mounted) = apply_target(suite, layers, twin_id)?;
    let options = ApplyOptions {
        target,
        ..Default::default()
    };
    let applied = archive::apply_layer(&dir, &tar[..], &options, None);
    if mounted {
        layers.unmount(twin_id)?;
    }
    let applied = applied
        .map_err(|e| Verdict::Fail(format!("apply the diff of {child_id} to {twin_id}: {e}")))?;
    ensure!(
        applied.size == exported.size,
        "apply counted {} bytes, export {}",
        applied.size,
        exported.size
    );
    let child = layers.mount(child_id)?;
    let twin = layers.mount(twin_id)?;
    let differences = compare_trees_with(&child, &twin, Compare { atime: false });
    layers.unmount(twin_id)?;
    layers.unmount(child_id)?;
    ensure!(
        differences.is_empty(),
        "the diff of {child_id} applied to a fresh child of {parent_id} differs from it:\n{}",
        differences.join("\n")
    );
    Ok(())
}

/// A set of changes as (path, A/M/D), the root left out.
pub(crate) type ChangeSet = BTreeSet<(String, &'static str)>;

/// Builds the expected change set from (path, kind) pairs.
pub(crate) fn expected(pairs: &[(&str, &'static str)]) -> ChangeSet {
    pairs.iter().map(|(p, k)| (p.to_string(), *k)).collect()
}

/// A layer's changes against its parent (none: against an empty tree), found
/// every way this driver offers: by comparing the mounted trees, and, for a
/// driver with native diff in overlay whiteouts, by reading that directory
/// over the mounted parent. Each comes with the name of the way.
pub(crate) fn layer_changes(
    suite: &Suite,
    layers: &Layers,
    id: &str,
    parent_id: Option<&str>,
) -> Result<Vec<(&'static str, ChangeSet)>, Verdict> {
    let native = if suite
        .driver
        .capabilities()
        .contains(Capabilities::NATIVE_DIFF)
    {
        suite
            .driver
            .native_diff(id)
            .map_err(|e| Verdict::Fail(format!("native diff of {id}: {e}")))?
            .filter(|native| native.whiteouts == WhiteoutFormat::Overlay)
    } else {
        None
    };
    let parent = match parent_id {
        Some(parent_id) => Some(layers.mount(parent_id)?),
        None => None,
    };
    let layer = match layers.mount(id) {
        Ok(layer) => layer,
        Err(e) => {
            if let Some(parent_id) = parent_id {
                let _ = layers.unmount(parent_id);
            }
            return Err(e);
        }
    };
    let naive = archive::changes(&layer, parent.as_deref());
    let native_changes = native
        .as_ref()
        .map(|native| archive::overlay_changes(&native.path, parent.as_deref()));
    layers.unmount(id)?;
    if let Some(parent_id) = parent_id {
        layers.unmount(parent_id)?;
    }
    let naive = io(format!("changes of {id}"), naive)?;
    let mut found = vec![("tree comparison", change_set(&naive))];
    if let Some(native_changes) = native_changes {
        let native_changes = io(format!("native changes of {id}"), native_changes)?;
        found.push(("native diff", change_set(&native_changes)));
    }
    Ok(found)
}

/// Fails unless every way of finding `id`'s changes finds exactly `want`.
pub(crate) fn changes_are(
    suite: &Suite,
    layers: &Layers,
    id: &str,
    parent_id: Option<&str>,
    want: &ChangeSet,
) -> CheckOutcome {
    for (how, found) in layer_changes(suite, layers, id, parent_id)? {
        ensure!(
            found == *want,
            "changes of {id} against {} by {how}: {found:?}, expected {want:?}",
            parent_id.unwrap_or("an empty tree")
        );
    }
    Ok(())
}

/// The nested directories of the echo check, `subdir1` .. `subdir1/../subdirD`.
fn echo_dirs(depth: usize) -> Vec<PathBuf> {
    (1..=depth)
        .map(|k| (1..=k).map(|j| format!("subdir{j}")).collect())
        .collect()
}

fn echo(suite: &Suite) -> CheckOutcome {
    for depth in 0..=9 {
        let base = format!("conformance-echo-{depth}-base");
        let child = format!("conformance-echo-{depth}-child");
        let grandchild = format!("conformance-echo-{depth}-grandchild");
        let dirs = echo_dirs(depth);
        let file = dirs.last().cloned().unwrap_or_default().join("file");
        let file_name = file.display().to_string();
        let dir_names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        let with_dirs = |dir_kind: &'static str, file_kind: &'static str| -> ChangeSet {
            dir_names
                .iter()
                .map(|d| (d.clone(), dir_kind))
                .chain([(file_name.clone(), file_kind)])
                .collect()
        };
        let mut layers = Layers::new(suite.driver);

        layers.create(&base, None)?;
        let path = layers.mount(&base)?;
        io(
            "mkdir",
            fs::create_dir_all(path.join(file.parent().unwrap_or(Path::new("")))),
        )?;
        io("write", fs::write(path.join(&file), b"echo"))?;
        layers.unmount(&base)?;
        changes_are(suite, &layers, &base, None, &with_dirs("A", "A"))?;

        layers.create(&child, Some(&base))?;
        let path = layers.mount(&child)?;
        io("delete", fs::remove_file(path.join(&file)))?;
        layers.unmount(&child)?;
        changes_are(suite, &layers, &child, Some(&base), &with_dirs("M", "D"))?;

        layers.create(&grandchild, Some(&child))?;
        let path = layers.mount(&grandchild)?;
        io("write", fs::write(path.join(&file), b"echo again"))?;
        layers.unmount(&grandchild)?;
        changes_are(
            suite,
            &layers,
            &grandchild,
            Some(&child),
            &with_dirs("M", "A"),
        )?;
    }
    Ok(())
}

fn driver_diff_apply_round_trip(suite: &Suite) -> CheckOutcome {
    let driver = suite.driver;
    if !driver
        .capabilities()
        .contains(Capabilities::OWNS_DIFF_FORMAT)
    {
        return Err(Verdict::Skip(
            "the driver does not claim owns-diff-format".into(),
        ));
    }
    let mut layers = Layers::new(driver);
    let (parent_id, child_id) = parent_and_child(&mut layers, "conformance-owndiff")?;
    let size = driver
        .diff_size(&child_id, Some(&parent_id))
        .map_err(|e| Verdict::Fail(format!("diff size of {child_id}: {e}")))?;
    let mut stream = Vec::new();
    driver
        .diff(&child_id, Some(&parent_id))
        .map_err(|e| Verdict::Fail(format!("diff of {child_id}: {e}")))?
        .read_to_end(&mut stream)
        .map_err(|e| Verdict::Fail(format!("read the diff of {child_id}: {e}")))?;
    let twin = "conformance-owndiff-twin";
    layers.create(twin, Some(&parent_id))?;
    let applied = driver
        .apply_diff(twin, Some(&parent_id), &mut &stream[..])
        .map_err(|e| Verdict::Fail(format!("apply the diff of {child_id} to {twin}: {e}")))?;
    ensure!(
        applied == size,
        "apply_diff returned {applied} bytes, diff_size {size}"
    );
    let child = layers.mount(&child_id)?;
    let twin_path = layers.mount(twin)?;
    let differences = compare_trees_with(&child, &twin_path, Compare { atime: false });
    layers.unmount(twin)?;
    layers.unmount(&child_id)?;
    ensure!(
        differences.is_empty(),
        "the driver's diff applied to a fresh child differs:\n{}",
        differences.join("\n")
    );
    Ok(())
}

fn native_and_naive_agree(suite: &Suite) -> CheckOutcome {
    if !suite
        .driver
        .capabilities()
        .contains(Capabilities::NATIVE_DIFF)
    {
        return Err(Verdict::Skip(
            "the driver has no native diff (capability native-diff)".into(),
        ));
    }
    let mut layers = Layers::new(suite.driver);
    let (parent_id, child_id) = parent_and_child(&mut layers, "conformance-native")?;
    let native = suite
        .driver
        .native_diff(&child_id)
        .map_err(|e| Verdict::Fail(format!("native diff: {e}")))?;
    let Some(native) = native else {
        return Err(Verdict::Skip(
            "the driver has native diff but says it is not exact right now (see its status)".into(),
        ));
    };
    let parent = layers.mount(&parent_id)?;
    let child = layers.mount(&child_id)?;
    let naive = archive::changes(&child, Some(&parent));
    let native_changes = archive::overlay_changes(&native.path, Some(&parent));
    layers.unmount(&child_id)?;
    layers.unmount(&parent_id)?;
    let naive = change_set(&io("naive changes", naive)?);
    let native_changes = change_set(&io("native changes", native_changes)?);
    // The native diff also lists directories it copied up unchanged.
    let only_native: Vec<_> = native_changes
        .difference(&naive)
        .filter(|(_, k)| *k != "M")
        .collect();
    let only_naive: Vec<_> = naive.difference(&native_changes).collect();
    ensure!(
        only_native.is_empty() && only_naive.is_empty(),
        "native and naive changes differ: only native {only_native:?}, only naive {only_naive:?}"
    );
    Ok(())
}

fn broken_stream_fails_cleanly(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-junk", None)?;
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    if suite
        .driver
        .capabilities()
        .contains(Capabilities::OWNS_DIFF_FORMAT)
    {
        let result = suite
            .driver
            .apply_diff("conformance-junk", None, &mut &junk[..]);
        ensure!(result.is_err(), "the driver applied a junk stream");
        return Ok(());
    }
    let (dir, target, mounted) = apply_target(suite, &layers, "conformance-junk")?;
    let result = archive::apply_layer(
        &dir,
        &junk[..],
        &ApplyOptions {
            target,
            ..Default::default()
        },
        None,
    );
    if mounted {
        layers.unmount("conformance-junk")?;
    }
    match result {
        Err(ArchiveError::Input(_)) => {}
        Err(other) => {
            return Err(Verdict::Fail(format!(
                "a junk stream gave an error that is not about the stream: {other}"
            )));
        }
        Ok(_) => return Err(Verdict::Fail("a junk stream was applied".into())),
    }
    // Through the layer store, as a runtime creates a layer from a diff: the
    // refused stream leaves no layer in the driver.
    let records = io("a scratch directory for layer records", tempfile::tempdir())?;
    let store = LayerStore::open(
        records.path(),
        &records.path().join("run"),
        Box::new(suite.driver),
    )
    .map_err(|e| Verdict::Fail(format!("open a layer store: {e}")))?;
    let id = strata_core::LayerId::new("conformance-junk-store")
        .map_err(|e| Verdict::Fail(format!("a layer id: {e}")))?;
    let made = store.create(&id, None, &CreateOptions::default(), Some(&mut &junk[..]));
    let left = suite
        .driver
        .exists("conformance-junk-store")
        .unwrap_or(true);
    if left {
        layers.adopt("conformance-junk-store");
    }
    ensure!(
        made.is_err(),
        "the layer store made a layer from a junk stream"
    );
    ensure!(!left, "a layer was left after its junk diff was refused");
    Ok(())
}
