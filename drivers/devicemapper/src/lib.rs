//! # strata-driver-devicemapper
//!
//! Layers as thin devices in a device-mapper thin pool, each with its own
//! filesystem (ext4, or xfs by option), as moby's devicemapper driver kept
//! them. A base thin device with a fresh filesystem is made once per home;
//! a layer is a thin snapshot (`create_snap`) of its parent's device, or of
//! the base device for a layer without a parent. `get` activates the layer's
//! device and mounts it; `put` unmounts and deactivates it.
//!
//! The pool is one the driver makes on two sparse files (data and
//! metadata) attached to loop devices, or an existing pool named by the
//! `thinpooldev` option. The driver's own pool is active while a driver
//! instance runs or a layer is mounted, and taken down by the last
//! instance's `cleanup` when no layer is mounted, so a store nobody uses
//! holds no device-mapper device or loop device.
//!
//! Options (`[storage.options.devicemapper]`): `thinpooldev` (an existing
//! pool's name), `loopdatasize` (default 100G) and `loopmetadatasize`
//! (default 2G) for the driver's own pool's sparse files, `basesize` (the
//! base device, so every layer's default size; default 10G), `fs` (ext4 or
//! xfs), `blocksize` (the pool's data block size, 64K to 1G in 64K steps;
//! default 64K), `mountopt` (any of nodev, nosuid, noexec, noatime,
//! discard). Those that shape the pool take effect when the home's pool is
//! first made; later different values are reported and the recorded ones
//! kept, except `fs`, which is refused (layers already hold the other).
//!
//! The layer `size` storage option gives a layer a bigger device than its
//! parent's, its filesystem grown to fill it; a base layer of a smaller
//! size gets a fresh filesystem of its own. A device of N bytes holds at
//! most N: the driver claims quota.
//!
//! Image layers follow the host's filling contract through the kit's
//! [`image_layer`]: mounted read-only, except the one filling `get`.
//!
//! Crash safety: see [`records`] for how thin ids are never lost, and each
//! operation for the order of its steps.

#![forbid(unsafe_code)]

pub mod filesystem;
pub mod pool;
pub mod records;

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::mount::MountFlags;
use strata_driver_kit::image_layer::{self, Access};
use strata_driver_kit::{DriverOptions, LayerHome, home, lock, mounts};
use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, ErrorKind, GraphDriver, InitArgs,
    KeyValues, MountOptions, Result,
};

use filesystem::Filesystem;
use pool::{Deactivated, Pool};
use records::{BaseDevice, Mark, PoolConfig, PoolRecords, Thin};

/// Where a layer's device is mounted, in its directory.
const TREE: &str = "root";
/// Defaults, as moby's devicemapper driver had them.
const DEFAULT_DATA_SIZE: u64 = 100 << 30;
const DEFAULT_METADATA_SIZE: u64 = 2 << 30;
const DEFAULT_BASE_SIZE: u64 = 10 << 30;
const DEFAULT_BLOCK_SIZE: u64 = 64 << 10;
/// Mount options `mountopt` and a `get` may name, as flags.
const FLAG_OPTIONS: [(&str, MountFlags); 4] = [
    ("nodev", MountFlags::NODEV),
    ("nosuid", MountFlags::NOSUID),
    ("noexec", MountFlags::NOEXEC),
    ("noatime", MountFlags::NOATIME),
];
/// The kernel's thin-pool errno for "no such thin device".
const NO_SUCH_THIN: i32 = rustix::io::Errno::NODATA.raw_os_error();

/// Where a new layer's device comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// An empty thin device: a filesystem is made on it.
    Fresh,
    /// A snapshot of this thin id.
    Snapshot(u64),
}

/// The devicemapper driver.
pub struct DevicemapperDriver {
    layers: LayerHome,
    records: PoolRecords,
    pool: Pool,
    filesystem: Filesystem,
    base: BaseDevice,
    mount_flags: MountFlags,
    mount_data: String,
    /// A shared flock on `pool/users` for this instance's life: `cleanup`
    /// takes the pool down only when it can hold the lock alone.
    users: Mutex<Option<OwnedFd>>,
}

fn not_supported(why: impl std::fmt::Display) -> DriverError {
    DriverError::not_supported(format!("devicemapper: {why}"))
}

