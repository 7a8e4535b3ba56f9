//! What the snapshotter's tests share: a store on a scratch ext4 filesystem,
//! a `strata-snapshotter` process serving it, a gRPC client on its socket,
//! and mounts made from what it answers, all taken down when dropped,
//! failure or not.

#![allow(dead_code)]

pub mod client;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::types::Mount;
use strata_testkit::mounts::{LoopFilesystem, LoopFsKind, ZfsFusePool};
use strata_testkit::plugins::build_plugin;
use tonic::transport::{Channel, Endpoint, Uri};

pub type Client = SnapshotsClient<Channel>;

/// A snapshotter serving a fresh store of one driver.
pub struct Served {
    pub driver: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub graphroot: PathBuf,
    pub runroot: PathBuf,
    pub drivers: PathBuf,
    process: Option<Child>,
    /// The zfs driver's pool (zfs-fuse on a file), holding the graph root.
    zfs: Option<ZfsFusePool>,
    // Last: unmounted after everything on it is gone.
    fs: LoopFilesystem,
}

/// Whether this machine can run these tests; the reason if not.
pub fn cannot_run_here() -> Option<String> {
    if !strata_testkit::skip::is_root() {
        return Some("needs root (loop devices and mounts)".into());
    }
    for (tool, package) in [
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.btrfs", "btrfs-progs"),
        ("zfs-fuse", "zfs-fuse"),
    ] {
        if !strata_testkit::skip::have_tool(tool) {
            return Some(format!("needs {tool} ({package})"));
        }
    }
    None
}

impl Served {
    /// Starts a snapshotter for `driver` (vfs, overlay, ...) on a new store,
    /// on ext4 (btrfs for the btrfs driver).
    pub fn start(driver: &str) -> Served {
        Served::start_built(driver, false)
    }

    /// [`start`](Self::start) with the driver built in the release profile
    /// (for benches).
    pub fn start_built(driver: &str, release: bool) -> Served {
        let kind = if driver == "btrfs" {
            LoopFsKind::Btrfs
        } else {
            LoopFsKind::Ext4
        };
        let fs = LoopFilesystem::new(kind, 4 << 30).expect("scratch filesystem");
        let dir = fs.path().to_path_buf();
        let drivers = dir.join("drivers");
        fs::create_dir_all(&drivers).unwrap();
        let library = format!("libstrata_driver_{driver}.so");
        let package = format!("strata-driver-{driver}");
        let built = if release {
            strata_testkit::plugins::build_plugin_release(&package)
        } else {
            build_plugin(&package)
        };
        fs::copy(built, drivers.join(&library)).unwrap();
        // The zfs driver keeps its layers as datasets of the pool its home
        // is on; everything else (socket, run root, work) stays on ext4.
        let zfs = (driver == "zfs").then(|| ZfsFusePool::new(2 << 30).expect("a zfs-fuse pool"));
        let graphroot = match &zfs {
            Some(pool) => pool.path().join("graph"),
            None => dir.join("graph"),
        };
        let mut served = Served {
            driver: driver.to_string(),
            socket: dir.join("run/snapshotter.sock"),
            graphroot,
            zfs,
            runroot: dir.join("run/strata"),
            drivers,
            dir,
            process: None,
            fs,
        };
        served.launch();
        served
    }

