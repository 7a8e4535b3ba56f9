//! Backends the runner sets up for a driver, and scratch filesystems for
//! tests: each unmounted and detached when dropped, failure or not.

use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

/// A tmpfs of a fixed size, mounted on a fresh temporary directory.
pub struct ScratchTmpfs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl ScratchTmpfs {
    /// Mounts a tmpfs of `size` bytes (needs root).
    pub fn new(size: u64) -> std::io::Result<ScratchTmpfs> {
        let dir = tempfile::tempdir()?;
        let data = std::ffi::CString::new(format!("size={size},mode=0755")).expect("no NUL");
        rustix::mount::mount(
            "strata-test",
            dir.path(),
            "tmpfs",
            MountFlags::empty(),
            Some(data.as_c_str()),
        )?;
        Ok(ScratchTmpfs { dir, mounted: true })
    }

    /// Where the tmpfs is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// [`path`](Self::path), owned.
    pub fn path_buf(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for ScratchTmpfs {
    fn drop(&mut self) {
        if self.mounted {
            // Detach even if something still holds a file open there.
            let _ = rustix::mount::unmount(self.dir.path(), UnmountFlags::DETACH);
            self.mounted = false;
        }
    }
}

/// A filesystem kind a test can make on a loop device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopFsKind {
    /// mkfs.ext4 defaults: the reference filesystem for benches that create files.
    Ext4,
    /// Shares extents (reflink) and has subvolumes.
    Btrfs,
    /// Shares extents (reflink=1 is mkfs.xfs's default).
    Xfs,
}

impl LoopFsKind {
    fn mkfs(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            LoopFsKind::Ext4 => ("mkfs.ext4", &["-q", "-F"], "ext4"),
            LoopFsKind::Btrfs => ("mkfs.btrfs", &["-q", "-f"], "btrfs"),
            LoopFsKind::Xfs => ("mkfs.xfs", &["-q", "-f"], "xfs"),
        }
    }
}

/// A filesystem on a loop device over a sparse image file, mounted on a
/// temporary directory. Dropping it unmounts, detaches the loop device and
/// deletes the image, whether the test passed or not.
pub struct LoopFilesystem {
    mountpoint: tempfile::TempDir,
    device: Option<loopdev::LoopDevice>,
    mounted: bool,
    // Declared last so the image goes after the device is detached.
    _image_dir: tempfile::TempDir,
}

