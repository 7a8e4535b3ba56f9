//! The `strata` command end to end, with the real vfs library.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_testkit::plugins::build_plugin;

struct Setup {
    scratch: tempfile::TempDir,
    drivers: PathBuf,
    /// A copy of the strata binary in a directory of its own, so that only
    /// the drivers put in `drivers` are found (the build directory beside the
    /// real binary holds every driver the workspace builds).
    binary: PathBuf,
    /// Where the graph root goes (the scratch directory unless a test puts
    /// it on a filesystem of its choosing).
    roots: PathBuf,
}

impl Setup {
    /// A graph root that does not exist yet and a driver directory holding vfs
    /// and the boundary probe (as driver "probe").
    fn new() -> Setup {
        let scratch = tempfile::tempdir().unwrap();
        let drivers = scratch.path().join("drivers");
        fs::create_dir(&drivers).unwrap();
        fs::copy(
            build_plugin("strata-driver-vfs"),
            drivers.join("libstrata_driver_vfs.so"),
        )
        .unwrap();
        fs::copy(
            build_plugin("strata-test-plugin"),
            drivers.join("libstrata_driver_probe.so"),
        )
        .unwrap();
        let bin = scratch.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let binary = bin.join("strata");
        fs::copy(env!("CARGO_BIN_EXE_strata"), &binary).unwrap();
        Setup {
            roots: scratch.path().to_path_buf(),
            scratch,
            drivers,
            binary,
        }
    }

    fn graphroot(&self) -> PathBuf {
        self.roots.join("graph")
    }

    fn strata(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        retry_busy(|| cmd.output())
    }

    /// The command `strata` runs as, not started.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        for (key, _) in std::env::vars() {
            if key.starts_with("STRATA_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("STRATA_DRIVER_PATH", &self.drivers)
            .arg("--root")
            .arg(self.graphroot())
            .arg("--run-root")
            .arg(self.scratch.path().join("run"))
            .args(args);
        cmd
    }
}

/// Runs `start` again while it fails with ETXTBSY: each test copies the
/// binary, and another test's fork can hold the copy's write descriptor for
/// the instant before its exec.
fn retry_busy<T>(mut start: impl FnMut() -> std::io::Result<T>) -> T {
    for _ in 0..100 {
        match start() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
    panic!("the copied strata binary stayed busy (ETXTBSY) for a second")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    stdout(&out)
}

fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded unexpectedly: {}",
        stdout(&out)
    );
    stderr(&out)
}

#[test]
fn drivers_lists_what_it_finds_and_what_it_refuses() {
    let setup = Setup::new();
    fs::write(
        setup.drivers.join("libstrata_driver_junk.so"),
        b"not a library",
    )
    .unwrap();
    let out = ok(setup.strata(&["--json", "drivers"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let find = |name: &str| {
        report["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {out}"))
            .clone()
    };
    let vfs = find("vfs");
    assert_eq!(vfs["state"], "supported", "{out}");
    assert_eq!(vfs["abi_version"], "1.1.0");
    assert_eq!(vfs["origin"], "STRATA_DRIVER_PATH");
    let junk = find("junk");
    assert_eq!(junk["state"], "unusable");
    assert!(
        junk["detail"]
            .as_str()
            .unwrap()
            .contains("libstrata_driver_junk.so"),
        "{out}"
    );

    let text = ok(setup.strata(&["drivers"]));
    assert!(text.contains("strata-plugin-abi 1.1.0"), "{text}");
    // Surveying creates nothing in the graph root's place.
    assert!(!setup.graphroot().exists());
}

#[test]
fn a_stack_of_layers_with_the_chosen_driver() {
    let setup = Setup::new();
    ok(setup.strata(&["layer", "create", "base"]));
    let base = PathBuf::from(ok(setup.strata(&["layer", "mount", "base"])).trim());
    fs::write(base.join("hello"), b"from base").unwrap();
    ok(setup.strata(&["layer", "create", "--parent", "base", "top"]));
    let top = PathBuf::from(ok(setup.strata(&["layer", "mount", "top"])).trim());
    assert_eq!(fs::read(top.join("hello")).unwrap(), b"from base");
    fs::write(top.join("hello"), b"from top").unwrap();
    assert_eq!(fs::read(base.join("hello")).unwrap(), b"from base");
    ok(setup.strata(&["layer", "unmount", "top"]));

    assert_eq!(ok(setup.strata(&["layer", "list", "-q"])), "base\ntop\n");
    assert_eq!(ok(setup.strata(&["layer", "exists", "top"])), "true\n");
    let missing = setup.strata(&["layer", "exists", "nope"]);
    assert_eq!(missing.status.code(), Some(1), "1 says no");
    assert_eq!(stdout(&missing), "false\n");
    // An error is 2: a script tells "no" from "could not tell".
    let config = setup.scratch.path().join("broken.toml");
    fs::write(&config, "[storage\n").unwrap();
    let broken = setup.strata(&[
        "--config",
        config.to_str().unwrap(),
        "layer",
        "exists",
        "top",
    ]);
    assert_eq!(broken.status.code(), Some(2), "{}", stderr(&broken));
    assert!(stdout(&broken).is_empty());
    // A reader that goes away ends a listing quietly (no panic, no
    // message), as it ends any line-printing tool.
    let mut listing = setup.command(&["layer", "list"]);
    listing
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = retry_busy(|| listing.spawn());
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        (out.status.code(), stderr(&out).as_str()),
        (Some(0), ""),
        "a closed pipe"
    );

    let status: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["--json", "status"]))).unwrap();
    assert_eq!(status["driver"], "vfs");
    assert_eq!(status["layers"], 2);
    assert_eq!(status["reason"], "the graph root was made by it");

    ok(setup.strata(&["layer", "delete", "top"]));
    assert_eq!(ok(setup.strata(&["layer", "list", "-q"])), "base\n");
}

