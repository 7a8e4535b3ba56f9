//! ZFS pools for tests and the conformance runner, served by zfs-fuse
//! (userspace ZFS: this machine's kernel has none).
//!
//! zfs-fuse is old and can wedge: every FUSE request and every `zpool`
//! command then waits for ever, and a test run hangs until CI gives up with
//! no word of why. Three things here keep that from happening, or from
//! going unnoticed:
//! * pools are made with `cachefile=none`, so a daemon started later never
//!   imports a pool of an earlier run (whose file may be gone: a faulted pool
//!   in the default `failmode=wait` blocks the daemon), and with
//!   `failmode=continue`, so an I/O error is an error, not a wait;
//! * the daemon we start gets an ARC of 1 GiB instead of the 100 MiB
//!   Debian's zfsrc sets (hundreds of datasets, snapshots and clones made in
//!   a minute had it stall under memory pressure);
//! * a watchdog asks the daemon we started for its pools, and each live
//!   pool's mount for its size (a FUSE request: zfs-fuse has wedged with
//!   its FUSE side stuck while `zpool` still answered), every few seconds,
//!   and kills it when either has gone unanswered for [`WEDGED_AFTER`]:
//!   waiting requests then fail at once, so the tests fail and say why
//!   (the line names zfs-fuse as wedged, which the conformance matrix looks
//!   for) instead of hanging. Every `zpool` command here is bounded the
//!   same way.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the daemon may leave a `zpool` command unanswered before it is
/// taken for wedged. Generous: a busy daemon answers within seconds.
const WEDGED_AFTER: Duration = Duration::from_secs(120);

/// How often the watchdog asks.
const WATCH_EVERY: Duration = Duration::from_secs(10);

/// The ARC the daemon we start may use, in MiB.
const ARC_MIB: &str = "1024";

/// A ZFS pool on a sparse file, mounted on a temporary directory. Starts the
/// zfs-fuse daemon if none runs and stops it again once the last pool of
/// this process is dropped, if this process started it. Dropping a pool
/// destroys it, failure or not.
pub struct ZfsFusePool {
    name: String,
    mountpoint: tempfile::TempDir,
    _image_dir: tempfile::TempDir,
    /// `zpool create` succeeded: there is a pool to destroy.
    created: bool,
    // Dropped last, after the pool is destroyed: one pool at a time in a
    // process. zfs-fuse wedged (every FUSE request and `zpool list` waiting
    // for ever) with three test pools in use at once under load.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Where this process's live pools are mounted, for the watchdog.
static MOUNTS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Held by the one live pool of this process.
static ONE_POOL_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The zfs-fuse daemon as this process uses it: how many pools of ours are
/// alive, and the daemon if we started it.
struct Daemon {
    pools: usize,
    started: Option<Started>,
}

/// A daemon this process started: its pid file and its watchdog.
struct Started {
    _dir: tempfile::TempDir,
    pid: rustix::process::Pid,
    watching: Arc<AtomicBool>,
}

static DAEMON: std::sync::Mutex<Daemon> = std::sync::Mutex::new(Daemon {
    pools: 0,
    started: None,
});

/// Runs `program args`, killing it if it has not finished within `limit`.
/// The output of these commands is a few lines, well within a pipe's
/// buffer, so it is read once the command has ended.
fn run_bounded(program: &str, args: &[&str], limit: Duration) -> std::io::Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            std::io::Error::other(format!("run {program}: {e} (is zfs-fuse installed?)"))
        })?;
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "`{program} {}` got no answer from zfs-fuse in {} s: the daemon is wedged",
                    args.join(" "),
                    limit.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn zpool(args: &[&str]) -> std::io::Result<Output> {
    run_bounded("zpool", args, WEDGED_AFTER)
}

fn daemon_answers() -> bool {
    zpool(&["list", "-H"]).is_ok_and(|o| o.status.success())
}

