//! The device-mapper side: the thin pool and its thin devices, through the
//! Stratis `devicemapper` crate's ioctls (no libdevmapper, no udev needed:
//! the crate skips udev synchronisation where no udev runs, and the kernel's
//! devtmpfs makes the `/dev/dm-N` nodes used here).
//!
//! Names: every device of a home starts with its prefix
//! (`strata-<random>`): `<prefix>-pool`, `<prefix>-data`, `<prefix>-meta`
//! for the pool the driver makes, `<prefix>-<thin id>` for an active thin
//! device.

use std::fs;
use std::path::{Path, PathBuf};

use devicemapper::{
    DM, DataBlocks, DevId, Device, DmError, DmFlags, DmName, DmNameBuf, DmOptions, LinearDev,
    LinearDevTargetParams, LinearTargetParams, Sectors, TargetLine, TargetParams, ThinPoolDev,
    ThinTargetParams, errors,
};
use strata_plugin_abi::{DriverError, ErrorKind, Result};

use crate::records::PoolConfig;

/// The errno inside a device-mapper error, if it carries one.
pub fn errno_of(error: &DmError) -> Option<i32> {
    match error {
        DmError::Core(errors::Error::Ioctl(_, _, _, errno)) => Some(**errno as i32),
        _ => None,
    }
}

/// A device-mapper error as a driver error, saying what was being done.
pub fn dm_error(operation: impl std::fmt::Display, error: &DmError) -> DriverError {
    let kind = match errno_of(error) {
        Some(e) if e == rustix::io::Errno::NXIO.raw_os_error() => ErrorKind::NotFound,
        Some(e) if e == rustix::io::Errno::NOENT.raw_os_error() => ErrorKind::NotFound,
        Some(e) if e == rustix::io::Errno::BUSY.raw_os_error() => ErrorKind::Busy,
        Some(e) if e == rustix::io::Errno::EXIST.raw_os_error() => ErrorKind::AlreadyExists,
        _ => ErrorKind::Other,
    };
    DriverError::from_parts(
        kind,
        errno_of(error),
        format!("{operation}: device-mapper: {error}"),
    )
}

/// Why this machine cannot run a thin pool, if it cannot.
pub fn probe() -> std::result::Result<DM, String> {
    if !Path::new("/dev/mapper/control").exists() {
        return Err("device-mapper is not in this kernel (no /dev/mapper/control)".into());
    }
    let dm = DM::new().map_err(|e| format!("device-mapper cannot be opened: {e}"))?;
    let targets = dm
        .list_versions()
        .map_err(|e| format!("device-mapper lists no targets: {e}"))?;
    if !targets.iter().any(|(name, ..)| name == "thin-pool") {
        return Err(
            "the kernel has no thin-pool target (load the dm-thin-pool module)".to_string(),
        );
    }
    Ok(dm)
}

/// How a thin device was let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deactivated {
    /// It was not active.
    WasNot,
    /// It is gone.
    Removed,
    /// It was busy; the kernel removes it when its last user closes it.
    Deferred,
}

/// A home's thin pool.
pub struct Pool {
    dm: DM,
    prefix: String,
    pool_name: DmNameBuf,
    owned: bool,
}

fn name(text: String) -> Result<DmNameBuf> {
    DmNameBuf::new(text.clone())
        .map_err(|e| DriverError::invalid_input(format!("device-mapper name {text}: {e}")))
}

impl Pool {
    /// The pool of `config`, through `dm` (nothing is activated yet).
    pub fn new(dm: DM, config: &PoolConfig) -> Result<Pool> {
        let pool_name = match &config.external_pool {
            Some(existing) => name(existing.clone())?,
            None => name(format!("{}-pool", config.prefix))?,
        };
        Ok(Pool {
            dm,
            prefix: config.prefix.clone(),
            pool_name,
            owned: config.external_pool.is_none(),
        })
    }

    /// The pool's device-mapper name.
    pub fn name(&self) -> &DmName {
        &self.pool_name
    }