#[test]
fn automatic_choice_says_why_each_driver_was_passed_over() {
    let setup = Setup::new();
    let out = setup.strata(&["--log-level", "info", "--json", "status"]);
    let status: serde_json::Value = serde_json::from_str(&ok(out.clone())).unwrap();
    assert_eq!(status["driver"], "vfs");
    let passed: Vec<_> = status["passed_over"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["driver"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(passed, vec!["btrfs", "zfs", "overlay", "devicemapper"]);
    let log = stderr(&out);
    assert!(
        log.contains("driver passed over") && log.contains("storage driver chosen"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal: {log:?}"
    );
}

#[test]
fn btrfs_is_chosen_on_btrfs_and_passed_over_elsewhere_saying_why() {
    let mut setup = Setup::new();
    fs::copy(
        build_plugin("strata-driver-btrfs"),
        setup.drivers.join("libstrata_driver_btrfs.so"),
    )
    .unwrap();
    // Off btrfs (on a tmpfs, whatever the temporary directory is on).
    let tmpfs = strata_testkit::mounts::ScratchTmpfs::new(16 << 20)
        .expect("mount a tmpfs for the graph root (needs root)");
    setup.roots = tmpfs.path().to_path_buf();
    let status: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["--json", "status"]))).unwrap();
    assert_eq!(status["driver"], "vfs", "{status}");
    let btrfs = status["passed_over"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["driver"] == "btrfs")
        .unwrap_or_else(|| panic!("btrfs is not among those passed over: {status}"));
    let reason = btrfs["reason"].as_str().unwrap();
    assert!(reason.contains("is on tmpfs, not btrfs"), "{reason}");
    assert!(
        !setup.roots.join("graph/btrfs").exists(),
        "the refusing driver made its home"
    );
    // On btrfs.
    let btrfs_fs = strata_testkit::mounts::LoopFilesystem::new(
        strata_testkit::mounts::LoopFsKind::Btrfs,
        256 << 20,
    )
    .expect("a loop btrfs (needs root)");
    setup.roots = btrfs_fs.path().to_path_buf();
    let status: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["--json", "status"]))).unwrap();
    assert_eq!(status["driver"], "btrfs", "{status}");
}

#[test]
fn devicemapper_is_passed_over_on_a_kernel_without_it_saying_why() {
    if std::path::Path::new("/dev/mapper/control").exists() {
        // Its selection where device-mapper exists is proven in the VM
        // (drivers/devicemapper/tests/in_vm.rs).
        strata_testkit::skip::cannot_run(
            "devicemapper_is_passed_over_on_a_kernel_without_it_saying_why",
            "this kernel has device-mapper",
        );
        return;
    }
    let setup = Setup::new();
    fs::copy(
        build_plugin("strata-driver-devicemapper"),
        setup.drivers.join("libstrata_driver_devicemapper.so"),
    )
    .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["--json", "status"]))).unwrap();
    assert_eq!(status["driver"], "vfs", "{status}");
    let devicemapper = status["passed_over"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["driver"] == "devicemapper")
        .unwrap_or_else(|| panic!("devicemapper is not among those passed over: {status}"));
    let reason = devicemapper["reason"].as_str().unwrap();
    assert!(
        reason.contains("device-mapper is not in this kernel (no /dev/mapper/control)"),
        "{reason}"
    );
    assert!(
        !setup.roots.join("graph/devicemapper").exists(),
        "the refusing driver made its home"
    );
}

