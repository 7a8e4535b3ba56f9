//! The btrfs driver through its library, on a loop-mounted btrfs: what the
//! conformance suite cannot know about (subvolumes a container makes inside
//! a layer, read-only snapshots among them; where the driver refuses to
//! start).

use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;
use std::path::Path;

use strata_conformance::harness::{read_write as rw, start_driver};
use strata_plugin_abi::{CreateOptions, ErrorKind, GraphDriver, LoadedDriver, MountOptions};
use strata_testkit::mounts::{LoopFilesystem, LoopFsKind};
use strata_testkit::skip;

fn start(home: &Path) -> strata_plugin_abi::Result<LoadedDriver> {
    start_driver("strata-driver-btrfs", home, &[])
}

/// A btrfs on a loop device, or `None` (after saying why) where the test
/// cannot make one.
fn loop_btrfs(test: &str) -> Option<LoopFilesystem> {
    if !skip::is_root() {
        skip::cannot_run(test, "needs root for a loop device and subvolume ioctls");
        return None;
    }
    if !skip::have_tool("mkfs.btrfs") {
        skip::cannot_run(test, "mkfs.btrfs is missing (btrfs-progs)");
        return None;
    }
    Some(LoopFilesystem::new(LoopFsKind::Btrfs, 1 << 30).expect("a loop btrfs"))
}

fn open_dir(path: &Path) -> fs::File {
    fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Makes subvolume `name` in `dir`, as a process in a container would.
fn make_subvolume(dir: &Path, name: &str) {
    let holder = open_dir(dir);
    let name = CString::new(name).unwrap();
    btrfs_uapi::subvolume::subvolume_create(holder.as_fd(), &name, &[])
        .unwrap_or_else(|e| panic!("subvolume {}/{name:?}: {e}", dir.display()));
}

/// Every subvolume of the filesystem at `root` that a path still reaches.
/// A deleted subvolume the kernel's cleaner has not reclaimed yet is listed
/// without a name (no directory entry refers to it): it is gone.
fn subvolumes(root: &Path) -> Vec<String> {
    let fd = open_dir(root);
    btrfs_uapi::filesystem::sync(fd.as_fd()).unwrap();
    btrfs_uapi::subvolume::subvolume_list(fd.as_fd())
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn nested_subvolumes_at_any_depth_go_with_their_layer() {
    let test = "nested subvolumes on btrfs";
    let Some(fs) = loop_btrfs(test) else { return };
    let home = fs.path().join("graph/btrfs");
    let driver = start(&home).unwrap();

    // An image layer, filled as the host fills one, then a container on it.
    driver
        .create("image", None, &CreateOptions::default())
        .unwrap();
    let fill = MountOptions {
        options: vec!["rw".into()],
        ..Default::default()
    };
    let tree = driver.get("image", &fill).unwrap();
    fs::write(tree.join("from-the-image"), b"x").unwrap();
    driver.put("image").unwrap();
    driver.create("container", Some("image"), &rw()).unwrap();
    let tree = driver.get("container", &MountOptions::default()).unwrap();

    // What a container may make: a subvolume, one inside it below a plain
    // directory, one more level, files in each, and a read-only snapshot.
    make_subvolume(&tree, "a");
    fs::write(tree.join("a/file"), b"a").unwrap();
    fs::create_dir_all(tree.join("a/deep/er")).unwrap();
    make_subvolume(&tree.join("a/deep/er"), "b");
    fs::write(tree.join("a/deep/er/b/file"), b"b").unwrap();
    make_subvolume(&tree.join("a/deep/er/b"), "c");
    fs::write(tree.join("a/deep/er/b/c/file"), b"c").unwrap();
    {
        let source = open_dir(&tree.join("a/deep/er/b/c"));
        let holder = open_dir(&tree.join("a"));
        btrfs_uapi::subvolume::snapshot_create(
            holder.as_fd(),
            source.as_fd(),
            c"read-only-snapshot",
            true,
            &[],
        )
        .unwrap();
    }
    assert_eq!(
        subvolumes(fs.path()).len(),
        6,
        "{:?}",
        subvolumes(fs.path())
    );
    driver.put("container").unwrap();

    driver.remove("container").unwrap();
    assert!(!driver.exists("container").unwrap());
    // Only the image layer's subvolume is left, and nothing of the
    // container's in the home.
    assert_eq!(
        subvolumes(fs.path()).len(),
        1,
        "{:?}",
        subvolumes(fs.path())
    );
    let staging: Vec<_> = fs::read_dir(home.join("layers/.staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "{staging:?}");

    // A sealed image layer goes too.
    driver.remove("image").unwrap();
    assert!(
        subvolumes(fs.path()).is_empty(),
        "{:?}",
        subvolumes(fs.path())
    );
    driver.cleanup().unwrap();
}

#[test]
fn a_home_elsewhere_than_btrfs_is_not_supported_and_left_unmade() {
    if !skip::is_root() {
        skip::cannot_run("btrfs on ext4", "needs root for a loop device");
        return;
    }
    let ext4 = LoopFilesystem::new(LoopFsKind::Ext4, 64 << 20).expect("a loop ext4");
    let home = ext4.path().join("graph/btrfs");
    let error = start(&home).err().expect("the btrfs driver refuses ext4");
    assert_eq!(error.kind(), ErrorKind::NotSupported, "{error}");
    let message = error.to_string();
    assert!(message.contains("is on ext4, not btrfs"), "{message}");
    assert!(!home.exists(), "the refused home was made");
}

#[test]
fn metadata_and_status_say_what_btrfs_keeps() {
    let Some(fs) = loop_btrfs("btrfs metadata") else {
        return;
    };
    let driver = start(&fs.path().join("btrfs")).unwrap();
    assert!(
        driver.status().get("quotas").unwrap().starts_with("off"),
        "{:?}",
        driver.status()
    );
    let mut sized = rw();
    sized.storage_opts.push("size", "64M");
    driver.create("sized", None, &sized).unwrap();
    let facts = driver.metadata("sized").unwrap();
    assert_eq!(facts.get("read-only"), Some("false"), "{facts:?}");
    assert_eq!(facts.get("size limit"), Some("67108864"), "{facts:?}");
    assert!(
        facts
            .get("subvolume id")
            .is_some_and(|id| id.parse::<u64>().unwrap() > 255)
    );
    assert!(driver.status().get("quotas").unwrap().starts_with("on"));
    driver
        .create("image", Some("sized"), &CreateOptions::default())
        .unwrap();
    let facts = driver.metadata("image").unwrap();
    assert_eq!(facts.get("read-only"), Some("true"), "{facts:?}");
    assert_eq!(facts.get("image layer"), Some("true"), "{facts:?}");
    // An image layer is never made writable by a plain mount option.
    let error = driver
        .get(
            "sized",
            &MountOptions {
                options: vec!["nodev".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotSupported, "{error}");
    driver.remove("image").unwrap();
    driver.remove("sized").unwrap();
}
