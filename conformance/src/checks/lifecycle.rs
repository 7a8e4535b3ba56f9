//! Creating, listing, removing and re-opening layers.

use std::collections::BTreeSet;
use std::fs;
#[cfg(unix)]
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use strata_plugin_abi::{Capabilities, CreateOptions, ErrorKind, GraphDriver, MountOptions};

#[cfg(unix)]
use super::needs_root;
use super::{Layers, check, expect_kind, io, mounts_on, mounts_under};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "lifecycle/create-exists-list-remove",
            "A created layer exists and list returns exactly the layers created; after remove it no longer exists and a second remove fails with NotFound.",
            create_exists_list_remove,
        ),
        check(
            "lifecycle/new-layer-is-empty",
            "A new layer without parent holds no entries and its root is owned 0:0 with mode 0755 (needs root).",
            new_layer_is_empty,
        ),
        check(
            "lifecycle/read-only-and-read-write-layers",
            "Read-only layers stack on each other, and a read-write child on top of them mounts and takes writes.",
            read_only_and_read_write,
        ),
        check(
            "lifecycle/duplicate-id-refused",
            "A second create of an existing id fails with AlreadyExists and leaves the first layer as it was.",
            duplicate_id_refused,
        ),
        check(
            "lifecycle/unknown-parent-refused",
            "Create with a parent that does not exist fails with NotFound and leaves no layer behind.",
            unknown_parent_refused,
        ),
        check(
            "lifecycle/invalid-id-refused",
            "Create refuses ids that could escape or confuse (\"\", \"../escape\", \"a/b\", \".hidden\") with InvalidInput.",
            invalid_id_refused,
        ),
        check(
            "lifecycle/invalid-ids-refused-by-every-method",
            "get, put, remove, metadata, native_diff, diff_size and create's parent refuse ids such as \"../x\", \"a/b\", \".hidden\" and \"\" with InvalidInput (or the unclaimed method's own NotSupported or no native diff) and touch nothing; exists answers false or InvalidInput.",
            invalid_ids_refused_by_every_method,
        ),
        check(
            "lifecycle/id-reuse-after-remove",
            "An id can be created again after remove, and the new layer starts empty: nothing of the removed one comes back.",
            id_reuse_after_remove,
        ),
        check(
            "lifecycle/remove-with-children-refused",
            "Remove of a layer with a child fails with Busy and keeps the parent; the child still mounts, and removing child then parent succeeds.",
            remove_with_children_refused,
        ),
        check(
            "lifecycle/cleanup-is-idempotent",
            "Cleanup called twice succeeds both times and removes no layer.",
            cleanup_is_idempotent,
        ),
        check(
            "lifecycle/cleanup-with-a-layer-mounted",
            "Cleanup succeeds while a layer is mounted and takes nothing away (the host counts mounts across processes, so the mount may be another's): the layer exists and its files read back at the path get returned; then put and remove succeed.",
            cleanup_with_a_layer_mounted,
        ),
        check(
            "lifecycle/reopened-driver-sees-the-same-layers",
            "A driver started again on the same home lists exactly the same layers, and a child still reads what its parent wrote.",
            reopened_driver_sees_the_same_layers,
        ),
    ]
}