#[test]
fn a_driver_answering_not_supported_is_passed_over_and_nothing_is_left() {
    let setup = Setup::new();
    // vfs refuses to start when told to reflink on a filesystem that cannot.
    let config = setup.scratch.path().join("storage.toml");
    fs::write(&config, "[storage.options.vfs]\nreflink = \"always\"\n").unwrap();
    // On tmpfs, which never shares extents, whatever the temporary
    // directory's filesystem is.
    let tmpfs = strata_testkit::mounts::ScratchTmpfs::new(16 << 20)
        .expect("mount a tmpfs for the graph root (needs root)");
    let mut setup = setup;
    setup.roots = tmpfs.path().to_path_buf();
    assert!(!strata_reflink_possible(&setup.roots));
    let err = fails(setup.strata(&["--config", config.to_str().unwrap(), "status"]));
    assert!(err.contains("no storage driver works here"), "{err}");
    assert!(err.contains("vfs: init vfs: reflink=always"), "{err}");
    // The drivers that are not installed were looked for: where is said.
    assert!(
        err.contains("btrfs: not installed")
            && err.contains(&format!(
                "searched for libstrata_driver_<name>.so in: {} (STRATA_DRIVER_PATH)",
                setup.drivers.display()
            )),
        "{err}"
    );
    assert!(
        !setup.graphroot().exists(),
        "a failed start left {:?}",
        setup.graphroot()
    );
}

fn strata_reflink_possible(dir: &Path) -> bool {
    let a = dir.join("reflink-a");
    fs::write(&a, b"x").unwrap();
    let ok = Command::new("cp")
        .args(["--reflink=always"])
        .arg(&a)
        .arg(dir.join("reflink-b"))
        .output()
        .unwrap()
        .status
        .success();
    let _ = fs::remove_file(dir.join("reflink-b"));
    let _ = fs::remove_file(a);
    ok
}

#[test]
fn bad_input_is_named_and_creates_nothing() {
    let setup = Setup::new();
    let err = fails(setup.strata(&["--driver", "nosuch", "layer", "list"]));
    assert!(err.contains("unknown driver 'nosuch'"), "{err}");
    assert!(err.contains("found: probe, vfs"), "{err}");
    assert!(!setup.graphroot().exists());

    fs::write(
        setup.drivers.join("libstrata_driver_junk.so"),
        b"not a library",
    )
    .unwrap();
    let err = fails(setup.strata(&["--driver", "junk", "layer", "list"]));
    assert!(err.contains("libstrata_driver_junk.so"), "{err}");
    assert!(!setup.graphroot().exists());

    let config = setup.scratch.path().join("storage.toml");
    fs::write(&config, "[storage.options.vfs]\nreflinks = \"never\"\n").unwrap();
    let err = fails(setup.strata(&[
        "--config",
        config.to_str().unwrap(),
        "--driver",
        "vfs",
        "layer",
        "list",
    ]));
    assert!(
        err.contains("unknown vfs driver option 'reflinks'")
            && err.contains(&format!(
                "configuration {}: [storage.options.vfs]",
                config.display()
            )),
        "the refused key, the file and the table it came from: {err}"
    );
    assert!(
        !setup.graphroot().exists(),
        "{:?} was created",
        setup.graphroot()
    );

    fs::write(&config, "[storage]\ndriverr = \"vfs\"\n").unwrap();
    let err = fails(setup.strata(&["--config", config.to_str().unwrap(), "layer", "list"]));
    assert!(err.contains("driverr"), "{err}");

    ok(setup.strata(&["layer", "create", "base"]));
    let err = fails(setup.strata(&["layer", "mount", "ghost"]));
    assert!(
        err.contains("no layer has the id, name or id prefix 'ghost'"),
        "{err}"
    );
    let err = fails(setup.strata(&["layer", "create", "--parent", "ghost", "child"]));
    assert!(err.contains("ghost"), "{err}");
    let err = fails(setup.strata(&["layer", "create", "../up"]));
    assert!(err.contains("invalid layer id"), "{err}");
    let err = fails(setup.strata(&["layer", "create", "--opt", "colour=red", "c"]));
    assert!(err.contains("'colour'"), "{err}");
    assert_eq!(ok(setup.strata(&["layer", "list", "-q"])), "base\n");
}

#[test]
fn a_graph_root_is_refused_to_another_driver() {
    let setup = Setup::new();
    ok(setup.strata(&["--driver", "vfs", "layer", "create", "base"]));
    let err = fails(setup.strata(&["--driver", "probe", "layer", "list"]));
    assert!(err.contains("belongs to the 'vfs' driver"), "{err}");
    assert!(err.contains("'probe'"), "{err}");
    assert!(!setup.graphroot().join("probe").exists());
    // Without a driver named, the graph root's own driver is used.
    assert_eq!(ok(setup.strata(&["layer", "list", "-q"])), "base\n");
}

