//! `strata check` finds each kind of inconsistency planted behind the
//! store's back, `--repair` fixes them keeping every image still whole, and
//! a second check is clean; `prune` and `system df` report and reclaim
//! unused layers; a graph root written by the JSON version is migrated once.

mod common;

use common::Store;
use strata_testkit::fixtures;

use std::fs;
use std::path::PathBuf;

use fixtures::RawTar;
use fixtures::layout::{Layer, write_image};

impl Store {
    fn new() -> Store {
        Store::on_driver("vfs")
    }

    fn on_driver(driver: &'static str) -> Store {
        Store::on("strata-check-", driver)
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        self.run_plain(&with_json)
    }

    fn run_plain(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let (ok, out, err) = self.run(args);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
    }

    fn sql(&self, statement: &str) {
        let db =
            rusqlite::Connection::open(self.graph().join(format!("{}.db", self.driver))).unwrap();
        db.execute_batch(statement).unwrap();
    }

    fn import(&self, tag: &str) -> String {
        let layers: Vec<Layer> = (0..3)
            .map(|i| {
                let mut tar = RawTar::new();
                tar.file(&format!("{tag}-{i}"), tag.as_bytes());
                Layer::gzip(&tar.finish())
            })
            .collect();
        let layout = self.scratch.path().join("layout");
        write_image(&layout, tag, &layers, tag);
        let report = self.json(&["image", "import", &format!("{}:{tag}", layout.display())]);
        report["id"].as_str().unwrap().to_string()
    }
}

#[test]
fn check_finds_what_was_broken_and_repair_keeps_the_whole_images() {
    let store = Store::new();
    let whole = store.import("whole");
    let broken = store.import("broken");
    let inspect = store.json(&["image", "inspect", &broken]);
    let broken_top = inspect["top_layer"].as_str().unwrap().to_string();
    store.json(&["container", "create", &whole, "--name", "keeper"]);
    let doomed = store.json(&["container", "create", &broken, "--name", "doomed"]);
    let doomed = doomed["id"].as_str().unwrap().to_string();
    let (clean, out, _) = store.run(&["check"]);
    assert!(clean, "a fresh store is clean: {out}");

    // A record without its driver layer: the broken image's top layer.
    fs::remove_dir_all(store.graph().join(format!("vfs/layers/{broken_top}"))).unwrap();
    // A driver layer without a record.
    store.json(&["layer", "create", "orphan"]);
    store.sql("DELETE FROM layers WHERE id = 'orphan';");
    // A name naming nothing, and a tar-split file of no layer.
    store.sql("INSERT INTO names (kind, name, owner) VALUES ('image', 'ghost:1', 'nothing');");
    fs::write(store.graph().join("vfs-layers/gone.tar-split.gz"), b"").unwrap();

    let (clean, out, _) = store.run(&["check"]);
    assert!(!clean, "check must fail on a broken store: {out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let found: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for expected in [
        ("layer", broken_top.as_str()),
        ("layer", "orphan"),
        ("image", broken.as_str()),
        ("container", doomed.as_str()),
        ("name", "ghost:1"),
    ] {
        assert!(
            found
                .iter()
                .any(|(k, s)| k == expected.0 && s == expected.1),
            "check did not find {expected:?}: {found:?}"
        );
    }
    assert!(
        found
            .iter()
            .any(|(k, s)| k == "file" && s.ends_with("gone.tar-split.gz")),
        "{found:?}"
    );

    let (repaired, out, err) = store.run(&["check", "--repair"]);
    assert!(repaired, "repair left something: {out} {err}");
    let (clean, out, _) = store.run(&["check"]);
    assert!(clean, "a second check finds nothing: {out}");
    // The whole image and its container stay; the broken ones went.
    let images = store.json(&["image", "list"]);
    let ids: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![whole.as_str()]);
    let mounted = store.json(&["container", "mount", "keeper"]);
    assert!(
        PathBuf::from(mounted["path"].as_str().unwrap())
            .join("whole-2")
            .exists()
    );
    store.json(&["container", "unmount", "keeper"]);
    assert!(!store.run(&["container", "mount", "doomed"]).0);
    assert!(!store.graph().join("vfs/layers/orphan").exists());
    // The broken image imports again.
    store.import("broken");
    assert!(store.run(&["check"]).0);
}

#[test]
fn prune_and_df_reclaim_unused_layers() {
    let store = Store::new();
    let image = store.import("kept");
    store.json(&["layer", "create", "loose-base"]);
    store.json(&["layer", "create", "--parent", "loose-base", "loose-top"]);
    let usage = store.json(&["system", "df"]);
    assert_eq!(usage["images"]["count"], 1);
    assert_eq!(usage["layers"]["count"], 5);
    assert_eq!(usage["layers"]["unused"], 2);
    let dry = store.json(&["prune", "--dry-run"]);
    assert_eq!(
        dry["layers"],
        serde_json::json!(["loose-top", "loose-base"])
    );
    assert!(store.graph().join("vfs/layers/loose-top").exists());
    let pruned = store.json(&["prune"]);
    assert_eq!(
        pruned["layers"],
        serde_json::json!(["loose-top", "loose-base"])
    );
    assert!(!store.graph().join("vfs/layers/loose-base").exists());
    let usage = store.json(&["system", "df"]);
    assert_eq!(usage["layers"]["count"], 3);
    assert_eq!(usage["layers"]["unused"], 0);
    store.json(&["image", "inspect", &image]);
    assert!(store.run(&["check"]).0);
}

