//! # strata-driver-zfs
//!
//! Layers as ZFS filesystem datasets under a parent dataset (option
//! `fsname`, or the dataset the home lives on, as moby and
//! containers/storage do): a base layer is a new dataset, a child a clone of
//! a snapshot of its parent's. Everything goes through the `zfs` tools (see
//! `tool`).
//!
//! Mounting differs by implementation, found at start and shown in
//! `status`: with kernel OpenZFS a layer's dataset has `mountpoint=legacy`
//! and is mounted with `mount -t zfs`; zfs-fuse mounts datasets itself, so
//! there a dataset gets its `mountpoint` property and `zfs mount` when it is
//! mounted, and `canmount=noauto` keeps the daemon from mounting it on its
//! own.
//!
//! Image layers follow the host's filling contract (see
//! `GraphDriver::get`): read-only (`readonly=on`) from creation, opened by
//! the host's one `get` with `rw`, sealed by the `put` after it. The `size`
//! storage option is the dataset's `refquota`.
//!
//! Layout of the home, on the kit's [`LayerHome`]:
//!
//! ```text
//! <home>/layers/<id>/dataset     the layer's dataset, <fsname>/strata-<random>
//! <home>/layers/<id>/root/       where it is mounted
//! <home>/layers/<id>/read-only   present for an image layer
//! <home>/layers/<id>/sealed      present once an image layer is made
//! ```
//!
//! Crash safety: a dataset's name is written in its layer's staging
//! directory before the dataset is made, and each dataset carries the user
//! property `strata:home` naming its home. At every start and cleanup,
//! under the home lock, a dataset of this home that no layer and no live
//! staging directory names (its maker died between `zfs create` and the
//! placement) is destroyed; one a live maker is building is always named.

#![forbid(unsafe_code)]

mod tool;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use strata_driver_kit::fs_type::{self, FsType};
use strata_driver_kit::image_layer::{self, Access};
use strata_driver_kit::{DriverOptions, LayerHome, home, mounts};
use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, GraphDriver, InitArgs, KeyValues,
    MountOptions, Result,
};
use tool::Tool;

/// The file naming a layer's dataset, in its directory.
const DATASET_FILE: &str = "dataset";
/// Where a layer's dataset is mounted, in its directory.
const TREE: &str = "root";
/// The user property naming the home a dataset belongs to.
const HOME_PROPERTY: &str = "strata:home";

/// Who mounts datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mounting {
    /// Kernel OpenZFS: `mountpoint=legacy`, mounted with `mount -t zfs`.
    Legacy,
    /// zfs-fuse: the daemon mounts through the `mountpoint` property.
    Daemon,
}

/// The zfs driver.
pub struct ZfsDriver {
    home: PathBuf,
    layers: LayerHome,
    fsname: String,
    mounting: Mounting,
    tool: Tool,
}

/// The nearest existing ancestor of `path` (itself included), canonical.
fn existing_ancestor(path: &Path) -> std::io::Result<PathBuf> {
    let mut at = path;
    loop {
        match at.canonicalize() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                Some(parent) => at = parent,
                None => return Err(e),
            },
            other => return other,
        }
    }
}

fn not_supported(why: String) -> DriverError {
    DriverError::not_supported(format!("zfs: {why}"))
}

impl ZfsDriver {
    /// The dataset of the layer whose directory is `dir`.
    fn dataset_of(&self, id: &str, dir: &Path, operation: &str) -> Result<String> {
        fs::read_to_string(dir.join(DATASET_FILE))
            .map(|name| name.trim().to_string())
            .map_err(|e| {
                DriverError::io(format!("{operation} layer {id}: read its dataset name"), &e)
            })
    }

    fn is_mounted(&self, tree: &Path) -> Result<bool> {
        mounts::is_mount_point(tree)
            .map_err(|e| DriverError::io(format!("look for a mount on {}", tree.display()), &e))
    }

    fn mount(&self, id: &str, dataset: &str, tree: &Path) -> Result<()> {
        let op = format!("mount layer {id}");
        match self.mounting {
            Mounting::Daemon => {
                let mountpoint = tree.display().to_string();
                self.tool
                    .zfs(&["set", &format!("mountpoint={mountpoint}"), dataset])
                    .map_err(|f| f.into_error(&op))?;
                match self.tool.zfs(&["mount", dataset]) {
                    Ok(_) => Ok(()),
                    Err(f) if f.stderr.contains("already mounted") => Ok(()),
                    Err(f) => Err(f.into_error(&op)),
                }
            }
            Mounting::Legacy => rustix::mount::mount(
                dataset,
                tree,
                "zfs",
                rustix::mount::MountFlags::empty(),
                None::<&std::ffi::CStr>,
            )
            .map_err(|e| DriverError::io(format!("{op}: mount -t zfs {dataset}"), &e.into())),
        }
    }