#[test]
fn drivers_beside_the_binary_are_found_without_configuration() {
    // `cargo build` puts libstrata_driver_vfs.so in the same directory as the
    // strata binary; build_plugin makes sure it is there and current.
    let vfs = build_plugin("strata-driver-vfs");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_strata"));
    assert_eq!(
        vfs.parent(),
        binary.parent(),
        "vfs was not built beside strata"
    );
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&binary);
    for (key, _) in std::env::vars() {
        if key.starts_with("STRATA_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .arg("--root")
        .arg(scratch.path().join("graph"))
        .args(["--json", "drivers"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    let vfs_entry = report["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "vfs")
        .expect("vfs listed")
        .clone();
    assert_eq!(vfs_entry["origin"], "the strata binary's directory");
    assert_eq!(vfs_entry["state"], "supported");
}

#[test]
fn a_layer_from_a_tar_gives_back_the_exact_tar() {
    // vfs applies into the mounted tree; overlay into its native diff
    // directory, and reads its changes from there.
    for driver in ["vfs", "overlay"] {
        a_layer_from_a_tar_gives_back_the_exact_tar_with(driver);
    }
}

fn a_layer_from_a_tar_gives_back_the_exact_tar_with(driver: &str) {
    let setup = Setup::new();
    fs::copy(
        build_plugin("strata-driver-overlay"),
        setup.drivers.join("libstrata_driver_overlay.so"),
    )
    .unwrap();
    let strata = |args: &[&str]| {
        let mut all = vec!["--driver", driver];
        all.extend_from_slice(args);
        setup.strata(&all)
    };
    let src = setup.scratch.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/hostname"), b"strata\n").unwrap();
    fs::write(src.join("big"), vec![3u8; 300_000]).unwrap();
    let tar = strata_testkit::gnu_tar(&src, &[]);
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let tar_gz = setup.scratch.path().join("layer.tar.gz");
    fs::write(&tar_gz, &gz).unwrap();

    let out = ok(strata(&[
        "--json",
        "layer",
        "create",
        "--diff",
        tar_gz.to_str().unwrap(),
        "base",
    ]));
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let diff_id = strata_core::archive::Sha256Digest::of(&tar).to_string();
    assert_eq!(created["diff"]["uncompressed_digest"], diff_id.as_str());
    assert_eq!(created["diff"]["compression"], "gzip");
    assert_eq!(
        created["diff"]["compressed_digest"],
        strata_core::archive::Sha256Digest::of(&gz)
            .to_string()
            .as_str()
    );

    let back = setup.scratch.path().join("back.tar");
    ok(strata(&[
        "layer",
        "diff",
        "base",
        "-o",
        back.to_str().unwrap(),
    ]));
    assert!(
        fs::read(&back).unwrap() == tar,
        "the diff is not the original tar"
    );

    // A child changes something; its changes and a generated diff say so.
    ok(strata(&["layer", "create", "--parent", "base", "child"]));
    let child = PathBuf::from(ok(strata(&["layer", "mount", "child"])).trim());
    fs::remove_file(child.join("big")).unwrap();
    fs::write(child.join("etc/hostname"), b"changed\n").unwrap();
    let changes = ok(strata(&["layer", "changes", "child"]));
    assert!(changes.contains("D /big\n"), "{changes}");
    assert!(changes.contains("M /etc/hostname\n"), "{changes}");

    // The child's generated diff carries those changes.
    let child_tar = setup.scratch.path().join("child.tar");
    ok(strata(&[
        "layer",
        "diff",
        "child",
        "-o",
        child_tar.to_str().unwrap(),
    ]));
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&child_tar)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains(".wh.big"), "{driver}: {listing}");
    assert!(listing.contains("etc/hostname"), "{driver}: {listing}");

    // The parent cannot go while the child is there.
    let err = fails(strata(&["layer", "delete", "base"]));
    assert!(err.contains("child"), "{err}");
    // Leave no mount behind: unmount, then delete child and base.
    ok(strata(&["layer", "unmount", "child"]));
    ok(strata(&["layer", "delete", "child"]));
    ok(strata(&["layer", "delete", "base"]));
}

#[test]
fn a_refused_tar_leaves_no_layer_behind() {
    let setup = Setup::new();
    ok(setup.strata(&["layer", "create", "keep"]));
    let junk = setup.scratch.path().join("junk.tar");
    fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    let err = fails(setup.strata(&["layer", "create", "--diff", junk.to_str().unwrap(), "bad"]));
    assert!(
        err.contains("layer bad") && err.contains("bad layer stream"),
        "{err}"
    );
    assert_eq!(ok(setup.strata(&["layer", "list", "-q"])), "keep\n");
    let layers = setup.graphroot().join("vfs-layers");
    let leftovers: Vec<String> = fs::read_dir(&layers)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("bad"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert!(!setup.graphroot().join("vfs/layers/bad").exists());
}

#[test]
fn layers_are_found_by_name_and_prefix_and_mounts_are_counted_across_processes() {
    let setup = Setup::new();
    ok(setup.strata(&["layer", "create", "--name", "image", "0f3a9c"]));
    ok(setup.strata(&["layer", "create", "abc111"]));
    ok(setup.strata(&["layer", "create", "abc222"]));
    let err = fails(setup.strata(&["layer", "mount", "abc"]));
    assert!(
        err.contains("prefix of 2 layers") && err.contains("abc111"),
        "{err}"
    );
    let err = fails(setup.strata(&["layer", "mount", "zzz"]));
    assert!(err.contains("'zzz'"), "{err}");

    // Each command is its own process: the counts live in the run root.
    let first: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["--json", "layer", "mount", "image"]))).unwrap();
    let second: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["--json", "layer", "mount", "0f3"]))).unwrap();
    assert_eq!(first["id"], "0f3a9c");
    assert_eq!(first["path"], second["path"]);
    assert_eq!(
        (first["mounts"].as_u64(), second["mounts"].as_u64()),
        (Some(1), Some(2))
    );
    ok(setup.strata(&["layer", "unmount", "image"]));
    // The last release by its mount path.
    ok(setup.strata(&["layer", "unmount", first["path"].as_str().unwrap()]));
    let err = fails(setup.strata(&["layer", "unmount", "image"]));
    assert!(err.contains("not a mounted layer"), "{err}");

    // A name given to another layer moves there.
    ok(setup.strata(&[
        "layer", "create", "--name", "image", "--parent", "0f3", "child1",
    ]));
    let mounted: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["--json", "layer", "mount", "image"]))).unwrap();
    assert_eq!(mounted["id"], "child1");
    ok(setup.strata(&["layer", "unmount", "image"]));
}

