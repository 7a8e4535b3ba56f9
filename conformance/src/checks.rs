//! The checks. Each one creates what it needs under ids of its own and removes
//! it again, whatever happens (a guard removes the layers on every exit).

use std::fs;
use std::os::unix::fs::PermissionsExt;

use strata_plugin_abi::{Capabilities, CreateOptions, ErrorKind, GraphDriver, MountOptions};

use crate::{Check, CheckOutcome, Verdict, ensure, tree};

pub fn all() -> Vec<Check> {
    vec![
        Check {
            name: "lifecycle/create-exists-list-remove",
            run: create_exists_list_remove,
        },
        Check {
            name: "lifecycle/duplicate-id-refused",
            run: duplicate_id_refused,
        },
        Check {
            name: "lifecycle/unknown-parent-refused",
            run: unknown_parent_refused,
        },
        Check {
            name: "lifecycle/invalid-id-refused",
            run: invalid_id_refused,
        },
        Check {
            name: "lifecycle/id-reuse-after-remove",
            run: id_reuse_after_remove,
        },
        Check {
            name: "lifecycle/cleanup-is-idempotent",
            run: cleanup_is_idempotent,
        },
        Check {
            name: "mount/get-put-same-path",
            run: get_put_same_path,
        },
        Check {
            name: "mount/unknown-layer-refused",
            run: unknown_layer_refused,
        },
        Check {
            name: "content/new-layer-root-mode",
            run: new_layer_root_mode,
        },
        Check {
            name: "content/snapshot-keeps-every-file-kind",
            run: snapshot_keeps_every_file_kind,
        },
        Check {
            name: "content/child-writes-stay-in-child",
            run: child_writes_stay_in_child,
        },
        Check {
            name: "abi/optional-methods-answer-cleanly",
            run: optional_methods_answer_cleanly,
        },
    ]
}

/// Removes the listed layers (children first) when dropped, so a failing
/// check still leaves nothing behind.
struct Layers<'d> {
    driver: &'d dyn GraphDriver,
    ids: Vec<String>,
}

impl<'d> Layers<'d> {
    fn new(driver: &'d dyn GraphDriver) -> Self {
        Layers {
            driver,
            ids: Vec::new(),
        }
    }

    fn create(&mut self, id: &str, parent: Option<&str>) -> CheckOutcome {
        let options = CreateOptions {
            read_write: true,
            ..Default::default()
        };
        self.driver
            .create(id, parent, &options)
            .map_err(|e| Verdict::Fail(format!("create {id}: {e}")))?;
        self.ids.push(id.to_string());
        Ok(())
    }

    fn mount(&self, id: &str) -> Result<std::path::PathBuf, Verdict> {
        self.driver
            .get(id, &MountOptions::default())
            .map_err(|e| Verdict::Fail(format!("mount {id}: {e}")))
    }

    fn unmount(&self, id: &str) -> CheckOutcome {
        self.driver
            .put(id)
            .map_err(|e| Verdict::Fail(format!("unmount {id}: {e}")))
    }
}

impl Drop for Layers<'_> {
    fn drop(&mut self) {
        for id in self.ids.iter().rev() {
            if let Err(e) = self.driver.remove(id)
                && e.kind() != ErrorKind::NotFound
            {
                tracing::warn!(layer = %id, error = %e, "conformance: could not remove a check's layer");
            }
        }
    }
}

fn expect_kind<T: std::fmt::Debug>(
    what: &str,
    result: strata_plugin_abi::Result<T>,
    kind: ErrorKind,
) -> CheckOutcome {
    match result {
        Ok(value) => Err(Verdict::Fail(format!(
            "{what}: succeeded ({value:?}), expected {kind}"
        ))),
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(Verdict::Fail(format!(
            "{what}: expected {kind}, got {} ({e})",
            e.kind()
        ))),
    }
}

fn create_exists_list_remove(driver: &dyn GraphDriver) -> CheckOutcome {
    let id = "conformance-lifecycle-a";
    ensure!(
        !driver.exists(id).unwrap_or(true),
        "{id} exists before it is created"
    );
    let mut layers = Layers::new(driver);
    layers.create(id, None)?;
    layers.create("conformance-lifecycle-b", Some(id))?;
    ensure!(
        driver.exists(id).unwrap_or(false),
        "{id} does not exist after create"
    );
    let mut listed = driver
        .list()
        .map_err(|e| Verdict::Fail(format!("list: {e}")))?;
    listed.sort();
    ensure!(
        listed == ["conformance-lifecycle-a", "conformance-lifecycle-b"],
        "list returned {listed:?}, expected exactly the two layers created"
    );
    driver
        .remove("conformance-lifecycle-b")
        .map_err(|e| Verdict::Fail(format!("remove: {e}")))?;
    driver
        .remove(id)
        .map_err(|e| Verdict::Fail(format!("remove: {e}")))?;
    ensure!(
        !driver.exists(id).unwrap_or(true),
        "{id} still exists after remove"
    );
    expect_kind(
        "remove of a removed layer",
        driver.remove(id),
        ErrorKind::NotFound,
    )
}

fn duplicate_id_refused(driver: &dyn GraphDriver) -> CheckOutcome {
    let mut layers = Layers::new(driver);
    layers.create("conformance-dup", None)?;
    expect_kind(
        "second create of the same id",
        driver.create("conformance-dup", None, &CreateOptions::default()),
        ErrorKind::AlreadyExists,
    )
}

fn unknown_parent_refused(driver: &dyn GraphDriver) -> CheckOutcome {
    let _layers = Layers::new(driver);
    let result = driver.create(
        "conformance-orphan",
        Some("conformance-no-such-parent"),
        &CreateOptions::default(),
    );
    let outcome = expect_kind("create with an unknown parent", result, ErrorKind::NotFound);
    ensure!(
        !driver.exists("conformance-orphan").unwrap_or(true),
        "a layer was left after its create failed"
    );
    outcome
}