impl LoopFilesystem {
    /// Makes and mounts a `kind` filesystem of `size` bytes (needs root and the
    /// mkfs tool for the kind).
    pub fn new(kind: LoopFsKind, size: u64) -> std::io::Result<LoopFilesystem> {
        let image_dir = tempfile::tempdir()?;
        let image = image_dir.path().join("fs.img");
        std::fs::File::create(&image)?.set_len(size)?;
        // Another test (or process) may take the free device between
        // finding and attaching it: then the next free one is tried.
        let mut attempts = 0;
        let device = loop {
            let device = loopdev::LoopControl::open()?.next_free()?;
            match device.with().autoclear(true).attach(&image) {
                Ok(()) => break device,
                Err(e)
                    if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
                        && attempts < 20 =>
                {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let mut fs = LoopFilesystem {
            mountpoint: tempfile::tempdir()?,
            device: Some(device),
            mounted: false,
            _image_dir: image_dir,
        };
        let dev_path = fs
            .device
            .as_ref()
            .and_then(|d| d.path())
            .ok_or_else(|| std::io::Error::other("loop device has no path"))?;
        let (mkfs, args, fstype) = kind.mkfs();
        let out = std::process::Command::new(mkfs)
            .args(args)
            .arg(&dev_path)
            .output()
            .map_err(|e| std::io::Error::other(format!("run {mkfs}: {e}")))?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{mkfs} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        rustix::mount::mount(
            dev_path.as_path(),
            fs.mountpoint.path(),
            fstype,
            MountFlags::empty(),
            None::<&std::ffi::CStr>,
        )?;
        fs.mounted = true;
        Ok(fs)
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }
}

impl Drop for LoopFilesystem {
    fn drop(&mut self) {
        if self.mounted {
            if rustix::mount::unmount(self.mountpoint.path(), UnmountFlags::empty()).is_err() {
                let _ = rustix::mount::unmount(self.mountpoint.path(), UnmountFlags::DETACH);
            }
            self.mounted = false;
        }
        if let Some(device) = self.device.take() {
            // Autoclear detaches once the last user closes it; detaching
            // explicitly as well covers a mount that was never made.
            let _ = device.detach();
        }
    }
}

/// A ZFS pool on a sparse file, served by zfs-fuse (userspace ZFS; this
/// machine's kernel has no zfs), mounted on a temporary directory. Starts the
/// zfs-fuse daemon if none runs and stops it again once the last pool of
/// this process is dropped, if this process started it (tests run pools on
/// several threads at once). Dropping a pool destroys it, failure or not.
pub struct ZfsFusePool {
    name: String,
    mountpoint: tempfile::TempDir,
    _image_dir: tempfile::TempDir,
    // Dropped last, after the pool is destroyed: one pool at a time in a
    // process. zfs-fuse wedged (every FUSE request and `zpool list` waiting
    // for ever) with three test pools in use at once under load.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Held by the one live pool of this process.
static ONE_POOL_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The zfs-fuse daemon as this process uses it: how many pools of ours are
/// alive, and the pid file of the daemon if we started it.
struct Daemon {
    pools: usize,
    started: Option<tempfile::TempDir>,
}

static DAEMON: std::sync::Mutex<Daemon> = std::sync::Mutex::new(Daemon {
    pools: 0,
    started: None,
});

fn zfs_command(program: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| std::io::Error::other(format!("run {program}: {e} (is zfs-fuse installed?)")))
}

fn zfs_daemon_answers() -> bool {
    zfs_command("zpool", &["list", "-H"]).is_ok_and(|o| o.status.success())
}

/// Starts zfs-fuse unless it answers; returns the directory holding its pid
/// file if this call started it.
fn start_daemon() -> std::io::Result<Option<tempfile::TempDir>> {
    if zfs_daemon_answers() {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let pidfile = dir.path().join("zfs-fuse.pid");
    let out = zfs_command(
        "zfs-fuse",
        &["--no-kstat-mount", "-p", &pidfile.to_string_lossy()],
    )?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "start zfs-fuse: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    // The daemon forks; wait until it answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !zfs_daemon_answers() {
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::other(
                "zfs-fuse did not start answering in 15 s",
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(Some(dir))
}

/// Stops the daemon whose pid file is in `dir`.
fn stop_daemon(dir: &tempfile::TempDir) {
    let Some(pid) = std::fs::read_to_string(dir.path().join("zfs-fuse.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    for _ in 0..100 {
        if rustix::process::test_kill_process(pid).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
}

impl ZfsFusePool {
    /// Makes a pool of `size` bytes (needs root and the zfs-fuse package).
    pub fn new(size: u64) -> std::io::Result<ZfsFusePool> {
        // A test that failed while holding it leaves it poisoned: the pool
        // it held was still destroyed by its drop.
        let turn = ONE_POOL_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut daemon = DAEMON.lock().unwrap_or_else(|e| e.into_inner());
            if (daemon.pools == 0 || !zfs_daemon_answers())
                && let Some(started) = start_daemon()?
            {
                daemon.started = Some(started);
            }
            daemon.pools += 1;
        }
        // Counted from here: a failure before the pool value exists counts
        // it out here, one after it when the value is dropped.
        let files = (|| -> std::io::Result<_> {
            let image_dir = tempfile::tempdir()?;
            let mountpoint = tempfile::tempdir()?;
            let image = image_dir.path().join("pool.img");
            std::fs::File::create(&image)?.set_len(size)?;
            Ok((image_dir, mountpoint, image))
        })();
        let (image_dir, mountpoint, image) = match files {
            Ok(files) => files,
            Err(e) => {
                DAEMON.lock().unwrap_or_else(|e| e.into_inner()).pools -= 1;
                return Err(e);
            }
        };
        let name = format!(
            "strata-{}-{}",
            std::process::id(),
            image_dir
                .path()
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .trim_start_matches('.')
        );
        let mount = mountpoint.path().to_string_lossy().into_owned();
        let image_text = image.to_string_lossy().into_owned();
        let pool = ZfsFusePool {
            name,
            mountpoint,
            _image_dir: image_dir,
            _turn: turn,
        };
        let out = zfs_command(
            "zpool",
            &["create", "-f", "-m", &mount, &pool.name, &image_text],
        )?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "zpool create: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(pool)
    }

    /// Where the pool's root dataset is mounted.
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// The pool's name, for drivers that manage datasets in it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ZfsFusePool {
    fn drop(&mut self) {
        // A pool just used can answer "busy" for a moment while zfs-fuse
        // settles its FUSE mounts; try for a while before giving up.
        for _ in 0..50 {
            match zfs_command("zpool", &["destroy", "-f", &self.name]) {
                Ok(out) if out.status.success() => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(200)),
            }
        }
        let mut daemon = DAEMON.lock().unwrap_or_else(|e| e.into_inner());
        daemon.pools -= 1;
        if daemon.pools == 0
            && let Some(started) = daemon.started.take()
        {
            stop_daemon(&started);
        }
    }
}
