//! The vfs driver through its real library, on a real directory.

use std::fs;
use std::path::Path;

use strata_conformance::harness::{read_write as rw, start_driver};
use strata_conformance::tree::{build_every_kind, compare_trees};
use strata_plugin_abi::{
    CreateOptions, ErrorKind, GraphDriver, KeyValues, LoadedDriver, MountOptions,
};

fn start(home: &Path, options: &[(&str, &str)]) -> strata_plugin_abi::Result<LoadedDriver> {
    start_driver("strata-driver-vfs", home, options)
}

/// Names in the driver's layer directory, staging directories included
/// (the home lock aside).
fn layer_dir_entries(home: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(home.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock" && n != ".staging")
        .collect();
    if let Ok(staging) = fs::read_dir(home.join("layers/.staging")) {
        names.extend(
            staging.map(|e| format!(".staging/{}", e.unwrap().file_name().to_string_lossy())),
        );
    }
    names.sort();
    names
}

#[test]
fn a_child_is_an_identical_copy_of_a_parent_holding_every_file_kind() {
    // Full copy: on this machine's filesystem, and forced where it could reflink.
    for reflink in ["auto", "never"] {
        let home = tempfile::tempdir().unwrap();
        let vfs = start(home.path(), &[("reflink", reflink)]).unwrap();
        vfs.create("base", None, &rw()).unwrap();
        let base = vfs.get("base", &MountOptions::default()).unwrap();
        build_every_kind(&base);
        fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();

        vfs.create("child", Some("base"), &rw()).unwrap();
        let child = vfs.get("child", &MountOptions::default()).unwrap();
        let differences = compare_trees(&base, &child);
        assert!(
            differences.is_empty(),
            "reflink={reflink}: the copy differs:\n{}",
            differences.join("\n")
        );
        // And a grandchild of the copy, so a copy is itself a faithful parent.
        vfs.create("grandchild", Some("child"), &rw()).unwrap();
        let grandchild = vfs.get("grandchild", &MountOptions::default()).unwrap();
        assert!(compare_trees(&base, &grandchild).is_empty());
        // Writing into the child leaves the parent alone.
        fs::write(child.join("etc/passwd"), b"changed").unwrap();
        assert_ne!(fs::read(base.join("etc/passwd")).unwrap(), b"changed");
    }
}

#[test]
fn lifecycle_and_bad_input() {
    let home = tempfile::tempdir().unwrap();
    let vfs = start(home.path(), &[]).unwrap();
    assert!(vfs.list().unwrap().is_empty());

    vfs.create("a", None, &CreateOptions::default()).unwrap();
    let a = vfs.get("a", &MountOptions::default()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&a).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert!(vfs.exists("a").unwrap());
    assert_eq!(
        vfs.metadata("a").unwrap().get("path"),
        Some(a.to_str().unwrap())
    );

    let dup = vfs
        .create("a", None, &CreateOptions::default())
        .unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::AlreadyExists, "{dup}");

    let orphan = vfs
        .create("b", Some("ghost"), &CreateOptions::default())
        .unwrap_err();
    assert_eq!(orphan.kind(), ErrorKind::NotFound, "{orphan}");
    assert!(orphan.message().contains("ghost"), "{orphan}");
    assert!(orphan.message().contains("create layer b"), "{orphan}");

    let bad_id = vfs
        .create("../escape", None, &CreateOptions::default())
        .unwrap_err();
    assert_eq!(bad_id.kind(), ErrorKind::InvalidInput, "{bad_id}");
    assert!(!home.path().join("escape").exists());

    let mut sized = CreateOptions::default();
    sized.storage_opts.push("size", "1G");
    let err = vfs.create("c", None, &sized).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");
    let mut odd = CreateOptions::default();
    odd.storage_opts.push("colour", "red");
    let err = vfs.create("c", None, &odd).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.message().contains("'colour'"), "{err}");

    let ro = MountOptions {
        options: vec!["ro".into()],
        ..Default::default()
    };
    assert_eq!(
        vfs.get("a", &ro).unwrap_err().kind(),
        ErrorKind::NotSupported
    );
    assert_eq!(
        vfs.get("zzz", &MountOptions::default()).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(vfs.remove("zzz").unwrap_err().kind(), ErrorKind::NotFound);

    // Failed creates left nothing behind.
    assert_eq!(layer_dir_entries(home.path()), vec!["a"]);

    vfs.remove("a").unwrap();
    assert!(!vfs.exists("a").unwrap());
    assert!(layer_dir_entries(home.path()).is_empty());
    // The id can be used again.
    vfs.create("a", None, &CreateOptions::default()).unwrap();
    vfs.cleanup().unwrap();
    vfs.cleanup().unwrap();
    assert_eq!(vfs.list().unwrap(), vec!["a"]);
}

