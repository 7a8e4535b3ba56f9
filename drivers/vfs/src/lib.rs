//! # strata-driver-vfs
//!
//! The driver that works on any filesystem: every layer is a plain directory
//! and a child starts as a full copy of its parent. Copies share extents
//! (FICLONE) where the filesystem allows it (btrfs, xfs), so there a child
//! costs metadata only; elsewhere data is copied in the kernel.
//!
//! Layout of the home:
//!
//! ```text
//! <home>/dir/<id>/            a layer's tree
//! <home>/dir/.new-<id>-<n>/   a layer being created (renamed into place when whole)
//! <home>/dir/.gone-<id>-<n>/  a layer being removed (renamed away first)
//! <home>/parents/<id>         the id of the layer's parent, for layers that have one
//! ```
//!
//! A crash leaves at most a `.new-` or `.gone-` directory, removed at the next
//! start; a layer is never seen half-copied or half-deleted.

pub mod copy;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, ErrorKind, GraphDriver, InitArgs,
    KeyValues, MountOptions, Result, is_valid_layer_id, validate_layer_id,
};

use crate::copy::{CopyOptions, DataCopy};

/// Options accepted in `[storage.options.vfs]`.
const DRIVER_OPTIONS: &[&str] = &["reflink", "ignore_chown_errors"];

/// How the driver duplicates file data, from the `reflink` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReflinkPolicy {
    /// Reflink when the home's filesystem can, copy otherwise (the default).
    Auto,
    /// Refuse to start unless the home's filesystem can reflink.
    Always,
    /// Always copy bytes.
    Never,
}

pub struct VfsDriver {
    home: PathBuf,
    layers: PathBuf,
    copy: CopyOptions,
    reflink_policy: ReflinkPolicy,
    /// Makes staging directory names unique within this process.
    sequence: AtomicU64,
    parents: PathBuf,
    /// Held while a layer is put into place or taken away, so a parent is
    /// never removed between its child's check and the child's appearance.
    placement: Mutex<()>,
}

impl VfsDriver {
    fn layer_dir(&self, id: &str) -> PathBuf {
        self.layers.join(id)
    }

    fn staging_dir(&self, prefix: &str, id: &str) -> PathBuf {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.layers
            .join(format!(".{prefix}-{id}-{}-{n}", std::process::id()))
    }