    /// Starts (again) the snapshotter process and waits for its socket.
    pub fn launch(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"));
        for (key, _) in std::env::vars() {
            if key.starts_with("STRATA_") && key != "STRATA_LOG" {
                command.env_remove(key);
            }
        }
        command
            .env("STRATA_DRIVER_PATH", &self.drivers)
            .env("STRATA_CONFIG", self.dir.join("no-config.toml"))
            .arg("--address")
            .arg(&self.socket)
            .arg("--driver")
            .arg(&self.driver)
            .arg("--root")
            .arg(&self.graphroot)
            .arg("--run-root")
            .arg(&self.runroot)
            .stdin(Stdio::null());
        fs::write(self.dir.join("no-config.toml"), "").unwrap();
        let mut child = command.spawn().expect("start strata-snapshotter");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("strata-snapshotter exited before serving: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "strata-snapshotter did not serve within 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(child);
    }

    /// Kills the snapshotter with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with SIGTERM and returns whether it exited cleanly and took
    /// its socket away.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.process.take() else {
            return false;
        };
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let status = child.wait().expect("wait for the snapshotter");
        status.success() && !self.socket.exists()
    }

    /// The store the snapshotter serves, opened in this process too (as
    /// the `strata` command would open it).
    pub fn open_store(&self) -> strata_core::Store {
        let config_file = self
            .dir
            .join(format!("in-process-{}.toml", std::process::id()));
        fs::write(
            &config_file,
            format!(
                "[storage]\ndriver = \"{}\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\ndriver_dirs = [\"{}\"]\n",
                self.driver,
                self.graphroot.display(),
                self.runroot.display(),
                self.drivers.display()
            ),
        )
        .unwrap();
        strata_core::Store::open(
            &strata_core::Config::load(&strata_core::Overrides {
                config: Some(config_file),
                ..Default::default()
            })
            .unwrap(),
        )
        .unwrap()
    }

    /// A client on the socket.
    pub async fn client(&self) -> Client {
        client_on(&self.socket).await
    }
}

/// A gRPC client on Unix socket `socket`.
pub async fn client_on(socket: &Path) -> Client {
    let socket = socket.to_path_buf();
    // The URI is required by tonic and unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://strata.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            tokio::net::UnixStream::connect(socket.clone())
        }))
        .await
        .expect("connect to the snapshotter");
    SnapshotsClient::new(channel)
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
        // Whatever a failing test left mounted on the scratch filesystems.
        if let Some(pool) = &self.zfs
            && let Ok(left) = strata_driver_kit::mounts::mounted_beneath(pool.path())
        {
            for path in left.iter().rev().filter(|p| *p != pool.path()) {
                let _ = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH);
            }
        }
        if let Ok(left) = strata_driver_kit::mounts::mounted_beneath(&self.dir) {
            for path in left.iter().rev() {
                let _ = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// Mounts made from a snapshotter's answer, as containerd makes them;
/// unmounted when dropped.
pub struct Mounted {
    pub target: PathBuf,
    count: usize,
}

impl Mounted {
    pub fn new(mounts: &[Mount], target: &Path) -> Mounted {
        assert!(!mounts.is_empty(), "expected mounts to have entries");
        fs::create_dir_all(target).unwrap();
        let mut mounted = Mounted {
            target: target.to_path_buf(),
            count: 0,
        };
        for m in mounts {
            let spec = strata_core::MountSpec {
                kind: m.r#type.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            };
            strata_driver_kit::mounts::perform(&spec, target)
                .unwrap_or_else(|e| panic!("mount {spec:?} on {}: {e}", target.display()));
            mounted.count += 1;
        }
        mounted
    }

    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for _ in 0..self.count {
            if rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::empty()).is_err() {
                let _ = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// What a tree holds, as containerd's fstest compares it: per path, its
/// kind, mode, owner, and content or link target (not times).
pub fn tree_facts(root: &Path) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let what = if meta.is_dir() {
                pending.push(path.clone());
                "dir".to_string()
            } else if meta.file_type().is_symlink() {
                format!("symlink -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_file() {
                format!(
                    "file {:?}",
                    String::from_utf8_lossy(&fs::read(&path).unwrap())
                )
            } else {
                "special".to_string()
            };
            facts.insert(
                rel,
                format!(
                    "{what} mode {:o} owner {}:{}",
                    meta.mode() & 0o7777,
                    meta.uid(),
                    meta.gid()
                ),
            );
        }
    }
    facts
}

/// The differences between two trees' facts, in words.
pub fn differences(expected: &Path, found: &Path) -> Vec<String> {
    let a = tree_facts(expected);
    let b = tree_facts(found);
    let mut out = Vec::new();
    for (path, fact) in &a {
        match b.get(path) {
            None => out.push(format!("{path}: missing (expected {fact})")),
            Some(other) if other != fact => out.push(format!("{path}: {other}, expected {fact}")),
            _ => {}
        }
    }
    for (path, fact) in &b {
        if !a.contains_key(path) {
            out.push(format!("{path}: unexpected {fact}"));
        }
    }
    out
}
