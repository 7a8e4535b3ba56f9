//! The overlay driver through its library, on this kernel's overlayfs.

use std::fs;
use std::path::Path;

use strata_conformance::harness::{read_write as rw, start_driver};
use strata_plugin_abi::{ErrorKind, GraphDriver, LoadedDriver, MountOptions};

fn start(home: &Path, options: &[(&str, &str)]) -> strata_plugin_abi::Result<LoadedDriver> {
    start_driver("strata-driver-overlay", home, options)
}

/// Builds a stack of `depth` layers, each adding `own-<i>` and shadowing
/// `top`; checks every layer reads back its own view, then removes them.
fn stack(driver: &LoadedDriver, depth: usize) {
    let id = |i: usize| format!("deep-{i:04}");
    for i in 0..depth {
        let parent = (i > 0).then(|| id(i - 1));
        driver
            .create(&id(i), parent.as_deref(), &rw())
            .unwrap_or_else(|e| panic!("layer {i}: {e}"));
        let path = driver
            .get(&id(i), &MountOptions::default())
            .unwrap_or_else(|e| panic!("mount {i}: {e}"));
        fs::write(path.join(format!("own-{i:04}")), i.to_string()).unwrap();
        fs::write(path.join("top"), i.to_string()).unwrap();
        driver.put(&id(i)).unwrap();
    }
    for i in (0..depth).step_by((depth / 16).max(1)).chain([depth - 1]) {
        let path = driver.get(&id(i), &MountOptions::default()).unwrap();
        assert_eq!(
            fs::read_to_string(path.join("top")).unwrap(),
            i.to_string(),
            "layer {i}"
        );
        let own = fs::read_dir(&path)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("own-")
            })
            .count();
        assert_eq!(own, i + 1, "layer {i} sees {own} own-* files");
        driver.put(&id(i)).unwrap();
    }
    for i in (0..depth).rev() {
        driver.remove(&id(i)).unwrap();
    }
}

#[test]
fn stacks_of_128_and_500_layers_mount_and_read_back() {
    let home = tempfile::tempdir().unwrap();
    let driver = start(home.path(), &[]).unwrap();
    let status = driver.status();
    let limit: usize = status.get("max stack depth").unwrap().parse().unwrap();
    println!(
        "overlay here: {:?}, max depth {limit}",
        status.get("mount method")
    );
    for depth in [128, 500] {
        if depth > limit {
            // Before Linux 6.8 (no lowerdir+), the mount data's page limits
            // the stack: the 500 deep case cannot run there.
            strata_testkit::skip::cannot_run(
                &format!("a stack of {depth}"),
                &format!(
                    "this kernel's overlay mounts at most {limit} layers (Linux 6.8 lowerdir+ allows 500)"
                ),
            );
            continue;
        }
        stack(&driver, depth);
    }
}

#[test]
fn a_stack_deeper_than_the_kernel_allows_is_refused_at_create() {
    let home = tempfile::tempdir().unwrap();
    let driver = start(home.path(), &[]).unwrap();
    let limit: usize = driver
        .status()
        .get("max stack depth")
        .unwrap()
        .parse()
        .unwrap();
    let id = |i: usize| format!("l{i:04}");
    for i in 0..limit {
        let parent = (i > 0).then(|| id(i - 1));
        driver.create(&id(i), parent.as_deref(), &rw()).unwrap();
    }
    // The deepest allowed layer mounts.
    let path = driver
        .get(&id(limit - 1), &MountOptions::default())
        .unwrap();
    assert!(path.is_dir());
    driver.put(&id(limit - 1)).unwrap();
    // One more is refused when it is created, not when it is mounted.
    let err = driver
        .create(&id(limit), Some(&id(limit - 1)), &rw())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(
        err.message().contains("deeper than overlay allows"),
        "{err}"
    );
    assert!(!driver.exists(&id(limit)).unwrap());
    for i in (0..limit).rev() {
        driver.remove(&id(i)).unwrap();
    }
}

