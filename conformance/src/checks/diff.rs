//! Diffs: changes against the parent, and a diff applied to a fresh child of
//! the same parent giving the same tree. The layer format is core's; the
//! driver provides the trees (or its native diff directory).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

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
            changes_are_exact,
        ),
        check(
            "diff/export-then-apply-gives-the-same-tree",
            export_then_apply,
        ),
        check("diff/native-and-naive-diffs-agree", native_and_naive_agree),
        check(
            "diff/a-broken-stream-fails-cleanly",
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

fn change_set(changes: &[archive::Change]) -> BTreeSet<(String, &'static str)> {
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
fn apply_target(
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
            WhiteoutFormat::Overlay => ApplyTarget::OverlayUpper,
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
    let parent = layers.mount(&parent_id)?;
    let child = layers.mount(&child_id)?;
    let changes = io("compute changes", archive::changes(&child, Some(&parent)))?;
    let mut tar = Vec::new();
    let exported = io(
        "export",
        archive::export_changes(&child, &changes, &mut tar),
    )?;
    layers.unmount(&child_id)?;
    layers.unmount(&parent_id)?;

    let twin = "conformance-export-twin";
    layers.create(twin, Some(&parent_id))?;
    let (dir, target, mounted) = apply_target(suite, &layers, twin)?;
    let options = ApplyOptions {
        target,
        ..Default::default()
    };
    let applied = archive::apply_layer(&dir, &tar[..], &options, None);
    if mounted {
        layers.unmount(twin)?;
    }
    let applied = applied.map_err(|e| Verdict::Fail(format!("apply the exported diff: {e}")))?;
    ensure!(
        applied.size == exported.size,
        "apply counted {} bytes, export {}",
        applied.size,
        exported.size
    );
    let child = layers.mount(&child_id)?;
    let twin_path = layers.mount(twin)?;
    let differences = compare_trees_with(&child, &twin_path, Compare { atime: false });
    layers.unmount(twin)?;
    layers.unmount(&child_id)?;
    ensure!(
        differences.is_empty(),
        "the diff applied to a fresh child differs:\n{}",
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
    let store = LayerStore::open(records.path(), &records.path().join("run"), suite.driver)
        .map_err(|e| Verdict::Fail(format!("open a layer store: {e}")))?;
    let made = store.create(
        suite.driver,
        "conformance-junk-store",
        None,
        &CreateOptions::default(),
        Some(&mut &junk[..]),
    );
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