#[test]
fn a_create_refused_by_the_driver_does_not_remove_the_layer_already_there() {
    let setup = Setup::new();
    // A layer the driver has but the records do not (made by the driver alone).
    let home = setup.graphroot().join("vfs");
    ok(setup.strata(&["layer", "create", "first"]));
    fs::create_dir_all(home.join("layers/outside-records/root")).unwrap();
    fs::write(
        home.join("layers/outside-records/root/precious"),
        b"keep me",
    )
    .unwrap();
    let err = fails(setup.strata(&["layer", "create", "outside-records"]));
    assert!(err.contains("exists"), "{err}");
    assert_eq!(
        fs::read(home.join("layers/outside-records/root/precious")).unwrap(),
        b"keep me",
        "the refused create removed the layer that was there"
    );
}

use strata_testkit::fixtures;

#[test]
fn a_read_only_layer_refuses_apply_naming_the_images_on_it() {
    let setup = Setup::new();
    let layout = setup.scratch.path().join("layout");
    let base = fixtures::RawTar::new()
        .file("etc/os-release", b"base\n")
        .finish();
    fixtures::layout::write_image(
        &layout,
        "v1",
        &[fixtures::layout::Layer::plain(&base)],
        "ro",
    );
    let location = format!("{}:v1", layout.display());
    ok(setup.strata(&["image", "import", &location, "--name", "shared"]));
    let layers: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["--json", "layer", "list"]))).unwrap();
    let id = layers[0]["id"].as_str().unwrap().to_string();
    let change = setup.scratch.path().join("change.tar");
    fs::write(
        &change,
        fixtures::RawTar::new()
            .file("etc/os-release", b"changed\n")
            .finish(),
    )
    .unwrap();
    let err = fails(setup.strata(&["layer", "apply", &id, change.to_str().unwrap()]));
    assert!(err.contains("read-only"), "{err}");
    assert!(err.contains("used by image shared"), "{err}");
    // Unchanged: a container on the image still sees the original.
    let container = ok(setup.strata(&["container", "create", "shared"]));
    let root = PathBuf::from(ok(setup.strata(&["container", "mount", container.trim()])).trim());
    let seen = fs::read(root.join("etc/os-release")).unwrap();
    ok(setup.strata(&["container", "unmount", container.trim()]));
    assert_eq!(seen, b"base\n");
    // A layer made writable (a container's) still takes a diff.
    ok(setup.strata(&["layer", "create", "scratch"]));
    ok(setup.strata(&["layer", "apply", "scratch", change.to_str().unwrap()]));
}

#[test]
fn deleting_one_of_several_names_takes_only_that_name_as_podman_does() {
    let setup = Setup::new();
    let layout = setup.scratch.path().join("layout");
    let base = fixtures::RawTar::new()
        .file("etc/hostname", b"x\n")
        .finish();
    fixtures::layout::write_image(
        &layout,
        "v1",
        &[fixtures::layout::Layer::plain(&base)],
        "app",
    );
    let location = format!("oci:{}:v1", layout.display());
    let imported = setup.strata(&[
        "--log-level",
        "debug",
        "image",
        "import",
        &location,
        "--name",
        "a",
        "--name",
        "b",
    ]);
    // The store's steps, at debug, each with its layer.
    let log = stderr(&imported);
    assert!(
        log.contains("diff digests checked against what was declared")
            && log.contains("layer made")
            && log.contains("image layer made")
            && log.contains("layer="),
        "{log}"
    );
    let id = ok(imported);
    let id = id.trim();
    assert_eq!(ok(setup.strata(&["image", "delete", "a"])), "untagged: a\n");
    let left: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["--json", "image", "inspect", id]))).unwrap();
    assert_eq!(left["names"], serde_json::json!(["b"]));
    // The last name deletes the image.
    assert_eq!(
        ok(setup.strata(&["image", "delete", "b"])),
        format!("{id}\n")
    );
    assert_eq!(ok(setup.strata(&["layer", "list", "-q"])), "");
    // --force, or the id, deletes it whatever its names.
    ok(setup.strata(&["image", "import", &location, "--name", "c", "--name", "d"]));
    assert_eq!(
        ok(setup.strata(&["image", "delete", "--force", "c"])),
        format!("{id}\n")
    );
    ok(setup.strata(&["image", "import", &location, "--name", "e", "--name", "f"]));
    assert_eq!(
        ok(setup.strata(&["image", "delete", id])),
        format!("{id}\n")
    );
    assert_eq!(
        ok(setup.strata(&["image", "list"])).lines().count(),
        1,
        "the header alone"
    );
    // A registry is skopeo's job, said with the command to run.
    let err = fails(setup.strata(&["image", "import", "docker://example/app:1"]));
    assert!(
        err.contains("skopeo copy docker://example/app:1 oci:DIR:TAG"),
        "{err}"
    );
}

