//! containerd runs on strata: a private containerd (its own root, state and
//! socket, everything on a scratch filesystem) with strata-snapshotter as
//! its proxy snapshotter `strata`; with `ctr`, an OCI archive of a Debian
//! tree (made by umoci and skopeo) is imported and unpacked onto strata, a
//! container snapshot is prepared and mounted as `ctr snapshots mounts`
//! says and compared with `umoci unpack` of the same image, a container
//! runs on it, and containerd's garbage collector removes the snapshots
//! through the proxy once the image is deleted. For vfs, overlay, btrfs
//! (on a loop btrfs) and zfs (zfs-fuse, with a pool on a file).
//!
//! Everything started is stopped, and everything mounted unmounted, when
//! the test ends, failure or not.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Served;
use strata_testkit::tree::{Compare, compare_trees_with};

const NAMESPACE: &str = "strata-test";
const IMAGE: &str = "strata.test/debian:debian";

/// A containerd daemon, stopped (and its shims with it) when dropped.
struct Containerd {
    child: Option<Child>,
    socket: PathBuf,
    root: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, snapshotter_socket: &Path) -> Containerd {
        fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
# Only what the test needs: no CRI, no snapshotters that need other backends.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{ttrpc}"

[proxy_plugins.strata]
  type = "snapshot"
  address = "{snapshotter}"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                ttrpc = dir.join("containerd.ttrpc.sock").display(),
                snapshotter = snapshotter_socket.display(),
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut daemon = Containerd {
            child: Some(child),
            socket,
            root: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while daemon.ctr(&["version"]).status.code() != Some(0) {
            if let Some(Ok(Some(status))) = daemon.child.as_mut().map(|c| c.try_wait()) {
                panic!("containerd exited: {status}\n{}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 60 s:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    fn log(&self) -> String {
        fs::read_to_string(self.root.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Runs ctr and returns its standard output, failing the test with
    /// its error output (and containerd's log) if it fails.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\ncontainerd's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first (a failed test may have left one), then the daemon.
        if let Ok(out) = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE, "tasks", "ls", "-q"])
            .output()
        {
            for task in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", task]);
                let _ = self.ctr(&["tasks", "delete", "-f", task]);
                let _ = self.ctr(&["containers", "delete", task]);
            }
        }
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A shim outlives containerd by design; none of ours may.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(format!(
                "containerd-shim.*-address {}",
                self.socket.display()
            ))
            .status();
    }
}

fn run(command: &mut Command) -> String {
    String::from_utf8(strata_testkit::run_ok(command)).unwrap()
}

/// The Debian tree as an OCI archive: unpacked, inserted into a new image
/// by umoci, copied into an archive by skopeo. Returns the archive and the
/// layout (for `umoci unpack`).
fn debian_archive(dir: &Path) -> (PathBuf, PathBuf) {
    let tree = dir.join("rootfs");
    fs::create_dir_all(&tree).unwrap();
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(strata_testkit::fixtures::debian_rootfs_tar())
        .arg("-C")
        .arg(&tree));
    let layout = dir.join("oci");
    let image = format!("{}:debian", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&tree)
        .arg("/"));
    fs::remove_dir_all(&tree).unwrap();
    let archive = dir.join("debian.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{image}"),
        &format!("oci-archive:{}:debian", archive.display()),
    ]));
    (archive, layout)
}

/// `mount -t TYPE SOURCE TARGET -o OPTIONS`, as `ctr snapshots mounts`
/// prints it, as the mount it describes.
fn parse_mount_command(line: &str) -> strata_core::MountSpec {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["mount", "-t", kind, source, _target, "-o", options] => strata_core::MountSpec {
            kind: kind.to_string(),
            source: source.to_string(),
            options: options.split(',').map(String::from).collect(),
        },
        _ => panic!("unexpected line from ctr snapshots mounts: {line:?}"),
    }
}

fn needs() -> Option<String> {
    if let Some(why) = common::cannot_run_here() {
        return Some(why);
    }
    for tool in [
        "containerd",
        "ctr",
        "runc",
        "containerd-shim-runc-v2",
        "umoci",
        "skopeo",
        "debootstrap",
    ] {
        if !strata_testkit::skip::have_tool(tool) {
            return Some(format!(
                "needs {tool} (scripts/install-deps.sh installs it)"
            ));
        }
    }
    None
}

