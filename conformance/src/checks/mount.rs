//! Mounting: reference counting, root modes, read-only layers, deep stacks.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use strata_plugin_abi::{Capabilities, CreateOptions, ErrorKind, MountOptions};

use super::{Layers, check, expect_kind, io};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

/// How deep the deep-stack check builds.
pub const DEEP_STACK: usize = 128;

pub fn checks() -> Vec<Check> {
    vec![
        check("mount/get-put-counts-references", get_put_counts_references),
        check("mount/unknown-layer-refused", unknown_layer_refused),
        check("mount/new-layer-root-mode", new_layer_root_mode),
        check(
            "mount/changed-root-mode-reaches-children",
            changed_root_mode_reaches_children,
        ),
        check(
            "mount/read-only-layer-rejects-writes",
            read_only_layer_rejects_writes,
        ),
        check("mount/deep-stack-reads-back-every-layer", deep_stack),
    ]
}

fn get_put_counts_references(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-mount", None)?;
    let first = layers.mount("conformance-mount")?;
    io("write", fs::write(first.join("here"), b"x"))?;
    let second = layers.mount("conformance-mount")?;
    ensure!(first == second, "two mounts gave {first:?} and {second:?}");
    layers.unmount("conformance-mount")?;
    ensure!(
        first.join("here").exists(),
        "one put of two gets took the mount away"
    );
    layers.unmount("conformance-mount")
}

fn unknown_layer_refused(suite: &Suite) -> CheckOutcome {
    expect_kind(
        "mount of an unknown layer",
        suite
            .driver
            .get("conformance-ghost", &MountOptions::default()),
        ErrorKind::NotFound,
    )?;
    expect_kind(
        "remove of an unknown layer",
        suite.driver.remove("conformance-ghost"),
        ErrorKind::NotFound,
    )
}

fn root_mode(path: &std::path::Path) -> Result<u32, Verdict> {
    Ok(io("stat", fs::metadata(path))?.permissions().mode() & 0o7777)
}

fn new_layer_root_mode(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-root-mode", None)?;
    let path = layers.mount("conformance-root-mode")?;
    let mode = root_mode(&path)?;
    layers.unmount("conformance-root-mode")?;
    ensure!(
        mode == 0o755,
        "a new layer's root has mode {mode:o}, expected 755"
    );
    Ok(())
}

fn changed_root_mode_reaches_children(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-root-parent", None)?;
    let parent = layers.mount("conformance-root-parent")?;
    io(
        "chmod",
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o710)),
    )?;
    layers.unmount("conformance-root-parent")?;
    layers.create("conformance-root-child", Some("conformance-root-parent"))?;
    let child = layers.mount("conformance-root-child")?;
    let mode = root_mode(&child)?;
    layers.unmount("conformance-root-child")?;
    ensure!(
        mode == 0o710,
        "the child's root has mode {mode:o}, its parent's is 710"
    );
    Ok(())
}

fn read_only_layer_rejects_writes(suite: &Suite) -> CheckOutcome {
    if !suite
        .driver
        .capabilities()
        .contains(Capabilities::READ_ONLY_LAYERS)
    {
        return Err(Verdict::Skip(
            "the driver does not claim read-only layers (capability read-only-layers)".into(),
        ));
    }
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-ro-source", None)?;
    let source = layers.mount("conformance-ro-source")?;
    io("write", fs::write(source.join("file"), b"original"))?;
    layers.unmount("conformance-ro-source")?;
    layers.create_with(
        "conformance-ro",
        Some("conformance-ro-source"),
        &CreateOptions::default(),
    )?;
    let path = layers.mount("conformance-ro")?;
    let new_file = fs::write(path.join("new"), b"x");
    let overwrite = fs::write(path.join("file"), b"changed");
    let content = fs::read(path.join("file")).unwrap_or_default();
    layers.unmount("conformance-ro")?;
    ensure!(
        new_file.is_err(),
        "a file could be created in a read-only layer"
    );
    ensure!(
        overwrite.is_err(),
        "a file could be overwritten in a read-only layer"
    );
    ensure!(content == b"original", "a read-only layer's file changed");
    Ok(())
}

/// 128 layers, each adding a file of its own and shadowing one file of its
/// parent; every layer must read back exactly its own view.
fn deep_stack(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    let id = |i: usize| format!("conformance-deep-{i:03}");
    for i in 0..DEEP_STACK {
        let parent = (i > 0).then(|| id(i - 1));
        layers.create(&id(i), parent.as_deref())?;
        let path = layers.mount(&id(i))?;
        io(
            "write",
            fs::write(path.join(format!("own-{i:03}")), i.to_string()),
        )?;
        io("write", fs::write(path.join("shadowed"), i.to_string()))?;
        layers.unmount(&id(i))?;
    }
    for i in 0..DEEP_STACK {
        let path = layers.mount(&id(i))?;
        let shadowed = fs::read_to_string(path.join("shadowed")).unwrap_or_default();
        let mut own: Vec<String> = io("list", fs::read_dir(&path))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("own-"))
            .collect();
        own.sort();
        layers.unmount(&id(i))?;
        ensure!(
            shadowed == i.to_string(),
            "layer {i} reads 'shadowed' as {shadowed:?}"
        );
        let expected: Vec<String> = (0..=i).map(|k| format!("own-{k:03}")).collect();
        ensure!(
            own == expected,
            "layer {i} holds {} own-* files, expected {}",
            own.len(),
            i + 1
        );
    }
    Ok(())
}