/// The mount flags and data of `mountopt`.
fn mount_options(options: &[&str]) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match FLAG_OPTIONS.iter().find(|(name, _)| name == option) {
            Some((_, flag)) => flags |= *flag,
            None => data.push(*option),
        }
    }
    (flags, data.join(","))
}

impl DevicemapperDriver {
    fn pool_lock(&self) -> Result<lock::Held> {
        lock::exclusive_file(&self.records.dir().join("lock"))
            .map_err(|e| DriverError::io("take the pool lock", &e))
    }

    /// Makes sure the pool is active; the caller holds the pool lock.
    fn ensure_pool(&self, config: &PoolConfig) -> Result<()> {
        bring_up(&self.pool, &self.records, config)
    }

    /// Runs `change` on the pool's record under the pool lock, with the
    /// pool active; `change` writes the record itself where its steps need
    /// it written.
    fn with_pool<T>(&self, change: impl FnOnce(&mut PoolConfig) -> Result<T>) -> Result<T> {
        let _pool = self.pool_lock()?;
        let mut config = self
            .records
            .config()?
            .ok_or_else(|| DriverError::other("the pool record is missing"))?;
        self.ensure_pool(&config)?;
        change(&mut config)
    }

    /// Makes a new thin id in the pool, from `source`. Steps, under the pool
    /// lock: (1) the id is taken from the record and the record written, so
    /// no later maker hands it out again; (2) the id is written into the
    /// maker's staging directory (when there is one) and (3) noted pending;
    /// (4) the pool makes it; (5) the pool's transaction id moves on and is
    /// recorded. A kill after (3) leaves a pending id the next sweep deletes
    /// (unless a live maker's staging directory names it); a kill before
    /// leaves nothing in the pool.
    ///
    /// A pool that refuses the id as taken (a shared pool named by
    /// `thinpooldev` whose other users made it) gets the next one; a refused
    /// id's mark goes at once, so no sweep ever deletes another's device.
    fn new_thin(
        &self,
        staging: Option<&Path>,
        source: Source,
        size: u64,
        op: &str,
    ) -> Result<(Thin, Mark)> {
        self.with_pool(|config| {
            let mut tries = 0;
            loop {
                let thin = Thin {
                    id: config.next_thin_id,
                    size,
                };
                config.next_thin_id += 1;
                self.records.write_config(config)?;
                if let Some(dir) = staging {
                    thin.write(dir).map_err(|e| {
                        DriverError::io(format!("{op}: record its thin device"), &e)
                    })?;
                }
                let mark = self.records.add_pending(thin.id)?;
                let made = match source {
                    Source::Fresh => self.pool.message(&format!("create_thin {}", thin.id)),
                    Source::Snapshot(origin) => {
                        // An active origin is suspended (its filesystem
                        // frozen) around the snapshot, so the snapshot is
                        // consistent; activations happen under the same
                        // lock, so none comes between.
                        let suspended = self.pool.suspend_thin(origin, op)?;
                        let made = self
                            .pool
                            .message(&format!("create_snap {} {origin}", thin.id));
                        if suspended {
                            self.pool.resume_thin(origin, op)?;
                        }
                        made
                    }
                };
                match made {
                    Ok(()) => {
                        config.transaction_id = self.pool.next_transaction()?;
                        self.records.write_config(config)?;
                        return Ok((thin, mark));
                    }
                    Err(e) => {
                        // Refused: the pool holds nothing of ours by this id.
                        self.records.remove_mark(&mark);
                        if e.kind() == ErrorKind::AlreadyExists && tries < 64 {
                            tries += 1;
                            tracing::debug!(thin_id = thin.id, "thin id taken in the pool; next");
                            continue;
                        }
                        return Err(e.context(op));
                    }
                }
            }
        })
    }

