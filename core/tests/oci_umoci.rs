//! Images made by umoci (its own tar writer and its own diffing, whiteouts
//! included) imported into the store, a container's tree compared with
//! `umoci unpack` of the same image, and the image exported back and read
//! by umoci and skopeo. On vfs and on overlay.

use strata_testkit::fixtures;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_core::oci::LocationKind;
use strata_core::oci::{ImageLocation, NoProgress, export_image, import_image};
use strata_core::store::Store;
use strata_testkit::mounts::{LoopFilesystem, LoopFsKind, ZfsFusePool};
use strata_testkit::plugins::build_plugin;
use strata_testkit::skip;
use strata_testkit::tree::{Compare, build_every_kind, compare_trees_with};

fn run(command: &mut Command) -> String {
    String::from_utf8(strata_testkit::run_ok(command)).unwrap()
}

fn umoci(args: &[&str]) -> String {
    run(Command::new("umoci").args(args))
}

/// Makes, in `layout`, image `base` from a tree holding every kind of file,
/// and image `child` on it that deletes, modifies and adds files and
/// directories (a directory deleted and made again among them).
fn make_umoci_images(scratch: &Path, layout: &Path, xattrs: bool) {
    let spec = |tag: &str| format!("{}:{tag}", layout.display());
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &spec("base")]);
    let bundle = scratch.join("bundle-base");
    umoci(&["unpack", "--image", &spec("base"), bundle.to_str().unwrap()]);
    let rootfs = bundle.join("rootfs");
    build_every_kind(&rootfs);
    // Image layers cannot hold sockets (umoci refuses them, as tar does).
    fs::remove_file(rootfs.join("dev/log")).unwrap();
    // Nor does applying a layer keep trusted.* and security labels (see
    // hostile_content.rs), which umoci unpack would set: the image carries
    // none, so the two trees are comparable.
    fixtures::remove_xattrs_layers_drop(&rootfs);
    if !xattrs {
        remove_every_xattr(&rootfs);
    }
    fs::create_dir_all(rootfs.join("opt/app/lib")).unwrap();
    fs::write(rootfs.join("opt/app/lib/old.so"), b"old").unwrap();
    fs::write(rootfs.join("opt/app/config"), b"v1").unwrap();
    fs::create_dir_all(rootfs.join("var/cache/apt")).unwrap();
    fs::write(
        rootfs.join("var/cache/apt/pkgcache.bin"),
        vec![7u8; 300_000],
    )
    .unwrap();
    umoci(&["repack", "--image", &spec("base"), bundle.to_str().unwrap()]);

    let bundle = scratch.join("bundle-child");
    umoci(&["unpack", "--image", &spec("base"), bundle.to_str().unwrap()]);
    let rootfs = bundle.join("rootfs");
    fs::remove_file(rootfs.join("etc/shadow")).unwrap();
    fs::remove_dir_all(rootfs.join("var/cache")).unwrap();
    fs::write(rootfs.join("etc/passwd"), b"root:x:0:0::/root:/bin/bash\n").unwrap();
    fs::set_permissions(
        rootfs.join("usr/bin/wall"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fs::remove_dir_all(rootfs.join("opt/app")).unwrap();
    fs::create_dir_all(rootfs.join("opt/app")).unwrap();
    fs::write(rootfs.join("opt/app/config"), b"v2").unwrap();
    fs::create_dir_all(rootfs.join("srv/new/deep")).unwrap();
    fs::write(rootfs.join("srv/new/deep/file"), b"added").unwrap();
    umoci(&[
        "repack",
        "--image",
        &spec("child"),
        bundle.to_str().unwrap(),
    ]);
}

/// Takes every xattr off everything under `root`.
fn remove_every_xattr(root: &Path) {
    let mut names = vec![0u8; 4096];
    let mut paths = vec![root.to_path_buf()];
    while let Some(path) = paths.pop() {
        let length = rustix::fs::llistxattr(&path, &mut names).unwrap();
        for name in names[..length].split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let name = std::ffi::CString::new(name).unwrap();
            rustix::fs::lremovexattr(&path, name.as_c_str()).unwrap();
        }
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                paths.push(entry.unwrap().path());
            }
        }
    }
}

