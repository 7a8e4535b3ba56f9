//! Creating, listing, removing and re-opening layers.

use strata_plugin_abi::{CreateOptions, ErrorKind, GraphDriver};

use super::{Layers, check, expect_kind, io};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "lifecycle/create-exists-list-remove",
            create_exists_list_remove,
        ),
        check(
            "lifecycle/read-only-and-read-write-layers",
            read_only_and_read_write,
        ),
        check("lifecycle/duplicate-id-refused", duplicate_id_refused),
        check("lifecycle/unknown-parent-refused", unknown_parent_refused),
        check("lifecycle/invalid-id-refused", invalid_id_refused),
        check("lifecycle/id-reuse-after-remove", id_reuse_after_remove),
        check(
            "lifecycle/remove-with-children-refused",
            remove_with_children_refused,
        ),
        check("lifecycle/cleanup-is-idempotent", cleanup_is_idempotent),
        check(
            "lifecycle/reopened-driver-sees-the-same-layers",
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
    layers.create("conformance-dup", None)?;
    expect_kind(
        "second create of the same id",
        suite
            .driver
            .create("conformance-dup", None, &CreateOptions::default()),
        ErrorKind::AlreadyExists,
    )
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