/// An OCI layout at `<scratch>/layout` whose image `v1` has a base layer
/// (etc/hostname), written as `base` writes it, and a plain app layer
/// (srv/app).
fn two_layer_layout(setup: &Setup, base: fn(&[u8]) -> fixtures::layout::Layer) -> PathBuf {
    let layout = setup.scratch.path().join("layout");
    let base_tar = fixtures::RawTar::new()
        .file("etc/hostname", b"base\n")
        .finish();
    let app = fixtures::RawTar::new()
        .file("srv/app", b"application\n")
        .finish();
    fixtures::layout::write_image(
        &layout,
        "v1",
        &[base(&base_tar), fixtures::layout::Layer::plain(&app)],
        "app",
    );
    layout
}

#[test]
fn listings_and_inspect_say_parents_names_times_sizes_and_mounts() {
    let setup = Setup::new();
    let layout = two_layer_layout(&setup, fixtures::layout::Layer::plain);
    let image = ok(setup.strata(&["image", "import", &format!("{}:v1", layout.display())]));
    let image = image.trim();
    let container = ok(setup.strata(&["container", "create", "v1", "--name", "web"]));
    let container = container.trim();
    let path = ok(setup.strata(&["container", "mount", "web"]));

    let listing = ok(setup.strata(&["layer", "list"]));
    let mut lines = listing.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("ID            PARENT        CREATED"),
        "{listing}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{listing}");
    let container_row = rows
        .iter()
        .find(|r| r.starts_with(&container[..12]))
        .unwrap();
    assert!(
        container_row.split_whitespace().nth(4) == Some("1"),
        "the container's layer is mounted once: {listing}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["--json", "layer", "list"]))).unwrap();
    let top = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == container)
        .unwrap();
    assert_eq!(top["mounts"], 1);
    assert_eq!(top["mount_path"], path.trim());
    let parent = top["parent"].as_str().unwrap().to_string();

    let inspected: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["layer", "inspect", &parent]))).unwrap();
    assert_eq!(inspected["children"], serde_json::json!([container]));
    assert_eq!(inspected["size"], 12, "{inspected}");
    assert!(
        inspected["users"].to_string().contains("image"),
        "{inspected}"
    );

    let containers = ok(setup.strata(&["container", "list"]));
    assert!(
        containers.lines().next().unwrap().contains("MOUNTS"),
        "{containers}"
    );
    assert!(containers.contains(" 1  web"), "{containers}");
    let about: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["container", "inspect", "web"]))).unwrap();
    assert_eq!(about["mounts"], 1);
    assert_eq!(about["image_names"], serde_json::json!(["v1"]));
    assert_eq!(about["layer_parent"], parent.as_str());

    let history = ok(setup.strata(&["image", "history", image]));
    let steps: Vec<&str> = history.lines().skip(1).collect();
    assert_eq!(steps.len(), 2, "{history}");
    assert!(
        steps[0].starts_with(&parent[..12]),
        "newest first: {history}"
    );
    ok(setup.strata(&["container", "unmount", "web"]));
    let about: serde_json::Value =
        serde_json::from_str(&ok(setup.strata(&["container", "inspect", "web"]))).unwrap();
    assert_eq!(about["mounts"], 0);
    assert_eq!(
        ok(setup.strata(&["container", "list", "-q"])),
        format!("{container}\n")
    );
    // A field list, as ps -o takes one, with the names --json gives.
    assert_eq!(
        ok(setup.strata(&["--format", "id,names,mounts", "container", "list"])),
        format!("{container}\tweb\t0\n")
    );
    let images = ok(setup.strata(&["--format", "id,names,layers", "image", "list"]));
    assert_eq!(images, format!("{image}\tv1\t2\n"));
    let err = fails(setup.strata(&["--format", "id,colour", "layer", "list"]));
    assert!(
        err.contains("no field 'colour'") && err.contains("mounts"),
        "{err}"
    );
}