#[test]
fn a_failed_copy_leaves_no_layer_behind() {
    // A home on a 4 MiB tmpfs: a 3 MiB parent fits, its copy runs out of space.
    let scratch =
        strata_testkit::mounts::ScratchTmpfs::new(4 << 20).expect("mount tmpfs (needs root)");
    let vfs = start(scratch.path(), &[]).unwrap();
    vfs.create("parent", None, &rw()).unwrap();
    let parent = vfs.get("parent", &MountOptions::default()).unwrap();
    fs::create_dir(parent.join("data")).unwrap();
    for i in 0..3 {
        fs::write(parent.join(format!("data/{i}")), vec![i as u8; 1 << 20]).unwrap();
    }
    let err = vfs.create("child", Some("parent"), &rw()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert_eq!(err.errno(), Some(28), "ENOSPC expected: {err}");
    assert!(err.message().starts_with("create layer child: "), "{err}");
    assert!(!vfs.exists("child").unwrap());
    assert_eq!(layer_dir_entries(scratch.path()), vec!["parent"]);
    // The space is back: the parent can still be written.
    fs::write(parent.join("after"), b"room again").unwrap();
}

#[test]
fn leftovers_of_a_crash_are_removed_at_start_and_live_work_is_not() {
    let home = tempfile::tempdir().unwrap();
    let vfs = start(home.path(), &[]).unwrap();
    vfs.create("kept", None, &CreateOptions::default()).unwrap();
    drop(vfs);
    // Staging directories nobody holds a lock on: what a killed process left.
    let layers = home.path().join("layers/.staging");
    fs::create_dir_all(layers.join(".new-half-00112233/root/usr")).unwrap();
    fs::create_dir_all(layers.join(".gone-old-44556677/root/etc")).unwrap();
    // One a live process holds (flock(1), as the kit's maker holds its own).
    let live = layers.join(".new-busy-8899aabb");
    fs::create_dir_all(live.join("root")).unwrap();
    let mut holder = std::process::Command::new("flock")
        .arg("-o")
        .arg(&live)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::process::Command::new("flock")
        .args(["-n", "-o"])
        .arg(&live)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "flock(1) never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let vfs = start(home.path(), &[]);
    let entries = layer_dir_entries(home.path());
    holder.kill().unwrap();
    holder.wait().unwrap();
    let vfs = vfs.unwrap();
    assert_eq!(entries, vec![".staging/.new-busy-8899aabb", "kept"]);
    assert_eq!(vfs.list().unwrap(), vec!["kept"]);
    // Its holder gone, the next cleanup collects it.
    vfs.cleanup().unwrap();
    assert_eq!(layer_dir_entries(home.path()), vec!["kept"]);
}

#[test]
fn a_home_in_the_layout_before_the_driver_kit_is_refused_by_name() {
    let home = tempfile::tempdir().unwrap();
    fs::create_dir_all(home.path().join("dir/abc/etc")).unwrap();
    let err = start(home.path(), &[]).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("layers/<id>/root"), "{err}");
    assert!(
        home.path().join("dir/abc/etc").is_dir(),
        "nothing of it was touched"
    );
}

#[test]
fn options_are_checked_at_start() {
    let home = tempfile::tempdir().unwrap();
    let err = start(home.path(), &[("colour", "red")]).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("'colour'"), "{err}");
    let err = start(home.path(), &[("reflink", "sometimes")])
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = start(home.path(), &[("ignore_chown_errors", "perhaps")])
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let status: KeyValues = start(home.path(), &[]).unwrap().status();
    assert!(status.get("data copy").is_some());
}

#[test]
fn on_a_filesystem_with_reflinks_children_share_extents_and_stay_identical() {
    use strata_testkit::mounts::{LoopFilesystem, LoopFsKind};
    let btrfs = LoopFilesystem::new(LoopFsKind::Btrfs, 1 << 30)
        .expect("loop btrfs (needs root, btrfs-progs)");
    let vfs = start(btrfs.path(), &[("reflink", "always")]).unwrap();
    assert_eq!(
        vfs.status().get("data copy"),
        Some("reflink (extents shared with the parent)")
    );
    vfs.create("base", None, &rw()).unwrap();
    let base = vfs.get("base", &MountOptions::default()).unwrap();
    build_every_kind(&base);
    // 64 MiB of data: a full copy would need it twice, a reflinked one does not.
    fs::write(base.join("big"), vec![0x5a; 64 << 20]).unwrap();
    rustix::fs::sync();
    let used_before = used_bytes(btrfs.path());
    vfs.create("child", Some("base"), &rw()).unwrap();
    rustix::fs::sync();
    let grown = used_bytes(btrfs.path()).saturating_sub(used_before);
    assert!(
        grown < 16 << 20,
        "the child took {grown} bytes: not reflinked"
    );
    let child = vfs.get("child", &MountOptions::default()).unwrap();
    let differences = compare_trees(&base, &child);
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // Writing to the child's copy does not show in the parent.
    fs::write(child.join("big"), b"rewritten").unwrap();
    assert_eq!(fs::metadata(base.join("big")).unwrap().len(), 64 << 20);
}

fn used_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    (st.f_blocks - st.f_bfree) * st.f_frsize
}