fn create_exists_list_remove(suite: &Suite) -> CheckOutcome {
    let driver = suite.driver;
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
    layers.remove("conformance-lifecycle-b")?;
    layers.remove(id)?;
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

fn read_only_and_read_write(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    let read_only = CreateOptions::default();
    layers.create_with("conformance-ro-base", None, &read_only)?;
    layers.create_with(
        "conformance-ro-middle",
        Some("conformance-ro-base"),
        &read_only,
    )?;
    layers.create("conformance-rw-top", Some("conformance-ro-middle"))?;
    let top = layers.mount("conformance-rw-top")?;
    io(
        "write into the read-write layer",
        std::fs::write(top.join("written"), b"ok"),
    )?;
    layers.unmount("conformance-rw-top")
}

fn duplicate_id_refused(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-dup-parent", None)?;
    layers.create("conformance-dup", None)?;
    let path = layers.mount("conformance-dup")?;
    io("write", fs::write(path.join("first"), b"the first layer"))?;
    layers.unmount("conformance-dup")?;
    // Neither as a base nor as a child of another layer.
    for parent in [None, Some("conformance-dup-parent")] {
        expect_kind(
            &format!("second create of the same id (parent {parent:?})"),
            suite
                .driver
                .create("conformance-dup", parent, &CreateOptions::default()),
            ErrorKind::AlreadyExists,
        )?;
    }
    let path = layers.mount("conformance-dup")?;
    let kept = fs::read(path.join("first")).unwrap_or_default();
    layers.unmount("conformance-dup")?;
    ensure!(
        kept == b"the first layer",
        "after a refused second create the first layer reads {kept:?}"
    );
    Ok(())
}

fn unknown_parent_refused(suite: &Suite) -> CheckOutcome {
    let driver = suite.driver;
    let result = driver.create(
        "conformance-orphan",
        Some("conformance-no-such-parent"),
        &CreateOptions::default(),
    );
    if result.is_ok() {
        let _ = driver.remove("conformance-orphan");
    }
    expect_kind("create with an unknown parent", result, ErrorKind::NotFound)?;
    ensure!(
        !driver.exists("conformance-orphan").unwrap_or(true),
        "a layer was left after its create failed"
    );
    Ok(())
}

fn invalid_id_refused(suite: &Suite) -> CheckOutcome {
    for id in ["", "../escape", "a/b", ".hidden"] {
        let result = suite.driver.create(id, None, &CreateOptions::default());
        if result.is_ok() {
            let _ = suite.driver.remove(id);
        }
        expect_kind(
            &format!("create of id {id:?}"),
            result,
            ErrorKind::InvalidInput,
        )?;
    }
    Ok(())
}

fn id_reuse_after_remove(suite: &Suite) -> CheckOutcome {
    let id = "conformance-reuse";
    {
        let mut layers = Layers::new(suite.driver);
        layers.create(id, None)?;
        let path = layers.mount(id)?;
        io(
            "write",
            std::fs::write(path.join("old"), b"from the first life"),
        )?;
        layers.unmount(id)?;
    }
    let mut layers = Layers::new(suite.driver);
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

fn remove_with_children_refused(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-kin-parent", None)?;
    layers.create("conformance-kin-child", Some("conformance-kin-parent"))?;
    let refused = suite.driver.remove("conformance-kin-parent");
    if refused.is_ok() {
        layers.forget("conformance-kin-parent");
    }
    expect_kind("remove of a layer with a child", refused, ErrorKind::Busy)?;
    ensure!(
        suite
            .driver
            .exists("conformance-kin-parent")
            .unwrap_or(false),
        "the refused remove took the parent anyway"
    );
    let child = layers.mount("conformance-kin-child")?;
    ensure!(
        child.is_dir(),
        "the child cannot be mounted after its parent's refused removal"
    );
    layers.unmount("conformance-kin-child")?;
    layers.remove("conformance-kin-child")?;
    layers.remove("conformance-kin-parent")
}

fn cleanup_is_idempotent(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-cleanup", None)?;
    for round in 1..=2 {
        suite
            .driver
            .cleanup()
            .map_err(|e| Verdict::Fail(format!("cleanup #{round}: {e}")))?;
    }
    ensure!(
        suite.driver.exists("conformance-cleanup").unwrap_or(false),
        "cleanup removed a layer"
    );
    Ok(())
}

fn reopened_driver_sees_the_same_layers(suite: &Suite) -> CheckOutcome {
    let Some(reopen) = suite.options.reopen.as_ref() else {
        return Err(Verdict::Skip(
            "the suite was not given a way to start the driver again on its home".into(),
        ));
    };
    {
        let mut layers = Layers::new(suite.driver);
        layers.create("conformance-persist-base", None)?;
        let base = layers.mount("conformance-persist-base")?;
        io(
            "write",
            std::fs::write(base.join("kept"), b"across restarts"),
        )?;
        layers.unmount("conformance-persist-base")?;
        layers.create(
            "conformance-persist-child",
            Some("conformance-persist-base"),
        )?;
        // Hand the layers over to the restarted driver.
        layers.forget("conformance-persist-child");
        layers.forget("conformance-persist-base");
    }
    suite
        .driver
        .cleanup()
        .map_err(|e| Verdict::Fail(format!("cleanup before restarting: {e}")))?;
    let again: Box<dyn GraphDriver> = reopen().map_err(|e| {
        let _ = suite.driver.remove("conformance-persist-child");
        let _ = suite.driver.remove("conformance-persist-base");
        Verdict::Fail(format!("restart the driver: {e}"))
    })?;
    let mut layers = Layers::new(again.as_ref());
    // Remove through the restarted driver whatever happens below.
    layers.adopt("conformance-persist-base");
    layers.adopt("conformance-persist-child");
    let mut listed = again
        .list()
        .map_err(|e| Verdict::Fail(format!("list after restart: {e}")))?;
    listed.sort();
    ensure!(
        listed == ["conformance-persist-base", "conformance-persist-child"],
        "after a restart the driver lists {listed:?}"
    );
    let child = layers.mount("conformance-persist-child")?;
    let content = std::fs::read(child.join("kept")).unwrap_or_default();
    layers.unmount("conformance-persist-child")?;
    ensure!(
        content == b"across restarts",
        "after a restart the child's content is {content:?}"
    );
    layers.remove("conformance-persist-child")?;
    layers.remove("conformance-persist-base")
}

fn new_layer_is_empty(suite: &Suite) -> CheckOutcome {
    #[cfg(unix)]
    needs_root()?;
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-empty", None)?;
    let path = layers.mount("conformance-empty")?;
    let entries: Result<Vec<String>, _> = fs::read_dir(&path).map(|list| {
        list.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    });
    let meta = fs::metadata(&path);
    layers.unmount("conformance-empty")?;
    let entries = io("list the new layer", entries)?;
    let meta = io("stat the new layer's root", meta)?;
    ensure!(
        entries.is_empty(),
        "a new layer without parent holds {entries:?}"
    );
    ensure!(meta.is_dir(), "a new layer's root is not a directory");
    // Owner and mode are Linux's; a Windows layer's root has an ACL.
    #[cfg(unix)]
    {
        ensure!(
            meta.uid() == 0 && meta.gid() == 0,
            "a new layer's root is owned {}:{}, expected 0:0",
            meta.uid(),
            meta.gid()
        );
        let mode = meta.permissions().mode() & 0o7777;
        ensure!(
            mode == 0o755,
            "a new layer's root has mode {mode:o}, expected 755"
        );
    }
    Ok(())
}

/// Ids no method may take: each could escape the driver's directory, hide,
/// or name nothing. The ones built on a real layer's id would reach that
/// layer in a driver that joined ids onto paths unchecked.
const BAD_IDS: [&str; 7] = [
    "../x",
    "a/b",
    ".hidden",
    "",
    "./conformance-ids",
    "conformance-ids/",
    "conformance-ids/.",
];

/// The driver's home, two levels deep, to see that a refused call changed
/// nothing in it (added or removed).
fn home_entries(home: Option<&Path>) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, depth: usize, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            if depth < 2 && entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, depth + 1, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    if let Some(home) = home {
        walk(home, home, 1, &mut out);
    }
    out
}

/// What a refused call must not change: the layers, the home, the mounts.
#[derive(PartialEq, Eq, Debug)]
struct DriverState {
    layers: Vec<String>,
    home: BTreeSet<PathBuf>,
    mounts: Vec<PathBuf>,
}

fn driver_state(suite: &Suite) -> Result<DriverState, Verdict> {
    let mut layers = suite
        .driver
        .list()
        .map_err(|e| Verdict::Fail(format!("list: {e}")))?;
    layers.sort();
    let home = suite.options.home.as_deref();
    Ok(DriverState {
        layers,
        home: home_entries(home),
        mounts: match home {
            Some(home) => mounts_under(home)?,
            None => Vec::new(),
        },
    })
}

/// Whether an answer is the method's own for a capability the driver does
/// not claim.
type Accepts<'a, T> = &'a dyn Fn(&strata_plugin_abi::Result<T>) -> bool;

/// One answer to a bad id: refused as InvalidInput, or, for a method whose
/// capability the driver does not claim, that method's own answer.
fn refused<T: std::fmt::Debug>(
    what: String,
    result: strata_plugin_abi::Result<T>,
    unclaimed: Option<Accepts<T>>,
    problems: &mut Vec<String>,
) {
    if unclaimed.is_some_and(|accept| accept(&result)) {
        return;
    }
    match result {
        Err(e) if e.kind() == ErrorKind::InvalidInput => {}
        Err(e) => problems.push(format!(
            "{what}: {} ({e}), expected invalid input",
            e.kind()
        )),
        Ok(value) => problems.push(format!(
            "{what}: succeeded ({value:?}), expected invalid input"
        )),
    }
}

fn invalid_ids_refused_by_every_method(suite: &Suite) -> CheckOutcome {
    let driver = suite.driver;
    let caps = driver.capabilities();
    let mut layers = Layers::new(driver);
    layers.create("conformance-ids", None)?;
    let path = layers.mount("conformance-ids")?;
    io("write", fs::write(path.join("kept"), b"untouched"))?;
    layers.unmount("conformance-ids")?;
    let before = driver_state(suite)?;
    let mut problems = Vec::new();
    let no_native = |r: &strata_plugin_abi::Result<Option<strata_plugin_abi::NativeDiff>>| {
        !caps.contains(Capabilities::NATIVE_DIFF) && matches!(r, Ok(None))
    };
    let not_owned = |r: &strata_plugin_abi::Result<u64>| {
        !caps.contains(Capabilities::OWNS_DIFF_FORMAT)
            && matches!(r, Err(e) if e.kind() == ErrorKind::NotSupported)
    };
    for id in BAD_IDS {
        let got = driver.get(id, &MountOptions::default());
        if got.is_ok() {
            let _ = driver.put(id);
        }
        refused(format!("get {id:?}"), got, None, &mut problems);
        refused(format!("put {id:?}"), driver.put(id), None, &mut problems);
        refused(
            format!("remove {id:?}"),
            driver.remove(id),
            None,
            &mut problems,
        );
        refused(
            format!("metadata {id:?}"),
            driver.metadata(id),
            None,
            &mut problems,
        );
        refused(
            format!("native_diff {id:?}"),
            driver.native_diff(id),
            Some(&no_native),
            &mut problems,
        );
        refused(
            format!("diff_size {id:?}"),
            driver.diff_size(id, None),
            Some(&not_owned),
            &mut problems,
        );
        let made = driver.create("conformance-ids-child", Some(id), &CreateOptions::default());
        if made.is_ok() {
            let _ = driver.remove("conformance-ids-child");
        }
        refused(
            format!("create with parent {id:?}"),
            made,
            None,
            &mut problems,
        );
        match driver.exists(id) {
            Ok(false) => {}
            Err(e) if e.kind() == ErrorKind::InvalidInput => {}
            Ok(true) => problems.push(format!("exists {id:?}: true")),
            Err(e) => problems.push(format!(
                "exists {id:?}: {} ({e}), expected false or invalid input",
                e.kind()
            )),
        }
    }
    let after = driver_state(suite)?;
    let path = layers.mount("conformance-ids")?;
    let kept = fs::read(path.join("kept")).unwrap_or_default();
    layers.unmount("conformance-ids")?;
    ensure!(
        problems.is_empty(),
        "bad ids were not refused as invalid input:\n{}",
        problems.join("\n")
    );
    ensure!(
        before == after,
        "calls with bad ids changed the driver: before {before:?}, after {after:?}"
    );
    ensure!(
        kept == b"untouched",
        "calls with bad ids changed the layer conformance-ids: its file reads {kept:?}"
    );
    Ok(())
}

fn cleanup_with_a_layer_mounted(suite: &Suite) -> CheckOutcome {
    let driver = suite.driver;
    let id = "conformance-cleanup-mounted";
    let mut layers = Layers::new(driver);
    layers.create(id, None)?;
    let path = layers.mount(id)?;
    io("write", fs::write(path.join("kept"), b"still here"))?;
    let mounts_before = mounts_on(&path)?;
    let cleaned = driver.cleanup();
    let exists = driver.exists(id);
    let read = fs::read(path.join("kept"));
    let mounts_after = mounts_on(&path)?;
    // Whether the layer itself still holds the file, when the path lost it.
    let through_a_new_get = match &read {
        Ok(_) => None,
        Err(_) => Some(match driver.get(id, &MountOptions::default()) {
            Ok(again) => {
                let content = fs::read(again.join("kept")).unwrap_or_default();
                let _ = driver.put(id);
                content
            }
            Err(_) => Vec::new(),
        }),
    };
    let put = driver.put(id);
    let removed = layers.remove(id);
    cleaned.map_err(|e| Verdict::Fail(format!("cleanup with a layer mounted: {e}")))?;
    ensure!(
        matches!(exists, Ok(true)),
        "after cleanup the mounted layer exists answers {exists:?}"
    );
    match read {
        Ok(content) => ensure!(
            content == b"still here",
            "after cleanup the mounted layer's file reads {content:?}"
        ),
        Err(e) => {
            let note = match through_a_new_get {
                Some(content) if content == b"still here" => {
                    "the layer still holds it: cleanup took the mount away, and a mount the host counted may be another process's"
                }
                _ => "a new get does not show it either",
            };
            return Err(Verdict::Fail(format!(
                "after cleanup {} cannot be read ({e}); {note}",
                path.join("kept").display()
            )));
        }
    }
    ensure!(
        mounts_after == mounts_before,
        "cleanup changed the mounts on {} from {mounts_before} to {mounts_after}",
        path.display()
    );
    put.map_err(|e| Verdict::Fail(format!("put after cleanup: {e}")))?;
    removed
}