fn invalid_id_refused(driver: &dyn GraphDriver) -> CheckOutcome {
    for id in ["", "../escape", "a/b", ".hidden"] {
        expect_kind(
            &format!("create of id {id:?}"),
            driver.create(id, None, &CreateOptions::default()),
            ErrorKind::InvalidInput,
        )?;
    }
    Ok(())
}

fn id_reuse_after_remove(driver: &dyn GraphDriver) -> CheckOutcome {
    let id = "conformance-reuse";
    {
        let mut layers = Layers::new(driver);
        layers.create(id, None)?;
        let path = layers.mount(id)?;
        fs::write(path.join("old"), b"from the first life")
            .map_err(|e| Verdict::Fail(format!("write: {e}")))?;
        layers.unmount(id)?;
    }
    let mut layers = Layers::new(driver);
    layers.create(id, None)?;
    let path = layers.mount(id)?;
    let resurrected = path.join("old").exists();
    layers.unmount(id)?;
    ensure!(
        !resurrected,
        "a re-created layer shows the removed layer's files"
    );
    Ok(())
}

fn cleanup_is_idempotent(driver: &dyn GraphDriver) -> CheckOutcome {
    for round in 1..=2 {
        driver
            .cleanup()
            .map_err(|e| Verdict::Fail(format!("cleanup #{round}: {e}")))?;
    }
    Ok(())
}

fn get_put_same_path(driver: &dyn GraphDriver) -> CheckOutcome {
    let mut layers = Layers::new(driver);
    layers.create("conformance-mount", None)?;
    let first = layers.mount("conformance-mount")?;
    let second = layers.mount("conformance-mount")?;
    ensure!(first == second, "two mounts gave {first:?} and {second:?}");
    ensure!(
        first.is_dir(),
        "the mount path {first:?} is not a directory"
    );
    layers.unmount("conformance-mount")?;
    ensure!(first.is_dir(), "one put of two gets took the mount away");
    layers.unmount("conformance-mount")
}

fn unknown_layer_refused(driver: &dyn GraphDriver) -> CheckOutcome {
    expect_kind(
        "mount of an unknown layer",
        driver.get("conformance-ghost", &MountOptions::default()),
        ErrorKind::NotFound,
    )?;
    expect_kind(
        "remove of an unknown layer",
        driver.remove("conformance-ghost"),
        ErrorKind::NotFound,
    )
}

fn new_layer_root_mode(driver: &dyn GraphDriver) -> CheckOutcome {
    let mut layers = Layers::new(driver);
    layers.create("conformance-root-mode", None)?;
    let path = layers.mount("conformance-root-mode")?;
    let mode = fs::metadata(&path)
        .map_err(|e| Verdict::Fail(format!("stat: {e}")))?
        .permissions()
        .mode()
        & 0o7777;
    layers.unmount("conformance-root-mode")?;
    ensure!(
        mode == 0o755,
        "a new layer's root has mode {mode:o}, expected 755"
    );
    Ok(())
}

fn snapshot_keeps_every_file_kind(driver: &dyn GraphDriver) -> CheckOutcome {
    if !rustix::process::geteuid().is_root() {
        return Err(Verdict::Skip(
            "needs root (owners, device nodes, trusted.* and security.* xattrs)".into(),
        ));
    }
    let mut layers = Layers::new(driver);
    layers.create("conformance-kinds-parent", None)?;
    let parent = layers.mount("conformance-kinds-parent")?;
    tree::build_every_kind(&parent);
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o750))
        .map_err(|e| Verdict::Fail(format!("chmod: {e}")))?;
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
    Ok(())
}

fn child_writes_stay_in_child(driver: &dyn GraphDriver) -> CheckOutcome {
    let mut layers = Layers::new(driver);
    layers.create("conformance-iso-parent", None)?;
    let parent = layers.mount("conformance-iso-parent")?;
    let write = |path: std::path::PathBuf, data: &[u8]| {
        fs::write(&path, data).map_err(|e| Verdict::Fail(format!("write {}: {e}", path.display())))
    };
    write(parent.join("shared"), b"parent")?;
    layers.create("conformance-iso-child", Some("conformance-iso-parent"))?;
    let child = layers.mount("conformance-iso-child")?;
    write(child.join("shared"), b"child")?;
    write(child.join("new"), b"only in child")?;
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

fn optional_methods_answer_cleanly(driver: &dyn GraphDriver) -> CheckOutcome {
    let mut layers = Layers::new(driver);
    layers.create("conformance-optional", None)?;
    let caps = driver.capabilities();
    if !caps.contains(Capabilities::OWNS_DIFF_FORMAT) {
        expect_kind(
            "diff from a driver that does not own the format",
            driver.diff("conformance-optional", None).map(|_| ()),
            ErrorKind::NotSupported,
        )?;
        expect_kind(
            "diff size from a driver that does not own the format",
            driver.diff_size("conformance-optional", None),
            ErrorKind::NotSupported,
        )?;
    }
    let native = driver
        .native_diff("conformance-optional")
        .map_err(|e| Verdict::Fail(format!("native diff: {e}")))?;
    // A driver with native diff may still answer None when its diff would be
    // wrong right now; one without it must never answer Some.
    ensure!(
        native.is_none() || caps.contains(Capabilities::NATIVE_DIFF),
        "native_diff answered {native:?} but the driver does not claim native-diff"
    );
    ensure!(!driver.name().is_empty(), "the driver has no name");
    let _ = driver.status();
    Ok(())
}