    fn unmount(&self, id: &str, dataset: &str, tree: &Path) -> Result<()> {
        let op = format!("unmount layer {id}");
        match self.mounting {
            Mounting::Daemon => match self.tool.zfs_patiently(&["unmount", dataset]) {
                Ok(_) => Ok(()),
                Err(f) if f.stderr.contains("not currently mounted") => Ok(()),
                Err(f) => Err(f.into_error(&op)),
            },
            Mounting::Legacy => rustix::mount::unmount(tree, rustix::mount::UnmountFlags::empty())
                .map_err(|e| {
                    DriverError::io(format!("{op}: umount {}", tree.display()), &e.into())
                }),
        }
    }

    /// The properties every layer dataset is made with.
    fn properties(&self, read_write: bool, size: Option<u64>) -> Vec<String> {
        let mut properties = vec![format!("{HOME_PROPERTY}={}", self.home.display())];
        match self.mounting {
            Mounting::Legacy => properties.push("mountpoint=legacy".into()),
            Mounting::Daemon => {
                properties.push("mountpoint=none".into());
                properties.push("canmount=noauto".into());
            }
        }
        if !read_write {
            properties.push("readonly=on".into());
        }
        if let Some(bytes) = size {
            properties.push(format!("refquota={bytes}"));
        }
        properties
    }

    /// Destroys `dataset` (with any snapshots of it no clone depends on)
    /// and then `origin`, the snapshot it was cloned from, if any.
    fn destroy(&self, dataset: &str, origin: Option<&str>, operation: &str) -> Result<()> {
        match self.tool.zfs_patiently(&["destroy", "-r", dataset]) {
            Ok(_) => {}
            Err(f) if f.is_missing() => {}
            Err(f) => return Err(f.into_error(operation)),
        }
        if let Some(origin) = origin {
            match self.tool.zfs_patiently(&["destroy", origin]) {
                Ok(_) => {}
                Err(f) if f.is_missing() => {}
                Err(f) => return Err(f.into_error(operation)),
            }
        }
        Ok(())
    }

    /// The snapshot `dataset` was cloned from, if any.
    fn origin_of(&self, dataset: &str) -> Option<String> {
        match self.tool.get(dataset, "origin") {
            Ok(origin) if origin.contains('@') => Some(origin),
            _ => None,
        }
    }

    /// Makes the new layer's dataset, named in the staging directory `dir`
    /// first; on failure nothing of it is left.
    fn build(
        &self,
        id: &str,
        dir: &Path,
        parent: Option<&str>,
        read_write: bool,
        size: Option<u64>,
    ) -> Result<String> {
        let op = format!("create layer {id}");
        let dataset = format!("{}/strata-{}", self.fsname, home::random_hex());
        // Named before it exists, so that a sweep never takes a live
        // maker's dataset for a leftover.
        fs::write(dir.join(DATASET_FILE), &dataset)
            .map_err(|e| DriverError::io(format!("{op}: record its dataset"), &e))?;
        fs::create_dir(dir.join(TREE))
            .map_err(|e| DriverError::io(format!("{op}: create its mount point"), &e))?;
        if !read_write {
            image_layer::mark_image(dir, id, "create")?;
        }
        let properties = self.properties(read_write, size);
        let mut args: Vec<&str> = Vec::new();
        let origin = match parent {
            Some(parent) => {
                let parent_dir = self
                    .layers
                    .existing(parent, "create")
                    .map_err(|e| e.context(format!("{op}: parent {parent}")))?;
                let parent_dataset = self.dataset_of(parent, &parent_dir, "create a child of")?;
                let origin = format!("{parent_dataset}@{}", home::random_hex());
                self.tool
                    .zfs(&["snapshot", &origin])
                    .map_err(|f| f.into_error(&op))?;
                Some(origin)
            }
            None => None,
        };
        args.push(if origin.is_some() { "clone" } else { "create" });
        for property in &properties {
            args.push("-o");
            args.push(property);
        }
        if let Some(origin) = &origin {
            args.push(origin);
        }
        args.push(&dataset);
        if let Err(f) = self.tool.zfs(&args) {
            let error = f.into_error(&op);
            if let Err(e) = self.destroy(&dataset, origin.as_deref(), &op) {
                tracing::warn!(error = %e, "could not take back a failed create");
            }
            return Err(error);
        }
        Ok(dataset)
    }