    /// Whether the driver made (and so may take down) the pool.
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    fn info(&self, name: &DmName) -> std::result::Result<Option<Device>, DmError> {
        match self.dm.device_info(&DevId::Name(name)) {
            Ok(info) => Ok(Some(info.device())),
            Err(e) if errno_of(&e) == Some(rustix::io::Errno::NXIO.raw_os_error()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the pool is up with a live table: not there at all, or
    /// there without one (a killed activation's), are both `false`.
    pub fn is_live(&self) -> Result<bool> {
        match self.dm.device_info(&DevId::Name(&self.pool_name)) {
            Ok(info) => Ok(info.flags().contains(DmFlags::DM_ACTIVE_PRESENT)),
            Err(e) if errno_of(&e) == Some(rustix::io::Errno::NXIO.raw_os_error()) => Ok(false),
            Err(e) => Err(dm_error(format!("look for pool {}", &*self.pool_name), &e)),
        }
    }

    /// Detaches loop devices still attached to the pool's files in `dir`
    /// with nothing above them: a kill between attaching one and marking it
    /// to clear itself leaves one attached for good. Called under the pool
    /// lock with the pool and its linear devices down.
    pub fn detach_stale_loops(&self, dir: &Path) {
        let ours: Vec<PathBuf> = ["data", "metadata"]
            .iter()
            .filter_map(|f| dir.join(f).canonicalize().ok())
            .collect();
        let Ok(entries) = fs::read_dir("/sys/block") else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
                continue;
            };
            if !ours.iter().any(|p| Path::new(backing.trim()) == p) {
                continue;
            }
            let node = Path::new("/dev").join(entry.file_name());
            tracing::info!(device = %node.display(), "detaching a loop device a killed start left");
            if let Err(e) = loopdev::LoopDevice::open(&node).and_then(|d| d.detach()) {
                tracing::warn!(device = %node.display(), error = %e, "could not detach");
            }
        }
    }

    /// The pool's device, if it is active.
    pub fn device(&self) -> Result<Option<Device>> {
        self.info(&self.pool_name)
            .map_err(|e| dm_error(format!("look for pool {}", &*self.pool_name), &e))
    }

    /// Activates the driver's own pool on its files in `dir` (made sparse,
    /// `data_size` and `metadata_size` bytes, when missing): each file on a
    /// loop device that clears itself when the pool lets go of it, a linear
    /// device over each, the pool over the two. Fresh (zeroed) metadata is
    /// formatted by the kernel; existing metadata is opened. The caller
    /// holds the pool lock.
    pub fn activate_owned(&self, dir: &Path, config: &PoolConfig) -> Result<Device> {
        let op = format!("activate pool {}", &*self.pool_name);
        let mut linear = Vec::new();
        // Each loop device is held open until the linear device over it
        // holds it: with autoclear it would go at its last close.
        let mut held = Vec::new();
        for (file, size, role) in [
            ("metadata", config.metadata_size, "meta"),
            ("data", config.data_size, "data"),
        ] {
            let path = dir.join(file);
            let made = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .and_then(|f| {
                    if f.metadata()?.len() < size {
                        f.set_len(size)?;
                    }
                    Ok(())
                });
            made.map_err(|e| DriverError::io(format!("{op}: make {}", path.display()), &e))?;
            let (loop_device, device) = attach_loop(&path).map_err(|e| {
                DriverError::io(
                    format!("{op}: attach {} to a loop device", path.display()),
                    &e,
                )
            })?;
            held.push(loop_device);
            let line = TargetLine::new(
                Sectors(0),
                Sectors(size / 512),
                LinearDevTargetParams::Linear(LinearTargetParams::new(device, Sectors(0))),
            );
            let dev_buf = name(format!("{}-{role}", self.prefix))?;
            let dev_name: &DmName = &dev_buf;
            let dev = LinearDev::setup(&self.dm, dev_name, None, vec![line])
                .map_err(|e| dm_error(format!("{op}: linear device {dev_name}"), &e))?;
            linear.push(dev);
        }
        let data = linear.pop().expect("two made");
        let meta = linear.pop().expect("two made");
        // No zeroing of new blocks (a layer's filesystem never reads what
        // it did not write) and errors, not a hang, when the data is full.
        let pool = ThinPoolDev::setup(
            &self.dm,
            &self.pool_name,
            None,
            meta,
            data,
            Sectors(config.block_sectors),
            DataBlocks(1),
            vec!["skip_block_zeroing".into(), "error_if_no_space".into()],
        )
        .map_err(|e| dm_error(&op, &e))?;
        drop(held);
        Ok(devicemapper::DmDevice::device(&pool))
    }

    /// Takes the driver's own pool down (its loop devices clear themselves).
    pub fn deactivate_owned(&self) -> Result<()> {
        for role in ["pool", "data", "meta"] {
            let dev_buf = name(format!("{}-{role}", self.prefix))?;
            let dev_name: &DmName = &dev_buf;
            match self
                .dm
                .device_remove(&DevId::Name(dev_name), DmOptions::default())
            {
                Ok(_) => {}
                Err(e) if errno_of(&e) == Some(rustix::io::Errno::NXIO.raw_os_error()) => {}
                Err(e) => return Err(dm_error(format!("take down {dev_name}"), &e)),
            }
        }
        Ok(())
    }

    /// Sends `message` to the pool.
    pub fn message(&self, message: &str) -> Result<()> {
        self.dm
            .target_msg(&DevId::Name(&self.pool_name), None, message)
            .map(|_| ())
            .map_err(|e| dm_error(format!("pool {}: {message}", &*self.pool_name), &e))
    }

    /// The pool's status line: `<transaction id> <used>/<total> metadata
    /// blocks <used>/<total> data blocks ...`.
    pub fn status_line(&self) -> Result<String> {
        let (_, lines) = self
            .dm
            .table_status(&DevId::Name(&self.pool_name), DmOptions::default())
            .map_err(|e| dm_error(format!("status of pool {}", &*self.pool_name), &e))?;
        lines
            .into_iter()
            .next()
            .map(|(_, _, _, status)| status)
            .ok_or_else(|| DriverError::other(format!("pool {} has no table", &*self.pool_name)))
    }

    /// The pool's transaction id.
    pub fn transaction_id(&self) -> Result<u64> {
        let line = self.status_line()?;
        line.split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                DriverError::other(format!(
                    "pool {}: status '{line}' is not a working thin pool's",
                    &*self.pool_name
                ))
            })
    }

    /// Moves the pool's transaction id on by one from what it is; returns
    /// the new one.
    pub fn next_transaction(&self) -> Result<u64> {
        let current = self.transaction_id()?;
        self.message(&format!("set_transaction_id {current} {}", current + 1))?;
        Ok(current + 1)
    }

    /// The name of thin device `n` when active.
    pub fn thin_name(&self, n: u64) -> Result<DmNameBuf> {
        name(format!("{}-{n}", self.prefix))
    }

    /// The node of thin device `n` if it is active.
    pub fn thin_node(&self, n: u64) -> Result<Option<PathBuf>> {
        Ok(self
            .thin_info(n)?
            .map(|(d, _)| PathBuf::from(format!("/dev/dm-{}", d.minor))))
    }

    /// Thin device `n`'s device and state flags, if the device exists.
    fn thin_info(&self, n: u64) -> Result<Option<(Device, DmFlags)>> {
        Ok(self
            .thin_state(n)?
            .map(|(device, flags, _)| (device, flags)))
    }

    /// Thin device `n`'s device, state flags and open count, if it exists.
    fn thin_state(&self, n: u64) -> Result<Option<(Device, DmFlags, i32)>> {
        let thin_buf = self.thin_name(n)?;
        let thin_name: &DmName = &thin_buf;
        match self.dm.device_info(&DevId::Name(thin_name)) {
            Ok(info) => Ok(Some((info.device(), info.flags(), info.open_count()))),
            Err(e) if errno_of(&e) == Some(rustix::io::Errno::NXIO.raw_os_error()) => Ok(None),
            Err(e) => Err(dm_error(format!("look for {thin_name}"), &e)),
        }
    }

    /// Resumes this home's thin devices left suspended: a process killed
    /// while it snapshotted an active origin (between its suspend and
    /// resume, both under the pool lock, which the caller holds) leaves the
    /// origin suspended, and every read of it would wait for ever.
    pub fn resume_suspended(&self) -> Result<usize> {
        let mut resumed = 0;
        for n in self.active_thins()? {
            if let Some((_, flags)) = self.thin_info(n)?
                && flags.contains(DmFlags::DM_SUSPEND)
            {
                tracing::info!(
                    thin_id = n,
                    "resuming a device a killed snapshot left suspended"
                );
                self.resume_thin(n, "resume a suspended device")?;
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    /// Activates thin device `n` as `size` bytes; returns its node. An
    /// active device is reused. One a killed activation left without a
    /// live table (created, not yet loaded) is made again.
    pub fn activate_thin(&self, n: u64, size: u64, operation: &str) -> Result<PathBuf> {
        match self.thin_info(n)? {
            Some((device, flags)) if flags.contains(DmFlags::DM_ACTIVE_PRESENT) => {
                if flags.contains(DmFlags::DM_SUSPEND) {
                    self.resume_thin(n, operation)?;
                }
                return Ok(PathBuf::from(format!("/dev/dm-{}", device.minor)));
            }
            Some(_) => {
                tracing::info!(thin_id = n, "remaking a device a killed activation left");
                self.deactivate_thin(n, false, operation)?;
            }
            None => {}
        }
        let pool = self.device()?.ok_or_else(|| {
            DriverError::other(format!(
                "{operation}: pool {} is not active",
                &*self.pool_name
            ))
        })?;
        let thin_buf = self.thin_name(n)?;
        let thin_name: &DmName = &thin_buf;
        let id = devicemapper::ThinDevId::new_u64(n)
            .map_err(|e| DriverError::invalid_input(format!("{operation}: thin id {n}: {e}")))?;
        let params = ThinTargetParams::new(pool, id, None);
        let table = [(
            0u64,
            size / 512,
            params.target_type().to_string(),
            params.param_str(),
        )];
        let info = self
            .dm
            .device_create(thin_name, None, DmOptions::default())
            .map_err(|e| dm_error(format!("{operation}: create {thin_name}"), &e))?;
        let loaded = self
            .dm
            .table_load(&DevId::Name(thin_name), &table, DmOptions::default())
            .and_then(|_| {
                self.dm
                    .device_suspend(&DevId::Name(thin_name), DmOptions::default())
            });
        if let Err(e) = loaded {
            let _ = self
                .dm
                .device_remove(&DevId::Name(thin_name), DmOptions::default());
            return Err(dm_error(format!("{operation}: activate {thin_name}"), &e));
        }
        Ok(PathBuf::from(format!("/dev/dm-{}", info.device().minor)))
    }

    /// Lets go of thin device `n`; with `defer`, a busy device is left to the
    /// kernel to remove when its last user closes it.
    pub fn deactivate_thin(&self, n: u64, defer: bool, operation: &str) -> Result<Deactivated> {
        let thin_buf = self.thin_name(n)?;
        let thin_name: &DmName = &thin_buf;
        match self
            .dm
            .device_remove(&DevId::Name(thin_name), DmOptions::default())
        {
            Ok(_) => Ok(Deactivated::Removed),
            Err(e) if errno_of(&e) == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                Ok(Deactivated::WasNot)
            }
            Err(e) if defer && errno_of(&e) == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                self.dm
                    .device_remove(
                        &DevId::Name(thin_name),
                        DmOptions::default().set_flags(DmFlags::DM_DEFERRED_REMOVE),
                    )
                    .map_err(|e| {
                        dm_error(format!("{operation}: defer removing {thin_name}"), &e)
                    })?;
                Ok(Deactivated::Deferred)
            }
            Err(e) => Err(dm_error(format!("{operation}: deactivate {thin_name}"), &e)),
        }
    }

    /// Suspends thin device `n` if active (to snapshot it consistently);
    /// returns whether it was.
    pub fn suspend_thin(&self, n: u64, operation: &str) -> Result<bool> {
        let thin_buf = self.thin_name(n)?;
        let thin_name: &DmName = &thin_buf;
        match self.dm.device_suspend(
            &DevId::Name(thin_name),
            DmOptions::default().set_flags(DmFlags::DM_SUSPEND),
        ) {
            Ok(_) => Ok(true),
            Err(e) if errno_of(&e) == Some(rustix::io::Errno::NXIO.raw_os_error()) => Ok(false),
            Err(e) => Err(dm_error(format!("{operation}: suspend {thin_name}"), &e)),
        }
    }

    /// Resumes thin device `n` after [`Pool::suspend_thin`].
    pub fn resume_thin(&self, n: u64, operation: &str) -> Result<()> {
        let thin_buf = self.thin_name(n)?;
        let thin_name: &DmName = &thin_buf;
        self.dm
            .device_suspend(&DevId::Name(thin_name), DmOptions::default())
            .map(|_| ())
            .map_err(|e| dm_error(format!("{operation}: resume {thin_name}"), &e))
    }

    /// The thin ids of this home's active thin devices nobody holds open
    /// (no mount, no process): what killed activations and unmounts left.
    pub fn idle_thins(&self) -> Result<Vec<u64>> {
        let mut idle = Vec::new();
        for n in self.active_thins()? {
            if let Some((_, _, 0)) = self.thin_state(n)? {
                idle.push(n);
            }
        }
        Ok(idle)
    }

    /// The thin ids of this home's active thin devices.
    pub fn active_thins(&self) -> Result<Vec<u64>> {
        let devices = self
            .dm
            .list_devices()
            .map_err(|e| dm_error("list device-mapper devices", &e))?;
        let prefix = format!("{}-", self.prefix);
        Ok(devices
            .iter()
            .filter_map(|(name, ..)| name.to_string().strip_prefix(&prefix)?.parse().ok())
            .collect())
    }
}

/// Attaches `path` to a free loop device that detaches itself once nothing
/// holds it (the linear device over it, here); returns it, to be held until
/// then, and its device number. Another process may take the free device
/// first: then the next is tried.
fn attach_loop(path: &Path) -> std::io::Result<(loopdev::LoopDevice, Device)> {
    let control = loopdev::LoopControl::open()?;
    let mut last = None;
    for _ in 0..20 {
        let device = control.next_free()?;
        match device.with().autoclear(true).attach(path) {
            Ok(()) => {
                let number = Device {
                    major: device.major()?,
                    minor: device.minor()?,
                };
                return Ok((device, number));
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                last = Some(e)
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free loop device")))
}