#[test]
fn a_podman_storage_conf_is_read_for_what_means_the_same() {
    let setup = Setup::new();
    let config = setup.scratch.path().join("storage.conf");
    fs::write(
        &config,
        "[storage]\ndriver = \"vfs\"\nrunroot = \"/run/containers/storage\"\n\
         graphroot = \"/var/lib/containers/storage\"\n\
         [storage.options]\nadditionalimagestores = [\n]\n\
         pull_options = {enable_partial_images = \"false\"}\n\
         [storage.options.overlay]\nmountopt = \"nodev\"\n[storage.options.thinpool]\n",
    )
    .unwrap();
    // The graph and run roots are the test's (flags beat the file).
    let out = setup.strata(&["--config", config.to_str().unwrap(), "--json", "status"]);
    let status: serde_json::Value = serde_json::from_str(&ok(out.clone())).unwrap();
    assert_eq!(status["driver"], "vfs");
    let log = stderr(&out);
    assert!(
        log.contains("containers/storage")
            && log.contains("storage.options.additionalimagestores")
            && log.contains("storage.options.thinpool"),
        "each ignored setting is named: {log}"
    );
    // Not strata's format nor containers/storage's: the message says where
    // strata's is described.
    fs::write(&config, "[storage]\ndriver = [\"vfs\"]\n").unwrap();
    let err = fails(setup.strata(&["--config", config.to_str().unwrap(), "status"]));
    assert!(err.contains("storage.toml.example"), "{err}");
}

#[test]
fn a_second_mount_with_other_options_is_refused_saying_which_the_mount_has() {
    let setup = Setup::new();
    fs::copy(
        build_plugin("strata-driver-overlay"),
        setup.drivers.join("libstrata_driver_overlay.so"),
    )
    .unwrap();
    let overlay = |args: &[&str]| {
        let mut all = vec!["--driver", "overlay"];
        all.extend_from_slice(args);
        setup.strata(&all)
    };
    ok(overlay(&["layer", "create", "img", "--read-only"]));
    let path = ok(overlay(&["layer", "mount", "img", "-o", "ro"]));
    let refused = overlay(&["layer", "mount", "img"]);
    assert_eq!(refused.status.code(), Some(2));
    let err = stderr(&refused);
    assert!(
        err.contains("mounted already, with options [ro]") && err.contains("1 mount(s) held"),
        "{err}"
    );
    // The same options share the mount.
    assert_eq!(ok(overlay(&["layer", "mount", "img", "-o", "ro"])), path);
    ok(overlay(&["layer", "unmount", "img"]));
    ok(overlay(&["layer", "unmount", "img"]));
    // Unmounted everywhere, it mounts with other options again.
    ok(overlay(&["layer", "mount", "img"]));
    ok(overlay(&["layer", "unmount", "img"]));
}