fn containerd_on(driver: &str) {
    if let Some(why) = needs() {
        strata_testkit::skip::cannot_run(&format!("containerd_on_{driver}"), &why);
        return;
    }
    let served = Served::start(driver);
    let (archive, layout) = debian_archive(&served.dir.join("image"));
    let containerd = Containerd::start(&served.dir.join("containerd"), &served.socket);
    let plugins = containerd.ctr_ok(&["plugins", "ls"]);
    assert!(
        plugins
            .lines()
            .any(|l| l.contains("io.containerd.snapshotter.v1")
                && l.contains("strata")
                && l.trim_end().ends_with("ok")),
        "containerd does not list the strata proxy snapshotter as ok:\n{plugins}"
    );

    // Import and unpack onto strata.
    containerd.ctr_ok(&[
        "images",
        "import",
        "--snapshotter",
        "strata",
        "--base-name",
        "strata.test/debian",
        archive.to_str().unwrap(),
    ]);
    let listed = containerd.ctr_ok(&["snapshots", "--snapshotter", "strata", "ls"]);
    let committed: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter(|l| l.trim_end().ends_with("Committed"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        committed.len(),
        1,
        "one layer, one committed snapshot:\n{listed}"
    );
    let chain = committed[0];
    let stored = served.graphroot.join(format!("{driver}.db"));
    assert!(
        stored.exists(),
        "the snapshots are in the strata store at {}",
        stored.display()
    );

    // A container snapshot, mounted as ctr says, against umoci's unpack.
    containerd.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "prepare",
        "check-rootfs",
        chain,
    ]);
    let target = served.dir.join("check-rootfs");
    fs::create_dir_all(&target).unwrap();
    let printed = containerd.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "mounts",
        target.to_str().unwrap(),
        "check-rootfs",
    ]);
    let specs: Vec<_> = printed
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_mount_command)
        .collect();
    let bundle = served.dir.join("umoci-bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:debian", layout.display())])
        .arg(&bundle));
    let mounts: Vec<containerd_snapshots::api::types::Mount> = specs
        .iter()
        .map(|s| containerd_snapshots::api::types::Mount {
            r#type: s.kind.clone(),
            source: s.source.clone(),
            target: String::new(),
            options: s.options.clone(),
        })
        .collect();
    let differences = {
        let mounted = common::Mounted::new(&mounts, &target);
        let mut found = compare_trees_with(
            &bundle.join("rootfs"),
            mounted.path(),
            Compare { atime: false },
        );
        // The root directory's time is not the image's: the layer tar has
        // no entry for the root, so umoci gives its root one time and a new
        // snapshot's root (overlay's upper directory, as with containerd's
        // own overlayfs) has its own. Every other entry must match.
        found.retain(|d| !d.starts_with(": mtime "));
        // Blocks allocated are the filesystem's business, and the reference
        // is on ext4 while zfs allocates in records of its own size.
        found.retain(|d| !d.contains(" allocates "));
        // Written through the mount: the snapshot takes it.
        fs::write(mounted.path().join("written-through-the-mount"), b"yes").unwrap();
        found
    };
    {
        // Mounted again as ctr says: the write is the snapshot's.
        let again = common::Mounted::new(&mounts, &target);
        assert_eq!(
            fs::read(again.path().join("written-through-the-mount"))
                .ok()
                .as_deref(),
            Some(&b"yes"[..]),
            "a file written through the snapshot's mount is not in it when mounted again"
        );
    }
    assert!(
        differences.is_empty(),
        "the container snapshot differs from umoci unpack:\n{}",
        differences.join("\n")
    );
    let usage = containerd.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "usage",
        "check-rootfs",
    ]);
    assert!(usage.lines().count() >= 2, "ctr snapshots usage: {usage}");
    containerd.ctr_ok(&["snapshots", "--snapshotter", "strata", "rm", "check-rootfs"]);

    // A container on it.
    let expected = fs::read_to_string(bundle.join("rootfs/etc/debian_version")).unwrap();
    let ran = containerd.ctr(&[
        "run",
        "--snapshotter",
        "strata",
        "--rm",
        IMAGE,
        "strata-check",
        "cat",
        "/etc/debian_version",
    ]);
    if ran.status.success() {
        assert_eq!(
            String::from_utf8_lossy(&ran.stdout),
            expected,
            "cat /etc/debian_version in the container"
        );
    } else {
        // Whether this machine starts containers at all: the same with
        // containerd's own native snapshotter.
        containerd.ctr_ok(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            "--base-name",
            "strata.test/debian",
            archive.to_str().unwrap(),
        ]);
        let native = containerd.ctr(&[
            "run",
            "--snapshotter",
            "native",
            "--rm",
            IMAGE,
            "native-check",
            "cat",
            "/etc/debian_version",
        ]);
        assert!(
            !native.status.success(),
            "a container runs on containerd's native snapshotter but not on strata's: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
        eprintln!(
            "containerd_on_{driver}: proved up to the container; this machine's sandbox refuses to start one \
             (also on containerd's own native snapshotter): {}",
            String::from_utf8_lossy(&native.stderr).trim()
        );
    }

    // Deleting the image lets containerd's garbage collector remove the
    // snapshots, through the proxy.
    containerd.ctr_ok(&["images", "rm", "--sync", IMAGE]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = containerd.ctr_ok(&["snapshots", "--snapshotter", "strata", "ls"]);
        if left.lines().skip(1).all(|l| l.trim().is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "containerd's collector left snapshots on strata:\n{left}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(containerd);
    let store_layers = fs::read_dir(served.graphroot.join(driver))
        .map(|d| d.count())
        .unwrap_or(0);
    eprintln!("containerd_on_{driver}: passed ({store_layers} entries left in the driver's home)");
}

#[test]
fn containerd_on_vfs() {
    containerd_on("vfs");
}

#[test]
fn containerd_on_overlay() {
    containerd_on("overlay");
}

#[test]
fn containerd_on_btrfs() {
    containerd_on("btrfs");
}

/// zfs (zfs-fuse here) describes no mounts: containerd gets binds of the
/// datasets the snapshotter holds mounted.
#[test]
fn containerd_on_zfs() {
    containerd_on("zfs");
}