/// Starts zfs-fuse and its watchdog.
fn start_daemon() -> std::io::Result<Started> {
    let dir = tempfile::tempdir()?;
    let pidfile = dir.path().join("zfs-fuse.pid");
    let out = run_bounded(
        "zfs-fuse",
        &[
            "--no-kstat-mount",
            "--max-arc-size",
            ARC_MIB,
            "-p",
            &pidfile.to_string_lossy(),
        ],
        Duration::from_secs(30),
    )?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "start zfs-fuse: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let read_pid = || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
    };
    // The daemon forks; wait until it answers. One that never does is
    // killed, not left for a later start to adopt.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !daemon_answers() {
        if Instant::now() > deadline {
            if let Some(pid) = read_pid() {
                signal_daemon(pid, rustix::process::Signal::KILL);
            }
            return Err(std::io::Error::other(
                "zfs-fuse did not start answering in 15 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = read_pid().ok_or_else(|| std::io::Error::other("zfs-fuse wrote no pid file"))?;
    let watching = Arc::new(AtomicBool::new(true));
    let flag = watching.clone();
    std::thread::Builder::new()
        .name("zfs-fuse-watchdog".into())
        .spawn(move || watch(pid, &flag))?;
    Ok(Started {
        _dir: dir,
        pid,
        watching,
    })
}

/// Whether `pid` is still a zfs-fuse process: the daemon is not our child
/// (it forks away), so once it dies its pid can be anyone's.
fn is_zfs_fuse(pid: rustix::process::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{}/comm", pid.as_raw_nonzero()))
        .is_ok_and(|comm| comm.trim_end() == "zfs-fuse")
}

/// Sends `signal` to the daemon `pid` if it is still zfs-fuse.
fn signal_daemon(pid: rustix::process::Pid, signal: rustix::process::Signal) {
    if is_zfs_fuse(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The watchdog: kills the daemon `pid` once it stops answering, until
/// `watching` is cleared (the daemon was stopped on purpose).
fn watch(pid: rustix::process::Pid, watching: &AtomicBool) {
    loop {
        let next = Instant::now() + WATCH_EVERY;
        while Instant::now() < next {
            if !watching.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mounts = MOUNTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let fuse_probe = mounts.iter().try_for_each(|mount| {
            let mount = mount.to_string_lossy();
            run_bounded("stat", &["-f", "-c", "%b", &mount], WEDGED_AFTER).map(drop)
        });
        let probe = fuse_probe.and_then(|()| zpool(&["list", "-H"]));
        match probe {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                if watching.load(Ordering::Acquire) {
                    eprintln!(
                        "zfs-fuse (pid {}) is wedged: {e}; killing it so that what waits on it fails instead of hanging",
                        pid.as_raw_nonzero()
                    );
                    signal_daemon(pid, rustix::process::Signal::KILL);
                }
                return;
            }
            // Gone (stopped, or died): nothing left to watch.
            _ if !is_zfs_fuse(pid) => return,
            _ => {}
        }
    }
}

/// Stops a daemon this process started.
fn stop_daemon(started: Started) {
    started.watching.store(false, Ordering::Release);
    let pid = started.pid;
    signal_daemon(pid, rustix::process::Signal::TERM);
    for _ in 0..100 {
        if !is_zfs_fuse(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    signal_daemon(pid, rustix::process::Signal::KILL);
}

impl ZfsFusePool {
    /// Makes a pool of `size` bytes (needs root and the zfs-fuse package).
    pub fn new(size: u64) -> std::io::Result<ZfsFusePool> {
        // A test that failed while holding it leaves it poisoned: the pool
        // it held was still destroyed by its drop.
        let turn = ONE_POOL_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut daemon = DAEMON.lock().unwrap_or_else(|e| e.into_inner());
            if daemon.started.is_none() && !daemon_answers() {
                daemon.started = Some(start_daemon()?);
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
                count_out();
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
        let mut pool = ZfsFusePool {
            name,
            mountpoint,
            _image_dir: image_dir,
            created: false,
            _turn: turn,
        };
        let out = zpool(&[
            "create",
            "-f",
            "-o",
            "cachefile=none",
            "-o",
            "failmode=continue",
            "-m",
            &mount,
            &pool.name,
            &image_text,
        ])?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "zpool create: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        pool.created = true;
        MOUNTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pool.mountpoint.path().to_path_buf());
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

    /// Destroys the pool, or at least exports it; says what is left if
    /// neither works (a pool left imported would outlive the test).
    fn let_go(&self) {
        // A pool just used can answer "busy" for a moment while zfs-fuse
        // settles its FUSE mounts; try for a while before giving up.
        let mut last = String::new();
        for _ in 0..50 {
            match zpool(&["destroy", "-f", &self.name]) {
                Ok(out) if out.status.success() => return,
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => {
                    last = e.to_string();
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match zpool(&["export", "-f", &self.name]) {
            Ok(out) if out.status.success() => {
                eprintln!(
                    "zfs-fuse pool {} could not be destroyed ({last}); exported instead",
                    self.name
                );
            }
            _ => eprintln!(
                "zfs-fuse pool {} could be neither destroyed nor exported: {last}",
                self.name
            ),
        }
    }
}

/// One pool of this process fewer; stops the daemon with the last one, if
/// this process started it.
fn count_out() {
    let mut daemon = DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    daemon.pools -= 1;
    if daemon.pools == 0
        && let Some(started) = daemon.started.take()
    {
        stop_daemon(started);
    }
}

impl Drop for ZfsFusePool {
    fn drop(&mut self) {
        MOUNTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|mount| mount != self.mountpoint.path());
        if self.created {
            self.let_go();
        }
        // Whatever the daemon did, no FUSE mount of the pool outlives it.
        let _ = crate::mounts::lazy_unmount_beneath(self.mountpoint.path());
        count_out();
    }
}
