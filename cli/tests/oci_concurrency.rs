//! Two processes importing different images (sharing their first layer)
//! into one store at the same time: both succeed and both images are whole.

use strata_testkit::fixtures;

use std::path::Path;
use std::process::{Command, Stdio};

use fixtures::layout::{Layer, write_image};
use fixtures::tar_of_many;
use strata_testkit::plugins::build_plugin;

fn strata(graph: &Path, driver: &str, args: &[&str]) -> Command {
    let drivers = build_plugin(&format!("strata-driver-{driver}"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command
        .env("STRATA_DRIVER_PATH", drivers.parent().unwrap())
        .env_remove("STRATA_CONFIG")
        .args(["--root", graph.join("graph").to_str().unwrap()])
        .args(["--run-root", graph.join("run").to_str().unwrap()])
        .args(["--driver", driver, "--json"])
        .args(args);
    command
}

fn two_imports_at_once(driver: &str) {
    let scratch = tempfile::Builder::new()
        .prefix("strata-concurrent-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let scratch = scratch.path();
    let base = tar_of_many("base", 3000, 4096);
    for (name, salt) in [("one", "1"), ("two", "2")] {
        let layers: Vec<Layer> = std::iter::once(Layer::gzip(&base))
            .chain((0..3).map(|i| Layer::gzip(&tar_of_many(&format!("{name}-{i}"), 400, 4096))))
            .collect();
        write_image(&scratch.join(name), name, &layers, salt);
    }
    let children: Vec<_> = ["one", "two"]
        .iter()
        .map(|name| {
            let location = format!("{}:{name}", scratch.join(name).display());
            strata(scratch, driver, &["image", "import", &location])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Containers are taken down (unmounted) however the test ends.
    let _teardown = Teardown(|| {
        for name in ["one", "two"] {
            let _ = strata(scratch, driver, &["container", "delete", name]).output();
        }
    });
    let mut created_base = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "an import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let created = report["created_layers"].as_array().unwrap().len();
        let reused = report["reused_layers"].as_array().unwrap().len();
        assert_eq!(created + reused, 4, "{report}");
        created_base += created - 3;
    }
    assert_eq!(created_base, 1, "exactly one import made the shared layer");

    let images = succeed(&mut strata(scratch, driver, &["image", "list"]));
    assert_eq!(images.as_array().unwrap().len(), 2, "{images}");
    for name in ["one", "two"] {
        succeed(&mut strata(
            scratch,
            driver,
            &["container", "create", name, "--name", name],
        ));
        let mounted = succeed(&mut strata(scratch, driver, &["container", "mount", name]));
        let root = Path::new(mounted["path"].as_str().unwrap());
        let count = |dir: &str| std::fs::read_dir(root.join(dir)).unwrap().count();
        assert_eq!(count("base"), 3000);
        for i in 0..3 {
            assert_eq!(count(&format!("{name}-{i}")), 400);
        }
        let expected: Vec<u8> = (0..4096).map(|b| ((b * 31 + 2999) % 251) as u8).collect();
        assert_eq!(
            std::fs::read(root.join("base/file-02999")).unwrap(),
            expected
        );
        succeed(&mut strata(scratch, driver, &["container", "delete", name]));
    }
    for name in ["one", "two"] {
        succeed(&mut strata(scratch, driver, &["image", "delete", name]));
    }
    let layers = succeed(&mut strata(scratch, driver, &["layer", "list"]));
    assert_eq!(layers, serde_json::json!([]));
}

/// Runs its closure when dropped.
struct Teardown<F: FnMut()>(F);

impl<F: FnMut()> Drop for Teardown<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Runs a `strata --json` command, failing the test with its error output if
/// it fails; returns what it printed.
fn succeed(command: &mut Command) -> serde_json::Value {
    let stdout = strata_testkit::run_ok(command);
    if stdout.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&stdout).unwrap()
}

#[test]
fn two_processes_import_into_one_store_on_vfs() {
    two_imports_at_once("vfs");
}

#[test]
fn two_processes_import_into_one_store_on_overlay() {
    two_imports_at_once("overlay");
}

/// An import killed part way (some layers made, one being made, no image
/// recorded) leaves nothing once the store is next opened.
#[test]
fn an_import_killed_part_way_leaves_nothing() {
    let scratch = tempfile::Builder::new()
        .prefix("strata-killed-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let scratch = scratch.path();
    let layers: Vec<Layer> = (0..4)
        .map(|i| Layer::gzip(&tar_of_many(&format!("part-{i}"), 3000, 4096)))
        .collect();
    write_image(&scratch.join("layout"), "big", &layers, "killed");
    let location = format!("{}:big", scratch.join("layout").display());
    let mut child = strata(scratch, "vfs", &["image", "import", &location])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until at least one layer is complete, then kill the import.
    let records = scratch.join("graph/vfs.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let complete: i64 = rusqlite::Connection::open_with_flags(
            &records,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|db| {
            db.query_row("SELECT count(*) FROM layers WHERE state = 0", [], |r| {
                r.get(0)
            })
        })
        .unwrap_or(0);
        if complete >= 1 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before it could be killed"
        );
        assert!(std::time::Instant::now() < deadline, "no layer was made");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let listed = succeed(&mut strata(scratch, "vfs", &["layer", "list"]));
    assert_eq!(
        listed,
        serde_json::json!([]),
        "layers left by the killed import"
    );
    let images = succeed(&mut strata(scratch, "vfs", &["image", "list"]));
    assert_eq!(images, serde_json::json!([]));
    let leftovers: Vec<_> = std::fs::read_dir(scratch.join("graph/vfs-sessions"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "sessions left: {leftovers:?}");
    // The same image imports whole afterwards.
    succeed(&mut strata(scratch, "vfs", &["image", "import", &location]));
}