    fn existing_layer(&self, id: &str, operation: &str) -> Result<PathBuf> {
        validate_layer_id(id).map_err(|e| e.context(format!("{operation} layer {id}")))?;
        let dir = self.layer_dir(id);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => Ok(dir),
            Ok(_) => Err(DriverError::other(format!(
                "{operation} layer {id}: {} is not a directory",
                dir.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DriverError::not_found(format!(
                "{operation} layer {id}: no such layer"
            ))),
            Err(e) => Err(DriverError::io(format!("{operation} layer {id}"), &e)),
        }
    }

    fn parent_record(&self, id: &str) -> PathBuf {
        self.parents.join(id)
    }

    fn record_parent(&self, id: &str, parent: &str) -> Result<()> {
        let temp = self.parents.join(format!(".{id}.new"));
        fs::write(&temp, parent)
            .and_then(|()| fs::rename(&temp, self.parent_record(id)))
            .map_err(|e| DriverError::io(format!("create layer {id}: record its parent"), &e))
    }

    /// The layers whose parent is `id`.
    fn children_of(&self, id: &str) -> Result<Vec<String>> {
        let mut children = Vec::new();
        let entries = fs::read_dir(&self.parents)
            .map_err(|e| DriverError::io(format!("read {}", self.parents.display()), &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DriverError::io("read parent records", &e))?;
            let Some(child) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if is_valid_layer_id(&child)
                && fs::read_to_string(entry.path()).is_ok_and(|p| p == id)
                && self.layer_dir(&child).is_dir()
            {
                children.push(child);
            }
        }
        children.sort();
        Ok(children)
    }

    /// Removes what interrupted operations left: staging directories whose
    /// process is gone (`.new-<id>-<pid>-<n>`, `.gone-<id>-<pid>-<n>`) and
    /// parent records of layers that are not there. A live process's staging
    /// directories, this one's included, are left to it.
    fn remove_leftovers(&self) -> Result<()> {
        let _placing = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let entries = fs::read_dir(&self.layers)
            .map_err(|e| DriverError::io(format!("read {}", self.layers.display()), &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DriverError::io("read layer directory", &e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let staging = name.starts_with(".new-") || name.starts_with(".gone-");
            if staging && !staging_owner_alive(&name) {
                tracing::info!(path = %entry.path().display(), "removing what an interrupted create or remove left");
                fs::remove_dir_all(entry.path()).map_err(|e| {
                    DriverError::io(format!("remove leftover {}", entry.path().display()), &e)
                })?;
            }
        }
        let records = fs::read_dir(&self.parents)
            .map_err(|e| DriverError::io(format!("read {}", self.parents.display()), &e))?;
        for entry in records {
            let entry = entry.map_err(|e| DriverError::io("read parent records", &e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let orphan = !name.starts_with('.') && !self.layer_dir(&name).is_dir();
            if orphan {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// Whether the process named in a staging directory's name still runs (its
/// operation may still be under way). Unparsable names count as dead.
fn staging_owner_alive(name: &str) -> bool {
    let mut parts = name.rsplitn(3, '-');
    let _sequence = parts.next();
    let Some(pid) = parts.next().and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    if pid == std::process::id() as i32 {
        return true;
    }
    match rustix::process::Pid::from_raw(pid) {
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

impl DriverPlugin for VfsDriver {
    const NAME: &'static str = "vfs";
    const DESCRIPTION: &'static str =
        "plain directories, a full copy per layer (reflinked where the filesystem can)";

    fn init(args: &InitArgs) -> Result<Self> {
        let what = "vfs driver option";
        args.options.reject_unknown(what, DRIVER_OPTIONS)?;
        let reflink_policy = match args.options.get("reflink") {
            None | Some("auto") => ReflinkPolicy::Auto,
            Some("always") => ReflinkPolicy::Always,
            Some("never") => ReflinkPolicy::Never,
            Some(other) => {
                return Err(DriverError::invalid_input(format!(
                    "{what} 'reflink' must be auto, always or never, not '{other}'"
                )));
            }
        };
        let ignore_chown_errors = args
            .options
            .get_bool(what, "ignore_chown_errors")?
            .unwrap_or(false);

        let layers = args.home.join("dir");
        let parents = args.home.join("parents");
        for dir in [&layers, &parents] {
            fs::create_dir_all(dir)
                .map_err(|e| DriverError::io(format!("init vfs: create {}", dir.display()), &e))?;
        }

        let can_reflink = copy::reflink_works_in(&layers);
        let data = match (reflink_policy, can_reflink) {
            (ReflinkPolicy::Never, _) | (ReflinkPolicy::Auto, false) => DataCopy::Full,
            (_, true) => DataCopy::Reflink,
            (ReflinkPolicy::Always, false) => {
                return Err(DriverError::not_supported(format!(
                    "init vfs: reflink=always, but the filesystem of {} cannot share extents (FICLONE)",
                    layers.display()
                )));
            }
        };
        let driver = VfsDriver {
            home: args.home.clone(),
            layers,
            copy: CopyOptions {
                data,
                ignore_chown_errors,
            },
            reflink_policy,
            sequence: AtomicU64::new(0),
            parents,
            placement: Mutex::new(()),
        };
        driver.remove_leftovers()?;
        tracing::debug!(home = %driver.home.display(), ?data, "vfs driver ready");
        Ok(driver)
    }
}

impl GraphDriver for VfsDriver {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn status(&self) -> KeyValues {
        let mut status = KeyValues::new();
        status.push("home", self.home.display().to_string());
        status.push(
            "backing filesystem",
            backing_filesystem(&self.layers).unwrap_or_else(|e| format!("unknown ({e})")),
        );
        status.push(
            "data copy",
            match self.copy.data {
                DataCopy::Reflink => "reflink (extents shared with the parent)",
                DataCopy::Full => "full copy (copy_file_range)",
            },
        );
        status.push(
            "reflink option",
            format!("{:?}", self.reflink_policy).to_lowercase(),
        );
        status
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::COPIES_PARENT
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let dir = self.existing_layer(id, "metadata of")?;
        Ok([("path", dir.display().to_string())].into_iter().collect())
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        let op = || format!("create layer {id}");
        validate_layer_id(id).map_err(|e| e.context(op()))?;
        if options.storage_opts.get("size").is_some() {
            return Err(DriverError::not_supported(format!(
                "{}: the vfs driver cannot limit a layer's size (storage option 'size')",
                op()
            )));
        }
        options
            .storage_opts
            .reject_unknown("vfs storage option", &[])
            .map_err(|e| e.context(op()))?;
        let target = self.layer_dir(id);
        if target.symlink_metadata().is_ok() {
            return Err(DriverError::already_exists(format!(
                "{}: layer exists",
                op()
            )));
        }
        let staging = self.staging_dir("new", id);
        let built = match parent {
            Some(parent) => {
                let parent_dir = self
                    .existing_layer(parent, "create layer")
                    .map_err(|e| e.context(format!("{}: parent {parent}", op())))?;
                copy::copy_tree(&parent_dir, &staging, self.copy)
                    .map(|stats| {
                        tracing::debug!(layer = id, parent, ?stats, "copied parent");
                    })
                    .map_err(|e| {
                        DriverError::io(
                            format!("{}: {} {}", op(), e.operation, e.path.display()),
                            &e.source,
                        )
                    })
            }
            None => fs::create_dir(&staging)
                .and_then(|()| {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
                })
                .map_err(|e| {
                    DriverError::io(format!("{}: create {}", op(), staging.display()), &e)
                }),
        };
        let _placing = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let placed = built.and_then(|()| {
            // The parent may have gone while its tree was copied.
            if let Some(parent) = parent {
                self.existing_layer(parent, "create layer")
                    .map_err(|e| e.context(format!("{}: parent {parent}", op())))?;
                self.record_parent(id, parent)?;
            }
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &staging,
                rustix::fs::CWD,
                &target,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(|e| match e {
                rustix::io::Errno::EXIST => {
                    DriverError::already_exists(format!("{}: layer exists", op()))
                }
                e => DriverError::io(format!("{}: move into place", op()), &e.into()),
            })
        });
        if let Err(err) = placed {
            if parent.is_some() && err.kind() != ErrorKind::AlreadyExists {
                let _ = fs::remove_file(self.parent_record(id));
            }
            if let Err(cleanup) = fs::remove_dir_all(&staging)
                && cleanup.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %staging.display(), error = %cleanup, "could not remove a failed layer's staging directory; it goes at the next start");
            }
            return Err(err);
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<()> {
        let dir = self.existing_layer(id, "remove")?;
        let doomed = self.staging_dir("gone", id);
        {
            let _placing = self.placement.lock().unwrap_or_else(|e| e.into_inner());
            let children = self.children_of(id)?;
            if !children.is_empty() {
                return Err(DriverError::busy(format!(
                    "remove layer {id}: layers {} are its children",
                    children.join(", ")
                )));
            }
            // Renamed away first, so the layer disappears at once and a crash
            // while deleting leaves only a leftover for the next start, never
            // half a layer.
            fs::rename(&dir, &doomed)
                .map_err(|e| DriverError::io(format!("remove layer {id}"), &e))?;
            let _ = fs::remove_file(self.parent_record(id));
        }
        fs::remove_dir_all(&doomed).map_err(|e| {
            DriverError::io(
                format!("remove layer {id}: delete {}", doomed.display()),
                &e,
            )
        })
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        let dir = self.existing_layer(id, "mount")?;
        if let Some(option) = options.options.iter().find(|o| o.as_str() != "rw") {
            // A plain directory cannot be mounted read-only or with nodev; saying
            // so beats pretending.
            return Err(DriverError::not_supported(format!(
                "mount layer {id}: the vfs driver has no mount options ('{option}')"
            )));
        }
        Ok(dir)
    }

    fn put(&self, id: &str) -> Result<()> {
        self.existing_layer(id, "unmount").map(|_| ())
    }

    fn exists(&self, id: &str) -> Result<bool> {
        if !is_valid_layer_id(id) {
            return Ok(false);
        }
        Ok(self.layer_dir(id).is_dir())
    }

    fn list(&self) -> Result<Vec<String>> {
        let entries = fs::read_dir(&self.layers).map_err(|e| {
            DriverError::io(format!("list layers in {}", self.layers.display()), &e)
        })?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DriverError::io("list layers", &e))?;
            if let Some(name) = entry.file_name().to_str()
                && is_valid_layer_id(name)
            {
                ids.push(name.to_string());
            }
        }
        Ok(ids)
    }

    fn cleanup(&self) -> Result<()> {
        // Nothing is mounted; only leftovers of interrupted operations to clear.
        self.remove_leftovers()
    }
}

/// The name of the filesystem `path` is on, for `status`.
fn backing_filesystem(path: &Path) -> std::result::Result<String, rustix::io::Errno> {
    let fs = rustix::fs::statfs(path)?;
    let name = match fs.f_type as u64 {
        0xEF53 => "ext4",
        0x9123_683E => "btrfs",
        0x5846_5342 => "xfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlay",
        0x2FC1_2FC1 => "zfs",
        0x6573_5546 => "fuse",
        other => return Ok(format!("unknown (magic {other:#x})")),
    };
    Ok(name.to_string())
}

strata_plugin_abi::export_driver!(VfsDriver);
