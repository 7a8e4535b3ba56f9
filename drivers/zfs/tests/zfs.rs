//! The zfs driver through its library, on a zfs-fuse pool backed by a file:
//! what the conformance suite cannot know about (where the driver refuses
//! to start, datasets a killed create left, metadata).

use std::path::Path;
use std::process::Command;

use strata_conformance::harness::{read_write as rw, start_driver};
use strata_plugin_abi::{CreateOptions, ErrorKind, GraphDriver, LoadedDriver};
use strata_testkit::mounts::{ScratchTmpfs, ZfsFusePool};
use strata_testkit::skip;

fn start(home: &Path) -> strata_plugin_abi::Result<LoadedDriver> {
    start_driver("strata-driver-zfs", home, &[])
}

/// A zfs-fuse pool, or `None` (after saying why) where the test cannot make
/// one.
fn pool(test: &str) -> Option<ZfsFusePool> {
    if !skip::is_root() {
        skip::cannot_run(test, "needs root to run zfs-fuse");
        return None;
    }
    if !skip::have_tool("zfs-fuse") {
        skip::cannot_run(
            test,
            "zfs-fuse is missing (scripts/install-deps.sh installs it)",
        );
        return None;
    }
    Some(ZfsFusePool::new(1 << 30).expect("a zfs-fuse pool"))
}

fn zfs(args: &[&str]) -> String {
    let out = Command::new("zfs").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "zfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The datasets below the pool's root.
fn datasets(pool: &ZfsFusePool) -> Vec<String> {
    zfs(&[
        "list",
        "-H",
        "-o",
        "name",
        "-t",
        "filesystem",
        "-r",
        pool.name(),
    ])
    .lines()
    .filter(|name| *name != pool.name())
    .map(str::to_string)
    .collect()
}

#[test]
fn datasets_a_killed_create_left_are_destroyed_at_the_next_start() {
    let Some(pool) = pool("zfs leftovers") else {
        return;
    };
    let home = pool.path().join("graph/zfs");
    let driver = start(&home).unwrap();
    driver.create("kept", None, &rw()).unwrap();
    driver.cleanup().unwrap();
    drop(driver);
    let home = home.canonicalize().unwrap();
    // What a create killed after `zfs create` and before its placement
    // leaves: a dataset of this home that no layer names. Beside it, one of
    // another home, which is not this driver's to touch.
    let leftover = format!("{}/strata-leftover", pool.name());
    zfs(&[
        "create",
        "-o",
        &format!("strata:home={}", home.display()),
        "-o",
        "mountpoint=none",
        &leftover,
    ]);
    let foreign = format!("{}/strata-foreign", pool.name());
    zfs(&[
        "create",
        "-o",
        "strata:home=/elsewhere",
        "-o",
        "mountpoint=none",
        &foreign,
    ]);
    let driver = start(&home).unwrap();
    let left = datasets(&pool);
    assert!(!left.contains(&leftover), "{left:?}");
    assert!(left.contains(&foreign), "{left:?}");
    assert_eq!(driver.list().unwrap(), ["kept"]);
    driver.remove("kept").unwrap();
    assert_eq!(datasets(&pool), std::slice::from_ref(&foreign));
    zfs(&["destroy", &foreign]);
}

#[test]
fn a_home_off_zfs_is_not_supported_and_left_unmade() {
    let Some(_pool) = pool("zfs elsewhere") else {
        return;
    };
    let tmpfs = ScratchTmpfs::new(16 << 20).expect("a tmpfs");
    let home = tmpfs.path().join("graph/zfs");
    let error = start(&home).err().expect("the zfs driver refuses tmpfs");
    assert_eq!(error.kind(), ErrorKind::NotSupported, "{error}");
    let message = error.to_string();
    assert!(message.contains("is not on a ZFS dataset"), "{message}");
    assert!(!home.exists(), "the refused home was made");
}

#[test]
fn metadata_and_status_say_what_zfs_keeps() {
    let Some(pool) = pool("zfs metadata") else {
        return;
    };
    let driver = start(&pool.path().join("zfs")).unwrap();
    let status = driver.status();
    assert_eq!(
        status.get("parent dataset"),
        Some(pool.name()),
        "{status:?}"
    );
    assert!(
        status.get("mounting").unwrap().starts_with("zfs-fuse"),
        "{status:?}"
    );
    let mut sized = rw();
    sized.storage_opts.push("size", "64M");
    driver.create("sized", None, &sized).unwrap();
    driver
        .create("image", Some("sized"), &CreateOptions::default())
        .unwrap();
    let facts = driver.metadata("sized").unwrap();
    assert_eq!(facts.get("refquota"), Some("67108864"), "{facts:?}");
    assert_eq!(facts.get("readonly"), Some("off"), "{facts:?}");
    let facts = driver.metadata("image").unwrap();
    assert_eq!(facts.get("readonly"), Some("on"), "{facts:?}");
    assert!(facts.get("origin").unwrap().contains('@'), "{facts:?}");
    driver.remove("image").unwrap();
    driver.remove("sized").unwrap();
    assert!(datasets(&pool).is_empty(), "{:?}", datasets(&pool));
}