    /// Deletes thin id `n` from the pool (deactivated first) and takes it
    /// off the pending list; a busy device stays pending, deleted by a later
    /// sweep (deferred deletion). The caller has noted it pending.
    fn delete_thin(&self, n: u64, op: &str) -> Result<()> {
        self.with_pool(|config| {
            if self.pool.deactivate_thin(n, true, op)? == Deactivated::Deferred {
                tracing::info!(
                    thin_id = n,
                    "device busy: its removal and deletion are deferred"
                );
                return Ok(());
            }
            match self.pool.message(&format!("delete {n}")) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(NO_SUCH_THIN) => {}
                Err(e) if e.kind() == ErrorKind::Busy => {
                    tracing::info!(thin_id = n, "thin device busy: its deletion is deferred");
                    return Ok(());
                }
                Err(e) => return Err(e.context(op)),
            }
            config.transaction_id = self.pool.next_transaction()?;
            self.records.write_config(config)?;
            self.records.remove_pending(n)
        })
    }

    /// The thin ids some layer, staging directory or the base device owns.
    /// Anything unreadable (other than a directory or record that is not
    /// there) fails the whole answer: a sweep must never take an id whose
    /// owner it could not read for one nobody owns.
    fn owned_thin_ids(&self) -> Result<std::collections::HashSet<u64>> {
        let failed = |e: std::io::Error| DriverError::io("read which thin ids layers own", &e);
        let mut owned = std::collections::HashSet::from([self.base.thin_id]);
        for dir in [self.layers.layers_dir(), self.layers.staging_dir()] {
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(failed(e)),
            };
            for entry in entries {
                let entry = entry.map_err(failed)?;
                let text = match fs::read_to_string(entry.path().join(records::THIN_FILE)) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e)
                        if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(failed(e)),
                };
                if let Some(n) = text.split_whitespace().next().and_then(|n| n.parse().ok()) {
                    owned.insert(n);
                }
            }
        }
        Ok(owned)
    }

    /// Deletes pending thin ids nobody owns (what killed makers and removals
    /// left, and deferred deletions whose device is now free), and
    /// reconciles the recorded transaction id with the pool's. Under the
    /// home lock, so no placement or removal moves an id between owners
    /// while they are read.
    fn sweep(&self) -> Result<usize> {
        let _home = self.layers.lock()?;
        let pending = self.records.pending()?;
        let owned = if pending.is_empty() {
            Default::default()
        } else {
            self.owned_thin_ids()?
        };
        let mut deleted = 0;
        self.with_pool(|config| {
            self.records.collect_temporaries();
            for &n in pending.keys().filter(|n| !owned.contains(n)) {
                tracing::info!(thin_id = n, "deleting a thin device no layer owns");
                let op = format!("sweep thin id {n}");
                let gone = match self.pool.deactivate_thin(n, false, &op) {
                    Err(e) if e.kind() == ErrorKind::Busy => false,
                    Err(e) => return Err(e),
                    Ok(_) => match self.pool.message(&format!("delete {n}")) {
                        Ok(()) => true,
                        Err(e) if e.errno() == Some(NO_SUCH_THIN) => true,
                        Err(e) if e.kind() == ErrorKind::Busy => false,
                        Err(e) => return Err(e),
                    },
                };
                if gone {
                    self.records.remove_pending(n)?;
                    deleted += 1;
                } else {
                    tracing::debug!(thin_id = n, "still busy: deletion stays deferred");
                }
            }
            let in_pool = self.pool.transaction_id()?;
            if deleted > 0 {
                config.transaction_id = self.pool.next_transaction()?;
                self.records.write_config(config)?;
            } else if in_pool != config.transaction_id {
                tracing::info!(
                    pool = in_pool,
                    recorded = config.transaction_id,
                    "the pool's transaction id differs from the record (an interrupted change); \
                     recording the pool's"
                );
                config.transaction_id = in_pool;
                self.records.write_config(config)?;
            }
            Ok(())
        })?;
        Ok(deleted)
    }

    /// Makes the filesystem on new thin device `thin` (activated for it),
    /// mounted on `at` while it is emptied.
    fn make_filesystem(&self, thin: Thin, at: &Path, op: &str) -> Result<()> {
        let node = self.pool.activate_thin(thin.id, thin.size, op)?;
        let made = self.filesystem.make_empty(&node, at, op);
        let deactivated = self.pool.deactivate_thin(thin.id, false, op);
        made.and(deactivated.map(|_| ()))
    }

    /// Grows the filesystem on `thin` (bigger than its origin's) to fill it:
    /// mounted on `at` for the time it takes.
    fn grow_filesystem(&self, thin: Thin, at: &Path, op: &str) -> Result<()> {
        let node = self.pool.activate_thin(thin.id, thin.size, op)?;
        let grown = self
            .filesystem
            .mount(&node, at, MountFlags::empty(), "", op)
            .and_then(|()| {
                let grown = self.filesystem.grow(&node, at, op);
                let unmounted = filesystem::unmount(at, op);
                grown.and(unmounted)
            });
        let deactivated = self.pool.deactivate_thin(thin.id, false, op);
        grown.and(deactivated.map(|_| ()))
    }

    /// Builds the new layer's device in the staging directory `dir`.
    fn build(
        &self,
        id: &str,
        dir: &Path,
        parent: Option<&str>,
        size: Option<u64>,
        read_write: bool,
    ) -> Result<(Thin, Mark)> {
        let op = format!("create layer {id}");
        let (source, origin_size) = match parent {
            Some(parent) => {
                let parent_dir = self
                    .layers
                    .existing(parent, "create")
                    .map_err(|e| e.context(format!("{op}: parent {parent}")))?;
                let origin = Thin::read(&parent_dir, parent, "create a child of")?;
                (Source::Snapshot(origin.id), origin.size)
            }
            None => match size {
                Some(size) if size < self.base.size => (Source::Fresh, size),
                _ => (Source::Snapshot(self.base.thin_id), self.base.size),
            },
        };
        let size = size.unwrap_or(origin_size);
        if size < origin_size {
            return Err(DriverError::invalid_input(format!(
                "{op}: size {size} is smaller than its parent's device ({origin_size} bytes); a \
                 thin snapshot cannot shrink"
            )));
        }
        let tree = dir.join(TREE);
        fs::create_dir(&tree)
            .map_err(|e| DriverError::io(format!("{op}: create its mount point"), &e))?;
        home::set_mode(&tree, 0o755)
            .map_err(|e| DriverError::io(format!("{op}: set its mount point's mode"), &e))?;
        if !read_write {
            image_layer::mark_image(dir, id, "create")?;
        }
        let (thin, mark) = self.new_thin(Some(dir), source, size, &op)?;
        let filled = match source {
            Source::Fresh => self.make_filesystem(thin, &tree, &op),
            Source::Snapshot(_) if size > origin_size => self.grow_filesystem(thin, &tree, &op),
            Source::Snapshot(_) => Ok(()),
        };
        if let Err(e) = filled {
            if let Err(undo) = self.delete_thin(thin.id, &op) {
                tracing::warn!(error = %undo, "could not take back a failed create");
            }
            return Err(e);
        }
        Ok((thin, mark))
    }

    /// Makes the base device if the record has none; under the pool lock.
    fn ensure_base(
        options: &InitOptions,
        records: &PoolRecords,
        pool: &Pool,
    ) -> Result<BaseDevice> {
        let _pool = lock::exclusive_file(&records.dir().join("lock"))
            .map_err(|e| DriverError::io("take the pool lock", &e))?;
        let at = records.dir().join("mnt");
        if mounts::is_mount_point(&at).unwrap_or(false) {
            filesystem::unmount(&at, "take down a killed start's mount")?;
        }
        let mut config = records
            .config()?
            .ok_or_else(|| DriverError::other("the pool record is missing"))?;
        if let Some(base) = config.base {
            return Ok(base);
        }
        let op = "make the base device";
        bring_up(pool, records, &config)?;
        // The same steps as a layer's thin id (see `new_thin`): a kill
        // leaves a pending id the next start deletes, then makes the base
        // again.
        let base = BaseDevice {
            thin_id: config.next_thin_id,
            size: options.base_size,
        };
        config.next_thin_id += 1;
        records.write_config(&config)?;
        let mark = records.add_pending(base.thin_id)?;
        if let Err(e) = pool.message(&format!("create_thin {}", base.thin_id)) {
            // Refused: nothing of ours by that id (a shared pool's other
            // user may hold it: the next start takes the next id).
            records.remove_mark(&mark);
            return Err(e.context(op));
        }
        config.transaction_id = pool.next_transaction()?;
        records.write_config(&config)?;
        let node = pool.activate_thin(base.thin_id, base.size, op)?;
        // Mounted, while it is emptied, in the pool's directory: a mount a
        // kill leaves there is taken down at the next start.
        let at = records.dir().join("mnt");
        let made = fs::create_dir_all(&at)
            .map_err(|e| DriverError::io(format!("{op}: create {}", at.display()), &e))
            .and_then(|()| options.filesystem.make_empty(&node, &at, op));
        pool.deactivate_thin(base.thin_id, false, op)?;
        made?;
        config.base = Some(base);
        records.write_config(&config)?;
        records.remove_mark(&mark);
        tracing::debug!(
            thin_id = base.thin_id,
            size = base.size,
            "made the base device"
        );
        Ok(base)
    }

    /// Takes the driver's own pool down if no other instance runs and no
    /// layer is mounted (see [`release_if_alone`]).
    fn release_pool(&self) -> Result<()> {
        if !self.pool.is_owned() {
            return Ok(());
        }
        let _pool = self.pool_lock()?;
        let users = self.users.lock().expect("not poisoned");
        match users.as_ref() {
            Some(fd) => release_if_alone(&self.pool, fd),
            None => Ok(()),
        }
    }
}