fn open_store(scratch: &Path, driver: &str) -> Store {
    let graph = scratch.join("graph");
    let driver_lib = format!("strata-driver-{driver}");
    let args = strata_plugin_abi::InitArgs {
        home: graph.join(driver),
        run_root: scratch.join("run").join(driver),
        ..Default::default()
    };
    let started = strata_plugin_abi::load_driver(&build_plugin(&driver_lib), &args).unwrap();
    Store::with_driver(&graph, &scratch.join("run"), Box::new(started)).unwrap()
}

fn unpacked(scratch: &Path, spec: &str, name: &str) -> PathBuf {
    let bundle = scratch.join(name);
    umoci(&["unpack", "--image", spec, bundle.to_str().unwrap()]);
    bundle.join("rootfs")
}

/// Differences between two trees, root directory included (access times
/// aside: reading files moves them).
fn differences(reference: &Path, tree: &Path) -> Vec<String> {
    compare_trees_with(reference, tree, Compare { atime: false })
}

/// Takes every container and image out of the store when dropped, so that
/// a failing test leaves no mount behind.
struct Emptied<'a>(&'a Store);

impl Drop for Emptied<'_> {
    fn drop(&mut self) {
        for container in self.0.containers.list().unwrap_or_default() {
            let _ = self.0.delete_container(&container.id);
        }
        for image in self.0.images.list().unwrap_or_default() {
            let _ = self.0.delete_image(&image.id);
        }
    }
}

fn round_trip(driver: &str) {
    round_trip_on(driver, Backing::VarTmp)
}

/// Where a round trip's graph root goes.
enum Backing {
    /// A directory in /var/tmp.
    VarTmp,
    /// A fresh loop filesystem of this kind, made and torn down here.
    Loop(LoopFsKind),
    /// A fresh zfs-fuse pool, made and destroyed here.
    ZfsFuse,
}

/// What holds a round trip's graph root until the end of the test.
enum Backed {
    Loop(LoopFilesystem),
    Zfs(ZfsFusePool),
}

impl Backed {
    fn path(&self) -> &Path {
        match self {
            Backed::Loop(fs) => fs.path(),
            Backed::Zfs(pool) => pool.path(),
        }
    }
}

