//! Images made by umoci (its own tar writer and its own diffing, whiteouts
//! included) imported into the store, a container's tree compared with
//! `umoci unpack` of the same image, and the image exported back and read
//! by umoci and skopeo. On vfs and on overlay.

use strata_testkit::fixtures;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_core::oci::{ImageLocation, NoProgress, export_image, import_image};
use strata_core::store::Store;
use strata_testkit::mounts::{LoopFilesystem, LoopFsKind};
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
fn make_umoci_images(scratch: &Path, layout: &Path) {
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
    round_trip_on(driver, None)
}

/// The round trip with the graph root on a fresh loop filesystem of `kind`
/// (made and torn down here), or in /var/tmp.
fn round_trip_on(driver: &str, kind: Option<LoopFsKind>) {
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
    let backing = match kind {
        Some(kind) if !skip::is_root() => {
            skip::cannot_run(
                &format!("the umoci round trip on {driver}"),
                &format!("needs root to make a loop {kind:?} filesystem"),
            );
            return;
        }
        Some(kind) => Some(LoopFilesystem::new(kind, 2 << 30).expect("a loop filesystem")),
        None => None,
    };
    let scratch = tempfile::Builder::new()
        .prefix("strata-umoci-")
        .tempdir_in(
            backing
                .as_ref()
                .map_or(Path::new("/var/tmp"), |fs| fs.path()),
        )
        .unwrap();
    let scratch = scratch.path();
    let layout = scratch.join("layout");
    make_umoci_images(scratch, &layout);
    let store = open_store(scratch, driver);
    let _emptied = Emptied(&store);
    let location = |tag: &str| ImageLocation {
        dir: layout.clone(),
        tag: Some(tag.to_string()),
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
    round_trip_on("btrfs", Some(LoopFsKind::Btrfs));
}