#[test]
fn oci_archives_skopeo_writes_import_as_their_layout_does_and_export_reads_back() {
    let setup = Setup::new();
    let layout = two_layer_layout(&setup, fixtures::layout::Layer::gzip);
    let archive = setup.scratch.path().join("image.tar");
    let skopeo = |args: &[&str]| {
        let out = Command::new("skopeo")
            .args(args)
            .output()
            .expect("skopeo (a Debian package: scripts/install-deps.sh installs it)");
        assert!(out.status.success(), "skopeo {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    skopeo(&[
        "copy",
        &format!("oci:{}:v1", layout.display()),
        &format!("oci-archive:{}:v1", archive.display()),
    ]);
    let from_archive = ok(setup.strata(&[
        "image",
        "import",
        &format!("oci-archive:{}:v1", archive.display()),
        "--name",
        "a",
    ]));
    let from_layout = ok(setup.strata(&[
        "image",
        "import",
        &format!("oci:{}:v1", layout.display()),
        "--name",
        "l",
    ]));
    assert_eq!(from_archive, from_layout, "the same image id either way");

    let out = setup.scratch.path().join("out.tar");
    ok(setup.strata(&[
        "image",
        "export",
        "a",
        &format!("oci-archive:{}:copy", out.display()),
    ]));
    let inspected: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci-archive:{}:copy", out.display()),
    ]))
    .unwrap();
    assert_eq!(
        inspected["Layers"].as_array().map(Vec::len),
        Some(2),
        "{inspected}"
    );
    // No layout or partial file is left beside it.
    let beside: Vec<_> = fs::read_dir(setup.scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".strata-export-"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    // Read back by strata itself, into another store: the same id again.
    let other = Setup::new();
    let again = ok(other.strata(&[
        "image",
        "import",
        &format!("oci-archive:{}:copy", out.display()),
    ]));
    assert_eq!(again, from_archive);

    // A docker archive (what docker save and podman save write, here by
    // skopeo), read in place as the layout it describes: the same id.
    let docker = setup.scratch.path().join("docker.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker-archive:{}:app:v1", docker.display()),
    ]);
    let by_reference = ok(other.strata(&[
        "image",
        "import",
        &format!("docker-archive:{}:app:v1", docker.display()),
    ]));
    assert_eq!(by_reference, from_archive);
    let only_one = ok(other.strata(&[
        "image",
        "import",
        &format!("docker-archive:{}", docker.display()),
    ]));
    assert_eq!(only_one, from_archive, "the only image when none is named");
    let err = fails(other.strata(&[
        "image",
        "import",
        &format!("docker-archive:{}:app:v2", docker.display()),
    ]));
    assert!(
        err.contains("no image app:v2") && err.contains("app:v1"),
        "{err}"
    );
    let err = fails(other.strata(&[
        "image",
        "export",
        from_archive.trim(),
        &format!(
            "docker-archive:{}",
            setup.scratch.path().join("d2.tar").display()
        ),
    ]));
    assert!(
        err.contains("skopeo copy oci-archive:FILE docker-archive:"),
        "{err}"
    );

    // What is not an archive says so, naming it.
    let junk = setup.scratch.path().join("junk.tar");
    fs::write(&junk, b"not a tar at all, just some bytes that are not one").unwrap();
    let err = fails(setup.strata(&[
        "image",
        "import",
        &format!("oci-archive:{}", junk.display()),
    ]));
    assert!(
        err.contains("junk.tar") && err.contains("not an OCI"),
        "{err}"
    );
    let fifo = setup.scratch.path().join("fifo.tar");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let err = fails(setup.strata(&[
        "image",
        "import",
        &format!("oci-archive:{}", fifo.display()),
    ]));
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_layer_being_made_by_another_process_is_not_deleted_under_it() {
    use std::io::Write;
    let setup = Setup::new();
    ok(setup.strata(&["layer", "create", "first"]));
    let mut tar = fixtures::RawTar::new();
    tar.file("a", b"first half");
    let first_half = tar.bytes.clone();
    tar.file("b", b"second half");
    let whole = tar.finish();
    // The maker reads its diff from a pipe we hold open half written.
    let mut cmd = Command::new(&setup.binary);
    cmd.env("STRATA_DRIVER_PATH", &setup.drivers)
        .env_remove("STRATA_CONFIG")
        .arg("--root")
        .arg(setup.graphroot())
        .arg("--run-root")
        .arg(setup.scratch.path().join("run"))
        .args(["layer", "create", "slow", "--diff", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut maker = retry_busy(|| cmd.spawn());
    let mut stdin = maker.stdin.take().unwrap();
    stdin.write_all(&first_half).unwrap();
    stdin.flush().unwrap();
    // Wait until the maker has recorded the layer as being made.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        let out = setup.strata(&["layer", "delete", "slow"]);
        let err = stderr(&out);
        if err.contains("making") {
            assert!(!out.status.success());
            break err;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the maker never showed up: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        refused.contains("another process is making it"),
        "{refused}"
    );
    stdin.write_all(&whole[first_half.len()..]).unwrap();
    drop(stdin);
    let made = maker.wait_with_output().unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let root = PathBuf::from(ok(setup.strata(&["layer", "mount", "slow"])).trim());
    assert_eq!(fs::read(root.join("b")).unwrap(), b"second half");
    ok(setup.strata(&["layer", "unmount", "slow"]));
    ok(setup.strata(&["layer", "delete", "slow"]));
    let leftovers: Vec<String> = fs::read_dir(setup.graphroot().join("vfs-layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".making") || n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_broken_library_for_a_driver_that_would_be_chosen_stops_the_choice() {
    let setup = Setup::new();
    // Overlay comes before vfs: a junk overlay library must not let vfs be
    // chosen (and recorded for this graph root for good).
    let junk = setup.drivers.join("libstrata_driver_overlay.so");
    fs::write(&junk, b"not a library").unwrap();
    let err = fails(setup.strata(&["status"]));
    assert!(
        err.contains("driver 'overlay' is installed but its library cannot be used"),
        "{err}"
    );
    assert!(err.contains(&junk.display().to_string()), "{err}");
    assert!(
        !setup.graphroot().join("driver.json").exists() && !setup.graphroot().join("vfs").exists(),
        "a driver was recorded for the graph root"
    );
    // Named explicitly, another driver still starts.
    ok(setup.strata(&["--driver", "vfs", "status"]));
}

#[test]
fn a_library_others_could_replace_is_not_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new();
    let vfs = setup.drivers.join("libstrata_driver_vfs.so");
    fs::set_permissions(&vfs, fs::Permissions::from_mode(0o775)).unwrap();
    let err = fails(setup.strata(&["--driver", "vfs", "status"]));
    assert!(err.contains("refusing to load"), "{err}");
    assert!(
        err.contains("writable by its group or by everyone (mode 775)"),
        "{err}"
    );
    fs::set_permissions(&vfs, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&setup.drivers, fs::Permissions::from_mode(0o777)).unwrap();
    let err = fails(setup.strata(&["--driver", "vfs", "status"]));
    assert!(err.contains("could be replaced"), "{err}");
    fs::set_permissions(&setup.drivers, fs::Permissions::from_mode(0o755)).unwrap();
    ok(setup.strata(&["--driver", "vfs", "status"]));
}