/// Makes sure the pool is up with a live table, and resumes devices a
/// killed snapshot left suspended; the caller holds the pool lock. Every
/// suspend happens under that lock, so a suspended device seen under it is
/// a dead process's: resumed here, before anything waits on it (an unmount
/// of its filesystem would wait for ever, holding whatever lock its caller
/// holds).
fn bring_up(pool: &Pool, records: &PoolRecords, config: &PoolConfig) -> Result<()> {
    if !pool.is_live()? {
        if !pool.is_owned() {
            return Err(DriverError::not_found(format!(
                "thin pool {} is not active",
                pool.name()
            )));
        }
        tracing::debug!(pool = %pool.name(), "activating the thin pool");
        // What a killed activation or take-down left goes first: a pool
        // without a table, linear devices, loop devices not clearing
        // themselves.
        pool.deactivate_owned()?;
        pool.detach_stale_loops(records.dir());
        if let Err(e) = pool.activate_owned(records.dir(), config) {
            // Whatever part came up goes again (its loop devices with it).
            let _ = pool.deactivate_owned();
            return Err(e);
        }
    }
    pool.resume_suspended()?;
    Ok(())
}

/// Takes the driver's own pool down if `users` (this instance's shared
/// lock) can become exclusive, so no other instance runs: first thin
/// devices nobody holds open (what killed activations and unmounts left),
/// then, if no thin device is active (a layer mounted), the pool itself.
/// The caller holds the pool lock.
fn release_if_alone(pool: &Pool, users: &OwnedFd) -> Result<()> {
    if !pool.is_owned() {
        return Ok(());
    }
    // Converting a flock may drop it first; it is taken shared again in
    // every case.
    let alone = rustix::fs::flock(users, FlockOperation::NonBlockingLockExclusive).is_ok();
    let result = (|| {
        if !alone {
            return Ok(());
        }
        for n in pool.idle_thins()? {
            tracing::debug!(thin_id = n, "deactivating an idle thin device");
            pool.deactivate_thin(n, false, "release the idle pool")?;
        }
        if pool.active_thins()?.is_empty() {
            if pool.device()?.is_some() {
                tracing::debug!(pool = %pool.name(), "taking the idle thin pool down");
            }
            pool.deactivate_owned()?;
        }
        Ok(())
    })();
    rustix::fs::flock(users, FlockOperation::LockShared)
        .map_err(|e| DriverError::io("take the pool's users lock", &e.into()))?;
    result
}