#[test]
fn lost_mount_points_and_links_are_made_again() {
    let home = tempfile::tempdir().unwrap();
    let driver = start(home.path(), &[]).unwrap();
    driver.create("base", None, &rw()).unwrap();
    let base = driver.get("base", &MountOptions::default()).unwrap();
    fs::write(base.join("f"), b"x").unwrap();
    driver.put("base").unwrap();
    driver.create("child", Some("base"), &rw()).unwrap();
    // Lose the child's mount point and the base's short link.
    fs::remove_dir(home.path().join("layers/child/merged")).unwrap();
    let link = fs::read_to_string(home.path().join("layers/base/link")).unwrap();
    fs::remove_file(home.path().join("l").join(&link)).unwrap();
    let child = driver.get("child", &MountOptions::default()).unwrap();
    assert_eq!(fs::read(child.join("f")).unwrap(), b"x");
    driver.put("child").unwrap();
    assert!(home.path().join("l").join(&link).exists());
    driver.remove("child").unwrap();
    driver.remove("base").unwrap();
}

#[test]
fn mount_options_are_validated() {
    let home = tempfile::tempdir().unwrap();
    let err = start(home.path(), &[("mountopt", "nodev,bogus")])
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("'bogus'"), "{err}");
    let driver = start(home.path(), &[("mountopt", "nodev,nosuid")]).unwrap();
    driver.create("a", None, &rw()).unwrap();
    let path = driver.get("a", &MountOptions::default()).unwrap();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(path.to_str().unwrap()))
        .unwrap()
        .to_string();
    driver.put("a").unwrap();
    assert!(line.contains("nodev") && line.contains("nosuid"), "{line}");
    let bad = driver.get(
        "a",
        &MountOptions {
            options: vec!["exec-all".into()],
            ..Default::default()
        },
    );
    assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidInput);
    driver.remove("a").unwrap();
}

#[test]
fn the_mount2_fallback_stacks_as_deep_as_one_page_allows() {
    let home = tempfile::tempdir().unwrap();
    let driver = start(home.path(), &[("mount_method", "legacy")]).unwrap();
    let status = driver.status();
    assert_eq!(
        status.get("mount method"),
        Some("mount(2) with short link names")
    );
    let limit: usize = status.get("max stack depth").unwrap().parse().unwrap();
    assert!(limit >= 16, "only {limit} layers fit a page with this home");
    stack(&driver, limit);
    // One more than a page holds is refused at create.
    let id = |i: usize| format!("p{i:04}");
    for i in 0..limit {
        let parent = (i > 0).then(|| id(i - 1));
        driver.create(&id(i), parent.as_deref(), &rw()).unwrap();
    }
    let err = driver
        .create(&id(limit), Some(&id(limit - 1)), &rw())
        .unwrap_err();
    assert!(
        err.message().contains("deeper than overlay allows"),
        "{err}"
    );
    for i in (0..limit).rev() {
        driver.remove(&id(i)).unwrap();
    }
}

#[test]
fn a_home_whose_path_overlay_cannot_carry_is_refused_at_start() {
    let scratch = tempfile::tempdir().unwrap();
    for name in ["back\\slash", "com,ma", "co:lon"] {
        let err = start(&scratch.path().join(name), &[]).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::NotSupported, "{name}: {err}");
        assert!(err.message().contains("cannot carry"), "{err}");
    }
}

#[test]
fn layers_may_be_called_l_or_empty() {
    // The kit keeps layers apart from the driver's own l/ and empty/.
    let home = tempfile::tempdir().unwrap();
    let driver = start(home.path(), &[]).unwrap();
    driver.create("l", None, &rw()).unwrap();
    driver.create("empty", Some("l"), &rw()).unwrap();
    let path = driver.get("empty", &MountOptions::default()).unwrap();
    fs::write(path.join("f"), b"x").unwrap();
    driver.put("empty").unwrap();
    let mut listed = driver.list().unwrap();
    listed.sort();
    assert_eq!(listed, ["empty", "l"]);
    driver.remove("empty").unwrap();
    driver.remove("l").unwrap();
}