    /// Destroys the datasets of this home that no layer and no staging
    /// directory names: what makers killed between `zfs create` and the
    /// placement left. Under the home lock, so no placement moves a name
    /// between the two places while they are read.
    fn sweep(&self) -> Result<usize> {
        let _home = self.layers.lock()?;
        let listed = self
            .tool
            .zfs(&[
                "list",
                "-H",
                "-o",
                &format!("name,{HOME_PROPERTY}"),
                "-t",
                "filesystem",
                "-r",
                &self.fsname,
            ])
            .map_err(|f| f.into_error("sweep leftover datasets"))?;
        let home = self.home.display().to_string();
        let ours: Vec<String> = listed
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .filter(|(_, owner)| *owner == home)
            .map(|(name, _)| name.to_string())
            .collect();
        if ours.is_empty() {
            return Ok(0);
        }
        let mut named = HashSet::new();
        for dir in [self.layers.layers_dir(), self.layers.staging_dir()] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(name) = fs::read_to_string(entry.path().join(DATASET_FILE)) {
                    named.insert(name.trim().to_string());
                }
            }
        }
        let mut destroyed = 0;
        for dataset in ours.iter().filter(|d| !named.contains(*d)) {
            let origin = self.origin_of(dataset);
            tracing::info!(%dataset, "destroying a dataset an interrupted create left");
            match self.destroy(dataset, origin.as_deref(), "sweep leftover datasets") {
                Ok(()) => destroyed += 1,
                Err(e) => {
                    tracing::warn!(%dataset, error = %e, "could not destroy a leftover dataset")
                }
            }
        }
        Ok(destroyed)
    }
}

impl DriverPlugin for ZfsDriver {
    const NAME: &'static str = "zfs";
    const DESCRIPTION: &'static str =
        "a ZFS dataset per layer, children as clones of snapshots, through the zfs tools";

    fn init(args: &InitArgs) -> Result<Self> {
        let options = DriverOptions::new("zfs driver option", &args.options, &["fsname"])?;
        let tool = Tool;
        // Each refusal comes before anything is written, so that automatic
        // selection moves on leaving the graph root as it was.
        if let Err(f) = tool.run("zpool", &["list", "-H", "-o", "name"]) {
            return Err(not_supported(format!(
                "the zfs tools do not answer (`{}`: {})",
                f.command, f.stderr
            )));
        }
        let filesystems = tool
            .filesystems()
            .map_err(|f| not_supported(format!("`{}` failed: {}", f.command, f.stderr)))?;
        let given = options_fsname(&options);
        let (fsname, mountpoint) = match given {
            Some(name) => {
                let found = filesystems
                    .iter()
                    .find(|(n, _)| n == &name)
                    .ok_or_else(|| {
                        not_supported(format!("fsname {name}: no such filesystem dataset"))
                    })?;
                found.clone()
            }
            None => {
                let at = existing_ancestor(&args.home).map_err(|e| {
                    DriverError::io(format!("init zfs: find {}", args.home.display()), &e)
                })?;
                filesystems
                    .iter()
                    .filter(|(_, mountpoint)| mountpoint.starts_with('/'))
                    .filter(|(_, mountpoint)| at.starts_with(mountpoint))
                    .max_by_key(|(_, mountpoint)| mountpoint.len())
                    .cloned()
                    .ok_or_else(|| {
                        let on = fs_type::of(&at).map_or_else(
                            |_| "an unknown filesystem".to_string(),
                            |t| t.to_string(),
                        );
                        not_supported(format!(
                            "{} is not on a ZFS dataset (it is on {on}); set [storage.options.zfs] \
                             fsname to use one",
                            args.home.display()
                        ))
                    })?
            }
        };
        let mounting = match fs_type::of(Path::new(&mountpoint)) {
            Ok(FsType::Zfs) => Mounting::Legacy,
            Ok(FsType::Fuse) => Mounting::Daemon,
            Ok(other) => {
                return Err(not_supported(format!(
                    "dataset {fsname} is mounted on {mountpoint}, which is {other}, not zfs or zfs-fuse"
                )));
            }
            Err(e) => {
                return Err(DriverError::io(
                    format!("init zfs: find what {mountpoint} is"),
                    &e,
                ));
            }
        };
        fs::create_dir_all(&args.home).map_err(|e| {
            DriverError::io(format!("init zfs: create {}", args.home.display()), &e)
        })?;
        let home = args.home.canonicalize().map_err(|e| {
            DriverError::io(format!("init zfs: resolve {}", args.home.display()), &e)
        })?;
        let layers = LayerHome::open(&home)?;
        let driver = ZfsDriver {
            home,
            layers,
            fsname,
            mounting,
            tool,
        };
        driver.layers.collect_leftovers();
        driver.sweep()?;
        tracing::debug!(fsname = %driver.fsname, ?mounting, "zfs driver ready");
        Ok(driver)
    }
}