/// The init options that shape a new pool.
struct InitOptions {
    external_pool: Option<String>,
    data_size: u64,
    metadata_size: u64,
    base_size: u64,
    block_size: u64,
    filesystem: Filesystem,
}

impl InitOptions {
    fn read(options: &DriverOptions) -> Result<InitOptions> {
        let filesystem = options.choice("fs", &["ext4", "xfs"], "ext4")?;
        let block_size = options.size("blocksize")?.unwrap_or(DEFAULT_BLOCK_SIZE);
        if block_size % (64 << 10) != 0 || !(64 << 10..=1 << 30).contains(&block_size) {
            return Err(DriverError::invalid_input(format!(
                "devicemapper driver option 'blocksize' must be 64K to 1G in steps of 64K, not \
                 {block_size} bytes"
            )));
        }
        Ok(InitOptions {
            external_pool: options.text("thinpooldev").map(str::to_string),
            data_size: options.size("loopdatasize")?.unwrap_or(DEFAULT_DATA_SIZE),
            metadata_size: options
                .size("loopmetadatasize")?
                .unwrap_or(DEFAULT_METADATA_SIZE),
            base_size: options.size("basesize")?.unwrap_or(DEFAULT_BASE_SIZE),
            block_size,
            filesystem: Filesystem::parse(filesystem).expect("a choice of the two"),
        })
    }