#[test]
fn a_graph_root_of_the_json_version_is_migrated_once() {
    let store = Store::new();
    let graph = store.graph();
    // Driver layers the JSON version made, and its records.
    store.json(&["layer", "create", "base"]);
    store.json(&["layer", "create", "--parent", "base", "top"]);
    fs::remove_file(graph.join("vfs.db")).unwrap();
    let _ = fs::remove_file(graph.join("vfs.db-wal"));
    let _ = fs::remove_file(graph.join("vfs.db-shm"));
    let image = "ab".repeat(32);
    fs::create_dir_all(graph.join("vfs-layers")).unwrap();
    fs::write(
        graph.join("vfs-layers/layers.json"),
        serde_json::to_vec(&serde_json::json!({"layers": {
            "base": {"id": "base", "created": 1, "read_only": true},
            "top": {"id": "top", "parent": "base", "created": 2, "read_only": true, "names": ["top-name"]},
        }}))
        .unwrap(),
    )
    .unwrap();
    fs::create_dir_all(graph.join(format!("vfs-images/{image}"))).unwrap();
    fs::write(
        graph.join("vfs-images/images.json"),
        serde_json::to_vec(&serde_json::json!({"images": {
            image.clone(): {"id": image, "names": ["old:1"], "top_layer": "top", "created": 3,
                "big_data": {"manifest": {"digest": "sha256:x", "size": 2}}},
        }}))
        .unwrap(),
    )
    .unwrap();
    // The big data file, named by the key in URL-safe base64 ("manifest").
    fs::write(
        graph.join(format!("vfs-images/{image}/=bWFuaWZlc3Q")),
        b"{}",
    )
    .unwrap();
    let inspect = store.json(&["image", "inspect", "old:1"]);
    assert_eq!(inspect["id"], image.as_str());
    assert_eq!(inspect["top_layer"], "top");
    assert_eq!(inspect["manifest"], serde_json::json!({}));
    assert_eq!(inspect["layers"].as_array().unwrap().len(), 2);
    assert!(
        store.json(&["layer", "exists", "top-name"])["exists"]
            .as_bool()
            .unwrap()
    );
    // The text listing counts an image's layers from the migrated depths.
    let (ok, listed, err) = store.run_plain(&["image", "list"]);
    assert!(ok, "{err}");
    assert!(
        listed.lines().any(|l| l.starts_with("abababababab  2 ")),
        "{listed}"
    );
    assert!(graph.join("vfs-layers/layers.json.migrated").exists());
    assert!(!graph.join("vfs-layers/layers.json").exists());
    // Once: a later open changes nothing, and the records are whole.
    assert!(store.run(&["check"]).0);
    store.json(&["image", "delete", "old:1"]);
    assert!(!graph.join("vfs/layers/base").exists());
    assert!(store.run(&["check"]).0);
}

#[test]
fn a_counted_mount_that_went_behind_the_counts_back_is_found_and_mounted_again() {
    let store = Store::on_driver("overlay");
    store.json(&["layer", "create", "base"]);
    let mounted = store.json(&["layer", "mount", "base"]);
    let path = PathBuf::from(mounted["path"].as_str().unwrap());
    assert_eq!(mounted["mounts"], 1);
    // Unmounted by hand (or a reboot with a run root that is not tmpfs).
    rustix::mount::unmount(&path, rustix::mount::UnmountFlags::empty()).unwrap();
    let (clean, out, _) = store.run(&["check"]);
    assert!(!clean, "{out}");
    assert!(out.contains("is no longer mounted"), "{out}");
    // The next mount mounts it again rather than hand out an empty path.
    let again = store.json(&["layer", "mount", "base"]);
    assert_eq!(again["mounts"], 1);
    assert!(strata_core::mounts::is_mount_point(&path));
    assert!(store.run(&["check"]).0);
    store.json(&["layer", "unmount", "base"]);
    assert!(!strata_core::mounts::is_mount_point(&path));
    // And repair forgets such a count.
    store.json(&["layer", "mount", "base"]);
    rustix::mount::unmount(&path, rustix::mount::UnmountFlags::empty()).unwrap();
    let (repaired, out, err) = store.run(&["check", "--repair"]);
    assert!(repaired, "{out} {err}");
    assert!(store.run(&["check"]).0);
}

#[test]
fn a_layer_on_a_parent_only_the_driver_knows_is_whole() {
    let store = Store::new();
    // A parent made before records were kept: the driver has it, no row.
    store.json(&["layer", "create", "legacy-base"]);
    store.sql("DELETE FROM layers WHERE id = 'legacy-base';");
    store.json(&["layer", "create", "--parent", "legacy-base", "kid"]);
    let (clean, out, _) = store.run(&["check"]);
    assert!(
        clean,
        "a child of a driver-only parent is not broken: {out}"
    );
    let (repaired, out, err) = store.run(&["check", "--repair"]);
    assert!(repaired, "{out} {err}");
    assert!(store.graph().join("vfs/layers/kid").exists());
    assert!(store.graph().join("vfs/layers/legacy-base").exists());
}