/// The `fsname` option, if given.
fn options_fsname(options: &DriverOptions) -> Option<String> {
    options.text("fsname").map(str::to_string)
}

impl GraphDriver for ZfsDriver {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn status(&self) -> KeyValues {
        let mut status = KeyValues::new();
        status.push("layers", self.layers.layers_dir().display().to_string());
        status.push("parent dataset", self.fsname.clone());
        status.push(
            "mounting",
            match self.mounting {
                Mounting::Legacy => "kernel OpenZFS: mountpoint=legacy, mount -t zfs",
                Mounting::Daemon => "zfs-fuse: the daemon mounts (mountpoint property, zfs mount)",
            },
        );
        status
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::READ_ONLY_LAYERS | Capabilities::QUOTA
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let dir = self.layers.existing(id, "metadata of")?;
        let dataset = self.dataset_of(id, &dir, "metadata of")?;
        let mut values = KeyValues::new();
        values.push("dataset", dataset.clone());
        values.push("path", dir.join(TREE).display().to_string());
        for property in ["origin", "used", "referenced", "refquota", "readonly"] {
            let value = self
                .tool
                .get(&dataset, property)
                .map_err(|f| f.into_error(&format!("metadata of layer {id}")))?;
            values.push(property, value);
        }
        Ok(values)
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        let op = || format!("create layer {id}");
        self.layers.path_of(id, "create")?;
        let storage = DriverOptions::new("zfs storage option", &options.storage_opts, &["size"])
            .map_err(|e| e.context(op()))?;
        let size = storage.size("size").map_err(|e| e.context(op()))?;
        if self.layers.exists(id) {
            return Err(DriverError::already_exists(format!(
                "{}: layer exists",
                op()
            )));
        }
        let staging = self.layers.stage(id, "create")?;
        let dataset = self.build(id, staging.path(), parent, options.read_write, size)?;
        if let Err(e) = self.layers.place(staging, id, parent, "create") {
            // The staging directory is gone with its record: the dataset
            // goes too (or the next sweep takes it).
            let origin = self.origin_of(&dataset);
            let _ = self.destroy(&dataset, origin.as_deref(), &op());
            return Err(e);
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<()> {
        let op = format!("remove layer {id}");
        let dir = self.layers.existing(id, "remove")?;
        // The name never changes once the layer is placed.
        let dataset = self.dataset_of(id, &dir, "remove")?;
        let origin = self.origin_of(&dataset);
        // Steps: (1) under the kit's locks the dataset is unmounted (a
        // mount that stays busy keeps the layer, with that reason) and the
        // layer's directory renamed away and deleted; (2) the dataset and
        // the snapshot it was cloned from are destroyed. A kill between
        // leaves a dataset no layer names, which the next start's sweep
        // destroys; destroying first would leave, killed before the rename,
        // a layer whose dataset is gone.
        self.layers.remove(id, "remove", |dir| {
            let tree = dir.join(TREE);
            if self.is_mounted(&tree)? {
                self.unmount(id, &dataset, &tree)?;
            }
            Ok(())
        })?;
        self.destroy(&dataset, origin.as_deref(), &op)
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        let dir = self.layers.existing(id, "mount")?;
        let access = image_layer::access(&dir, id, &options.options, "zfs", false, |_| false)?;
        let dataset = self.dataset_of(id, &dir, "mount")?;
        let tree = dir.join(TREE);
        let _layer = self.layers.lock_layer(id, "mount")?;
        if access == Access::Fill {
            self.tool
                .zfs(&["set", "readonly=off", &dataset])
                .map_err(|f| f.into_error(&format!("mount layer {id} to fill it")))?;
        }
        if !self.is_mounted(&tree)? {
            self.mount(id, &dataset, &tree)?;
        }
        Ok(tree)
    }

    fn put(&self, id: &str) -> Result<()> {
        let dir = self.layers.existing(id, "unmount")?;
        let dataset = self.dataset_of(id, &dir, "unmount")?;
        let tree = dir.join(TREE);
        let _layer = self.layers.lock_layer(id, "unmount")?;
        if self.is_mounted(&tree)? {
            self.unmount(id, &dataset, &tree)?;
        }
        image_layer::seal(&dir, id, || {
            self.tool
                .zfs(&["set", "readonly=on", &dataset])
                .map_err(|f| f.into_error(&format!("unmount layer {id}: seal it")))
                .map(|_| ())
        })
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
            tracing::debug!(error = %e, "could not sweep leftover datasets");
        }
        Ok(())
    }
}

strata_plugin_abi::export_driver!(ZfsDriver);