    fn new_config(&self) -> PoolConfig {
        PoolConfig {
            prefix: format!("strata-{}", &home::random_hex()[..12]),
            external_pool: self.external_pool.clone(),
            data_size: self.data_size,
            metadata_size: self.metadata_size,
            block_sectors: self.block_size / 512,
            filesystem: self.filesystem.name().to_string(),
            base: None,
            next_thin_id: 1,
            transaction_id: 0,
        }
    }
}

impl DriverPlugin for DevicemapperDriver {
    const NAME: &'static str = "devicemapper";
    const DESCRIPTION: &'static str =
        "a thin device per layer in a device-mapper thin pool, each with its own filesystem";

    fn init(args: &InitArgs) -> Result<Self> {
        let options = DriverOptions::new(
            "devicemapper driver option",
            &args.options,
            &[
                "thinpooldev",
                "loopdatasize",
                "loopmetadatasize",
                "basesize",
                "fs",
                "blocksize",
                "mountopt",
            ],
        )?;
        let mut wanted = InitOptions::read(&options)?;
        let mount_list = options.list(
            "mountopt",
            &["nodev", "nosuid", "noexec", "noatime", "discard"],
            "",
        )?;
        // Each refusal comes before anything is written, so that automatic
        // selection moves on leaving the graph root as it was.
        let dm = pool::probe().map_err(not_supported)?;
        if wanted.external_pool.is_none() && !Path::new("/dev/loop-control").exists() {
            return Err(not_supported(
                "no loop devices (/dev/loop-control is missing) for the driver's own pool; name \
                 an existing pool with thinpooldev",
            ));
        }
        fs::create_dir_all(&args.home).map_err(|e| {
            DriverError::io(
                format!("init devicemapper: create {}", args.home.display()),
                &e,
            )
        })?;
        let layers = LayerHome::open(&args.home)?;
        let records = PoolRecords::open(&args.home).map_err(|e| {
            DriverError::io("init devicemapper: create the pool's record directory", &e)
        })?;
        let users = rustix::fs::open(
            records.dir().join("users"),
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .and_then(|fd| rustix::fs::flock(&fd, FlockOperation::LockShared).map(|()| fd))
        .map_err(|e| DriverError::io("init devicemapper: take the pool's users lock", &e.into()))?;
        let config = {
            let _pool = lock::exclusive_file(&records.dir().join("lock"))
                .map_err(|e| DriverError::io("take the pool lock", &e))?;
            match records.config()? {
                Some(config) => config,
                None => {
                    let config = wanted.new_config();
                    records.write_config(&config)?;
                    config
                }
            }
        };
        if config.filesystem != wanted.filesystem.name() {
            return Err(DriverError::invalid_input(format!(
                "devicemapper driver option 'fs': this home's layers are {}, not {}",
                config.filesystem,
                wanted.filesystem.name()
            )));
        }
        if config.external_pool != wanted.external_pool {
            return Err(DriverError::invalid_input(format!(
                "devicemapper driver option 'thinpooldev': this home's layers are in {}, not {}",
                config
                    .external_pool
                    .as_deref()
                    .unwrap_or("the driver's own pool"),
                wanted
                    .external_pool
                    .as_deref()
                    .unwrap_or("the driver's own pool"),
            )));
        }
        if let Some(base) = config.base
            && base.size != wanted.base_size
            && options.text("basesize").is_some()
        {
            tracing::warn!(
                recorded = base.size,
                asked = wanted.base_size,
                "basesize applies when a home's pool is made; the recorded one is kept"
            );
        }
        wanted.base_size = config.base.map_or(wanted.base_size, |b| b.size);
        let pool = Pool::new(dm, &config)?;
        let base = match Self::ensure_base(&wanted, &records, &pool) {
            Ok(base) => base,
            Err(e) => {
                // A pool brought up for nothing goes again if nobody else
                // uses it (a refusal leaves no device behind).
                if let Ok(_pool) = lock::exclusive_file(&records.dir().join("lock")) {
                    let _ = release_if_alone(&pool, &users);
                }
                return Err(e);
            }
        };
        let (mount_flags, mount_data) = mount_options(&mount_list);
        let driver = DevicemapperDriver {
            layers,
            records,
            pool,
            filesystem: wanted.filesystem,
            base,
            mount_flags,
            mount_data,
            users: Mutex::new(Some(users)),
        };
        driver.layers.collect_leftovers();
        driver.sweep()?;
        tracing::debug!(pool = %driver.pool.name(), "devicemapper driver ready");
        Ok(driver)
    }
}

impl GraphDriver for DevicemapperDriver {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn status(&self) -> KeyValues {
        let mut status = KeyValues::new();
        status.push("layers", self.layers.layers_dir().display().to_string());
        status.push("pool", self.pool.name().to_string());
        if self.pool.is_owned() {
            status.push(
                "pool files",
                format!(
                    "{0}/data, {0}/metadata (sparse, on loop devices)",
                    self.records.dir().display()
                ),
            );
        }
        match self.pool.status_line() {
            Ok(line) => {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.len() >= 3 {
                    status.push("transaction id", words[0].to_string());
                    status.push("metadata blocks used/total", words[1].to_string());
                    status.push("data blocks used/total", words[2].to_string());
                }
                if let Some(mode) = words.get(4) {
                    status.push("pool mode", mode.to_string());
                }
            }
            Err(_) => status.push("pool state", "not active (activated on first use)"),
        }
        status.push(
            "base device",
            format!(
                "thin id {}, {} bytes, {}",
                self.base.thin_id,
                self.base.size,
                self.filesystem.name()
            ),
        );
        let deferred = self.records.pending().unwrap_or_default();
        status.push(
            "deferred deletions",
            if deferred.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "thin ids {} (busy; deleted once free)",
                    deferred
                        .keys()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        );
        let mut mount = mount_names(self.mount_flags);
        if !self.mount_data.is_empty() {
            mount.push(self.mount_data.clone());
        }
        status.push(
            "mount options",
            if mount.is_empty() {
                "none".to_string()
            } else {
                mount.join(",")
            },
        );
        status
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::READ_ONLY_LAYERS | Capabilities::QUOTA | Capabilities::DEFERRED_REMOVAL
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let dir = self.layers.existing(id, "metadata of")?;
        let thin = Thin::read(&dir, id, "metadata of")?;
        let mut values = KeyValues::new();
        values.push("thin id", thin.id.to_string());
        values.push("device size", thin.size.to_string());
        values.push("device name", self.pool.thin_name(thin.id)?.to_string());
        values.push(
            "device",
            self.pool
                .thin_node(thin.id)?
                .map_or("not active".to_string(), |n| n.display().to_string()),
        );
        values.push("path", dir.join(TREE).display().to_string());
        values.push("image layer", image_layer::is_image(&dir).to_string());
        Ok(values)
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        let op = || format!("create layer {id}");
        self.layers.path_of(id, "create")?;
        let storage = DriverOptions::new(
            "devicemapper storage option",
            &options.storage_opts,
            &["size"],
        )
        .map_err(|e| e.context(op()))?;
        let size = storage.size("size").map_err(|e| e.context(op()))?;
        if self.layers.exists(id) {
            return Err(DriverError::already_exists(format!(
                "{}: layer exists",
                op()
            )));
        }
        let staging = self.layers.stage(id, "create")?;
        let (thin, mark) = self.build(id, staging.path(), parent, size, options.read_write)?;
        // Placed, the layer owns its thin id; only then is it taken off the
        // pending list (a kill between leaves a pending id a layer owns,
        // which the sweep leaves alone).
        if let Err(e) = self.layers.place(staging, id, parent, "create") {
            if let Err(undo) = self.delete_thin(thin.id, &op()) {
                tracing::warn!(error = %undo, "could not take back a failed create");
            }
            return Err(e);
        }
        self.records.remove_mark(&mark);
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<()> {
        let op = format!("remove layer {id}");
        let dir = self.layers.existing(id, "remove")?;
        let thin = Thin::read(&dir, id, "remove")?;
        // Steps: (1) the thin id is noted pending while the layer still
        // owns it; (2) under the kit's locks the layer's filesystem is
        // unmounted and its device deactivated (a busy device is left to the
        // kernel's deferred removal) and the layer renamed away; (3) the
        // thin id is deleted from the pool and taken off the pending list. A
        // kill after (2) leaves a pending id no layer owns, which the next
        // sweep deletes; deleting first would leave, killed before the
        // rename, a layer whose device is gone.
        let mark = self.records.add_pending(thin.id)?;
        let removed = self.layers.remove(id, "remove", |dir| {
            let tree = dir.join(TREE);
            if is_mounted(&tree, &op)? {
                filesystem::unmount(&tree, &op)?;
            }
            if self.pool.deactivate_thin(thin.id, true, &op)? == Deactivated::Deferred {
                tracing::info!(layer = id, "device busy: its removal is deferred");
            }
            Ok(())
        });
        if let Err(e) = removed {
            if self.layers.exists(id) {
                // Still the layer's: this removal's mark alone goes.
                self.records.remove_mark(&mark);
            }
            return Err(e);
        }
        self.delete_thin(thin.id, &op)
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        let dir = self.layers.existing(id, "mount")?;
        let mut flags = self.mount_flags;
        let access =
            image_layer::access(&dir, id, &options.options, "devicemapper", true, |option| {
                match FLAG_OPTIONS.iter().find(|(name, _)| *name == option) {
                    Some((_, flag)) => {
                        flags |= *flag;
                        true
                    }
                    None => false,
                }
            })?;
        if !access.writable() {
            flags |= MountFlags::RDONLY;
        }
        let thin = Thin::read(&dir, id, "mount")?;
        let tree = dir.join(TREE);
        let op = format!("mount layer {id}");
        let _layer = self.layers.lock_layer(id, "mount")?;
        if is_mounted(&tree, &op)? {
            return Ok(tree);
        }
        // Activated under the pool lock, which every snapshot holds: an
        // origin is never activated (nor a snapshot's suspend undone)
        // between a snapshot's suspend and its `create_snap`.
        let node = self.with_pool(|_| self.pool.activate_thin(thin.id, thin.size, &op))?;
        if let Err(e) = self
            .filesystem
            .mount(&node, &tree, flags, &self.mount_data, &op)
        {
            let _ = self.pool.deactivate_thin(thin.id, false, &op);
            return Err(e);
        }
        if access == Access::Fill {
            tracing::debug!(layer = id, "image layer mounted read-write to be filled");
        }
        Ok(tree)
    }