/// The round trip with the graph root on a fresh loop filesystem of `kind`
/// (made and torn down here), or in /var/tmp.
fn round_trip_on(driver: &str, backing: Backing) {
    let missing: Vec<&str> = ["umoci", "skopeo"]
        .into_iter()
        .filter(|tool| !skip::have_tool(tool))
        .collect();
    if !missing.is_empty() {
        skip::cannot_run(
            &format!("the umoci round trip on {driver}"),
            &format!(
                "{} not installed (scripts/install-deps.sh installs them)",
                missing.join(" and ")
            ),
        );
        return;
    }
    if !matches!(backing, Backing::VarTmp) && !skip::is_root() {
        skip::cannot_run(
            &format!("the umoci round trip on {driver}"),
            "needs root to make the filesystem under its graph root",
        );
        return;
    }
    let backing = match backing {
        Backing::VarTmp => None,
        Backing::Loop(kind) => Some(Backed::Loop(
            LoopFilesystem::new(kind, 2 << 30).expect("a loop filesystem"),
        )),
        Backing::ZfsFuse => Some(Backed::Zfs(
            ZfsFusePool::new(2 << 30).expect("a zfs-fuse pool"),
        )),
    };
    // The images and umoci's trees in /var/tmp; the store where the
    // backing says.
    let scratch = tempfile::Builder::new()
        .prefix("strata-umoci-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let scratch = scratch.path();
    let store_dir = tempfile::Builder::new()
        .prefix("strata-umoci-store-")
        .tempdir_in(backing.as_ref().map_or(Path::new("/var/tmp"), Backed::path))
        .unwrap();
    let layout = scratch.join("layout");
    // zfs-fuse keeps no xattrs on most files: the images carry none there,
    // so that what the store holds can be the tree umoci unpacks.
    let xattrs = !matches!(backing, Some(Backed::Zfs(_)));
    make_umoci_images(scratch, &layout, xattrs);
    let store = open_store(store_dir.path(), driver);
    let _emptied = Emptied(&store);
    let location = |tag: &str| ImageLocation {
        dir: layout.clone(),
        tag: Some(tag.to_string()),
        kind: LocationKind::Layout,
    };
    let base = import_image(&store, &location("base"), &[], &NoProgress).unwrap();
    let child = import_image(&store, &location("child"), &[], &NoProgress).unwrap();
    assert_eq!(base.created_layers.len(), 1);
    assert_eq!(child.reused_layers, base.created_layers);
    assert_eq!(child.created_layers.len(), 1);

    // The container's tree is the tree umoci unpacks.
    let spec_child = format!("{}:child", layout.display());
    let reference = unpacked(scratch, &spec_child, "reference");
    let container = store
        .create_container("child", &["c".into()], &Default::default())
        .unwrap();
    let mounted = store.mount_container("c", &Default::default()).unwrap();
    let found = differences(&reference, &mounted);
    assert!(
        found.is_empty(),
        "container vs umoci unpack:\n{}",
        found.join("\n")
    );
    assert!(!mounted.join("etc/shadow").exists());
    assert!(!mounted.join("opt/app/lib").exists());
    assert_eq!(fs::read(mounted.join("opt/app/config")).unwrap(), b"v2");
    assert_eq!(
        store.unmount_container(&container.id).unwrap(),
        container.id.layer()
    );
    store.delete_container("c").unwrap();

    // Exported back: umoci unpacks the same tree, skopeo reads the layout,
    // and the diff ids (so the config and the image id) are the originals.
    let out = scratch.join("exported");
    let report = export_image(
        &store,
        "child",
        &ImageLocation {
            dir: out.clone(),
            tag: Some("v1".into()),
            kind: LocationKind::Layout,
        },
    )
    .unwrap();
    assert!(!report.config_rewritten);
    assert!(report.layers.iter().all(|l| l.original));
    assert_eq!(report.config_digest.encoded(), child.image.id.as_str());
    let spec_out = format!("{}:v1", out.display());
    let again = unpacked(scratch, &spec_out, "again");
    let found = differences(&reference, &again);
    assert!(
        found.is_empty(),
        "umoci unpack of the export:\n{}",
        found.join("\n")
    );

    let inspect: serde_json::Value = serde_json::from_str(&run(
        Command::new("skopeo").args(["inspect", &format!("oci:{spec_out}")])
    ))
    .unwrap();
    let written: Vec<&str> = report
        .layers
        .iter()
        .map(|l| l.blob.digest().as_ref())
        .collect();
    let listed: Vec<&str> = inspect["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listed, written);
    let config_of = |spec: &str| -> serde_json::Value {
        serde_json::from_str(&run(Command::new("skopeo").args([
            "inspect",
            "--config",
            &format!("oci:{spec}"),
        ])))
        .unwrap()
    };
    assert_eq!(
        config_of(&spec_out)["rootfs"]["diff_ids"],
        config_of(&spec_child)["rootfs"]["diff_ids"]
    );
    assert_eq!(
        report
            .layers
            .iter()
            .map(|l| l.diff_id.to_string())
            .collect::<Vec<_>>(),
        config_of(&spec_child)["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    );
    // skopeo copies the exported layout, reading and checking every blob.
    let copy = scratch.join("copied");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{spec_out}"),
        &format!("oci:{}:v1", copy.display()),
    ]));

    store.delete_image("child").unwrap();
    store.delete_image("base").unwrap();
    assert!(store.driver().list().unwrap().is_empty());
    assert!(store.layers.list().unwrap().is_empty());
}

#[test]
fn umoci_images_on_vfs() {
    round_trip("vfs");
}

#[test]
fn umoci_images_on_overlay() {
    round_trip("overlay");
}

#[test]
fn umoci_images_on_btrfs() {
    round_trip_on("btrfs", Backing::Loop(LoopFsKind::Btrfs));
}

#[test]
fn umoci_images_on_zfs() {
    round_trip_on("zfs", Backing::ZfsFuse);
}
