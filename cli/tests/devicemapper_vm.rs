//! The store on the devicemapper driver, through the `strata` command, in
//! the test VM (this host's kernel has no device-mapper; the VM boots
//! Debian's, which has dm-thin-pool; see `scripts/in-vm.sh`).
//!
//! `store_on_devicemapper_in_a_vm` runs on the host: it builds the driver,
//! boots the VM and runs this test binary there, asking for the one test
//! below that is ignored on the host. That test imports an OCI image,
//! makes, mounts, writes, unmounts and deletes a container, kills `image
//! import` at spread points and checks the store after each kill, and at
//! the end finds no device-mapper device and no loop device left once the
//! store's last process has gone.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use common::Store;
use strata_testkit::fixtures::layout::{Layer, write_image};
use strata_testkit::fixtures::tar_of_many;
use strata_testkit::plugins::build_plugin;

const INNER: &str = "devicemapper_store_inside_the_vm";
const IN_VM: &str = "STRATA_TEST_IN_VM";

#[test]
fn store_on_devicemapper_in_a_vm() {
    if let Some(why) = strata_testkit::vm::unavailable() {
        strata_testkit::skip::cannot_run("store_on_devicemapper_in_a_vm", &why);
        return;
    }
    let driver = build_plugin("strata-driver-devicemapper");
    let runner = strata_testkit::vm::InVm::new().expect("write the VM runner");
    let out = runner
        .command(
            std::env::current_exe().expect("this test binary"),
            [
                "--ignored",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
                INNER,
            ],
        )
        .env("STRATA_TEST_DRIVER_DIR", driver.parent().unwrap())
        .env(IN_VM, "1")
        .stderr(Stdio::inherit())
        .output()
        .expect("start the VM");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "the VM run failed ({})", out.status);
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the test did not run in the VM"
    );
}

fn ok(store: &Store, args: &[&str]) -> String {
    common::outcome(args, store.command(args).arg("--json").output())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn json(store: &Store, args: &[&str]) -> serde_json::Value {
    let out = ok(store, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// The store opens and `check` finds nothing wrong.
fn assert_checks_clean(store: &Store, after: &str) {
    let out = store.command(&["check"]).output().unwrap();
    assert!(
        out.status.success(),
        "after {after}: check found something: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What is in `/sys/block` of a kind: device-mapper devices (`dm-`) or
/// loop devices with a backing file.
fn block_devices_in_use() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("dm-") || entry.path().join("loop/backing_file").exists() {
            found.push(name);
        }
    }
    found
}

#[test]
#[ignore = "runs inside the VM, started by store_on_devicemapper_in_a_vm"]
fn devicemapper_store_inside_the_vm() {
    assert!(
        std::env::var_os(IN_VM).is_some(),
        "this test runs in the VM; run store_on_devicemapper_in_a_vm"
    );
    assert!(
        block_devices_in_use().is_empty(),
        "the VM started with devices in use"
    );
    {
        let store = Store::on("strata-dm-", "devicemapper");
        let layout = store.scratch.path().join("layout");
        let layers: Vec<Layer> = (0..2)
            .map(|i| Layer::gzip(&tar_of_many(&format!("part-{i}"), 300, 2048)))
            .collect();
        write_image(&layout, "app", &layers, "app");
        let location = format!("{}:app", layout.display());

        // The first start makes the pool and the base device's filesystem.
        let started = Instant::now();
        ok(&store, &["layer", "list"]);
        println!(
            "first start (pool and base device made): {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        ok(&store, &["layer", "list"]);
        println!("a later start (pool activated): {:?}", started.elapsed());

        // Import, then a container: made, mounted, written, unmounted,
        // mounted again (the write is kept), deleted.
        let started = Instant::now();
        ok(&store, &["image", "import", &location]);
        let import_time = started.elapsed();
        println!("import of 2 layers x 300 files: {import_time:?}");
        let status = json(&store, &["status"]);
        assert_eq!(status["driver"], "devicemapper", "{status}");
        let container = json(&store, &["container", "create", "app"]);
        let container = container["id"].as_str().unwrap().to_string();
        let mounted = json(&store, &["container", "mount", &container]);
        let path = PathBuf::from(mounted["path"].as_str().unwrap());
        assert!(path.join("part-1/file-00299").exists(), "the image's files");
        std::fs::write(path.join("written"), b"kept").unwrap();
        ok(&store, &["container", "unmount", &container]);
        let mounted = json(&store, &["container", "mount", &container]);
        let path = PathBuf::from(mounted["path"].as_str().unwrap());
        assert_eq!(std::fs::read(path.join("written")).unwrap(), b"kept");
        ok(&store, &["container", "unmount", &container]);
        ok(&store, &["container", "delete", &container]);
        ok(&store, &["image", "delete", "app"]);
        assert_checks_clean(&store, "the container's life");

        // kill -9 during import, at points spread over its length.
        const KILLS: u32 = 6;
        let mut landed = 0;
        for k in 1..=KILLS {
            let delay = import_time * k / (KILLS + 1);
            let mut child = store
                .command(&["image", "import", &location])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            if child.try_wait().unwrap().is_none() {
                landed += 1;
            }
            let _ = child.kill();
            child.wait().unwrap();
            assert_checks_clean(&store, &format!("a kill {delay:?} into an import"));
            ok(&store, &["image", "import", &location]);
            assert_checks_clean(&store, "the import after a kill");
            ok(&store, &["image", "delete", "app"]);
        }
        println!("{landed} of {KILLS} kills landed inside an import");
        assert!(landed * 2 >= KILLS, "only {landed} of {KILLS} kills landed");
        let layers = json(&store, &["layer", "list"]);
        assert_eq!(layers.as_array().map(Vec::len), Some(0), "{layers}");
    }
    // The last process took the idle pool down with its loop devices.
    let left = block_devices_in_use();
    assert!(left.is_empty(), "left in use: {left:?}");
}