    fn put(&self, id: &str) -> Result<()> {
        let dir = self.layers.existing(id, "unmount")?;
        let thin = Thin::read(&dir, id, "unmount")?;
        let tree = dir.join(TREE);
        let op = format!("unmount layer {id}");
        let _layer = self.layers.lock_layer(id, "unmount")?;
        if is_mounted(&tree, &op)? {
            filesystem::unmount(&tree, &op)?;
        }
        // An image layer is sealed by its mark alone (every later `get`
        // mounts it read-only), before anything that may fail.
        image_layer::seal(&dir, id, || Ok(()))?;
        // A device something else still holds open goes when it closes.
        self.pool.deactivate_thin(thin.id, true, &op)?;
        Ok(())
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Ok(self.layers.exists(id))
    }

    fn list(&self) -> Result<Vec<String>> {
        self.layers.list()
    }

    fn cleanup(&self) -> Result<()> {
        self.layers.collect_leftovers();
        if let Err(e) = self.sweep() {
            tracing::debug!(error = %e, "could not sweep pending thin ids");
        }
        self.release_pool()
    }
}

impl Drop for DevicemapperDriver {
    /// A host may drop an instance without calling `cleanup`; the idle pool
    /// is let go either way.
    fn drop(&mut self) {
        if let Err(e) = self.release_pool() {
            tracing::debug!(error = %e, "could not take the idle pool down");
        }
    }
}

/// Whether a layer's tree is mounted on.
fn is_mounted(tree: &Path, op: &str) -> Result<bool> {
    mounts::is_mount_point(tree)
        .map_err(|e| DriverError::io(format!("{op}: look for its mount"), &e))
}

/// The names of the flag mount options in `flags`.
fn mount_names(flags: MountFlags) -> Vec<String> {
    FLAG_OPTIONS
        .iter()
        .filter(|(_, flag)| flags.contains(*flag))
        .map(|(name, _)| name.to_string())
        .collect()
}

strata_plugin_abi::export_driver!(DevicemapperDriver);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let (flags, data) = mount_options(&["nodev", "discard", "noatime"]);
        assert_eq!(flags, MountFlags::NODEV | MountFlags::NOATIME);
        assert_eq!(data, "discard");
        assert_eq!(mount_names(flags), vec!["nodev", "noatime"]);
    }

    #[test]
    fn block_sizes_outside_the_kernels_rule_are_refused() {
        let mut values = KeyValues::new();
        values.push("blocksize", "96K");
        let options = DriverOptions::new("devicemapper driver option", &values, &["blocksize"])
            .expect("known");
        let error = InitOptions::read(&options).err().expect("refused");
        assert!(error.message().contains("64K to 1G"), "{error}");
    }
}
