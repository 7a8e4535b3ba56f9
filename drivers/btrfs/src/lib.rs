//! # strata-driver-btrfs
//!
//! Layers as btrfs subvolumes: a base layer is a new subvolume, a child a
//! snapshot of its parent's (copy-on-write: it costs metadata, whatever the
//! parent holds). No mount: a layer's tree is its subvolume.
//!
//! Image layers (those not made read-write) are read-only subvolumes once
//! made: the host fills a layer it is making through one `get` with the
//! `rw` option, and the `put` that ends it seals the layer (the btrfs
//! read-only property, which the kernel enforces for every writer). From
//! then on `rw` is refused.
//!
//! The `size` storage option is a qgroup limit on the layer's subvolume
//! (referenced bytes); quotas are enabled on the filesystem the first time
//! a size is asked for, and `status` says whether they are on.
//!
//! Layout of the home (the driver kit's [`LayerHome`] places and removes
//! layers; its deletion takes subvolumes, nested ones too, as one):
//!
//! ```text
//! <home>/layers/<id>/root/       the layer's subvolume
//! <home>/layers/<id>/parent      its parent's id (the kit's)
//! <home>/layers/<id>/read-only   present for an image layer
//! <home>/layers/<id>/sealed      present once an image layer is made
//! ```

#![forbid(unsafe_code)]

mod ioctl;

use std::fs;
use std::path::{Path, PathBuf};

use strata_driver_kit::fs_type::{self, FsType};
use strata_driver_kit::image_layer::{self, Access};
use strata_driver_kit::mounts::read_only_asked;
use strata_driver_kit::{DriverOptions, LayerHome, home};
use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, GraphDriver, InitArgs, KeyValues,
    MountOptions, MountSpec, Result,
};

/// The layer's subvolume, inside its directory.
const TREE: &str = "root";

/// The btrfs driver.
pub struct BtrfsDriver {
    home: PathBuf,
    layers: LayerHome,
}

/// Where `path` is, or would be: the filesystem of its nearest existing
/// ancestor (the home may not exist yet, and is not made until the driver
/// knows it can work there).
fn filesystem_of(path: &Path) -> std::io::Result<FsType> {
    let mut at = path;
    loop {
        match fs_type::of(at) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                Some(parent) => at = parent,
                None => return Err(e),
            },
            other => return other,
        }
    }
}

impl BtrfsDriver {
    /// The subvolume of an existing layer.
    fn tree(&self, id: &str, operation: &str) -> Result<PathBuf> {
        Ok(self.layers.existing(id, operation)?.join(TREE))
    }

    fn io(&self, operation: String) -> impl FnOnce(std::io::Error) -> DriverError {
        move |e| DriverError::io(operation, &e)
    }

    /// Fills the new layer's directory `dir` (being built): its subvolume,
    /// its marks, its size limit.
    fn build(
        &self,
        id: &str,
        dir: &Path,
        parent: Option<&str>,
        read_write: bool,
        size: Option<u64>,
    ) -> Result<()> {
        let op = || format!("create layer {id}");
        if size.is_some() {
            // Before the subvolume exists, so its qgroup counts from the start.
            ioctl::ensure_quota(&self.home).map_err(self.io(format!(
                "{}: enable quotas on the filesystem of {}",
                op(),
                self.home.display()
            )))?;
        }
        let tree = dir.join(TREE);
        match parent {
            Some(parent) => {
                let source = self
                    .tree(parent, "create")
                    .map_err(|e| e.context(format!("{}: parent {parent}", op())))?;
                // An image layer is read-only from the start; the host's
                // filling `get` opens it.
                ioctl::snapshot(&source, &tree, !read_write).map_err(self.io(format!(
                    "{}: snapshot {} as {}",
                    op(),
                    source.display(),
                    tree.display()
                )))?;
            }
            None => {
                ioctl::create_subvolume(&tree).map_err(self.io(format!(
                    "{}: create subvolume {}",
                    op(),
                    tree.display()
                )))?;
                home::set_mode(&tree, 0o755).map_err(self.io(format!(
                    "{}: set the mode of {}",
                    op(),
                    tree.display()
                )))?;
                if !read_write {
                    ioctl::set_read_only(&tree, true).map_err(self.io(format!(
                        "{}: make {} read-only",
                        op(),
                        tree.display()
                    )))?;
                }
            }
        }
        if !read_write {
            image_layer::mark_image(dir, id, "create")?;
        }
        if let Some(bytes) = size {
            ioctl::limit(&tree, bytes).map_err(self.io(format!(
                "{}: limit {} to {bytes} bytes",
                op(),
                tree.display()
            )))?;
        }
        Ok(())
    }
}

impl DriverPlugin for BtrfsDriver {
    const NAME: &'static str = "btrfs";
    const DESCRIPTION: &'static str =
        "a btrfs subvolume per layer, children as snapshots, sizes as qgroup limits";

    fn init(args: &InitArgs) -> Result<Self> {
        DriverOptions::new("btrfs driver option", &args.options, &[])?;
        // Checked before anything is written, so that automatic selection
        // moves on leaving the graph root as it was.
        match filesystem_of(&args.home) {
            Ok(FsType::Btrfs) => {}
            Ok(other) => {
                return Err(DriverError::not_supported(format!(
                    "btrfs: {} is on {other}, not btrfs",
                    args.home.display()
                )));
            }
            Err(e) => {
                return Err(DriverError::io(
                    format!("init btrfs: find the filesystem of {}", args.home.display()),
                    &e,
                ));
            }
        }
        fs::create_dir_all(&args.home).map_err(|e| {
            DriverError::io(format!("init btrfs: create {}", args.home.display()), &e)
        })?;
        // The subvolume ioctls, tried in scratch space before the home is
        // laid out: a kernel (or a missing capability) that refuses them is
        // "not supported", not a failure half way through a create. With
        // CAP_SYS_ADMIN the kernel grants them all, and the probe (a
        // subvolume made, sealed and deleted: a few milliseconds of
        // transaction commits on every start of every command) is skipped.
        if !ioctl::has_sys_admin() {
            let scratch = home::scratch_in(&args.home)?;
            ioctl::probe(scratch.path()).map_err(|e| {
                DriverError::not_supported(format!(
                    "btrfs: the kernel refuses subvolume operations in {}: {e} (they need root \
                     or CAP_SYS_ADMIN)",
                    args.home.display()
                ))
            })?;
        }
        let layers = LayerHome::open(&args.home)?;
        tracing::debug!(home = %args.home.display(), "btrfs driver ready");
        Ok(BtrfsDriver {
            home: args.home.clone(),
            layers,
        })
    }
}

impl GraphDriver for BtrfsDriver {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn status(&self) -> KeyValues {
        let mut status = KeyValues::new();
        status.push("layers", self.layers.layers_dir().display().to_string());
        status.push("backing filesystem", "btrfs");
        status.push(
            "quotas",
            match ioctl::quota_on(&self.home) {
                Ok(true) => "on (a layer's size is a qgroup limit)".to_string(),
                Ok(false) => "off (enabled when a layer is given a size)".to_string(),
                Err(e) => format!("unknown ({e})"),
            },
        );
        status
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::READ_ONLY_LAYERS | Capabilities::QUOTA
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let dir = self.layers.existing(id, "metadata of")?;
        let tree = dir.join(TREE);
        let facts = ioctl::facts(&tree).map_err(self.io(format!(
            "metadata of layer {id}: read subvolume {}",
            tree.display()
        )))?;
        let mut values = KeyValues::new();
        values.push("path", tree.display().to_string());
        values.push("subvolume id", facts.id.to_string());
        values.push("generation", facts.generation.to_string());
        values.push("read-only", facts.read_only.to_string());
        values.push("image layer", image_layer::is_image(&dir).to_string());
        if let Some(usage) = facts.usage {
            values.push("referenced bytes", usage.referenced.to_string());
            values.push("exclusive bytes", usage.exclusive.to_string());
            if let Some(limit) = usage.limit {
                values.push("size limit", limit.to_string());
            }
        }
        Ok(values)
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        let op = || format!("create layer {id}");
        self.layers.path_of(id, "create")?;
        let storage = DriverOptions::new("btrfs storage option", &options.storage_opts, &["size"])
            .map_err(|e| e.context(op()))?;
        let size = storage.size("size").map_err(|e| e.context(op()))?;
        if self.layers.exists(id) {
            return Err(DriverError::already_exists(format!(
                "{}: layer exists",
                op()
            )));
        }
        // Built under a staging name the kit's lock owns: a kill anywhere
        // before `place` leaves a staging directory (its subvolume inside)
        // that the next start deletes whole.
        let staging = self.layers.stage(id, "create")?;
        self.build(id, staging.path(), parent, options.read_write, size)?;
        // The parent may have gone meanwhile: `place` checks again, under
        // the home lock.
        self.layers.place(staging, id, parent, "create")?;
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<()> {
        // The kit deletes the layer's subvolume as one (nested subvolumes a
        // container made first, at any depth; read-only ones too).
        self.layers.remove(id, "remove", |_| Ok(()))
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        let dir = self.layers.existing(id, "mount")?;
        let tree = dir.join(TREE);
        // The layer's subvolume itself is given, without a mount: no mount
        // option but rw (and ro for an image layer) can be honoured.
        let access = image_layer::access(&dir, id, &options.options, "btrfs", false, |_| false)?;
        if access == Access::Fill {
            // The host filling the layer it is making: writable until `put`.
            let _layer = self.layers.lock_layer(id, "mount")?;
            ioctl::set_read_only(&tree, false).map_err(self.io(format!(
                "mount layer {id}: make {} writable to fill it",
                tree.display()
            )))?;
        }
        Ok(tree)
    }

    fn put(&self, id: &str) -> Result<()> {
        let dir = self.layers.existing(id, "unmount")?;
        if !image_layer::is_image(&dir) {
            return Ok(());
        }
        let tree = dir.join(TREE);
        let _layer = self.layers.lock_layer(id, "unmount")?;
        image_layer::seal(&dir, id, || {
            ioctl::set_read_only(&tree, true).map_err(self.io(format!(
                "unmount layer {id}: make {} read-only",
                tree.display()
            )))
        })
    }

    fn describe_mount(&self, id: &str, options: &MountOptions) -> Result<Vec<MountSpec>> {
        let dir = self.layers.existing(id, "describe the mount of")?;
        // A bind of the layer's subvolume; an image layer's is read-only
        // whatever is asked (it is filled only through `get`).
        let read_only = read_only_asked(id, &options.options)? || image_layer::is_image(&dir);
        Ok(vec![MountSpec::bind(&dir.join(TREE), read_only)])
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Ok(self.layers.exists(id))
    }

    fn list(&self) -> Result<Vec<String>> {
        self.layers.list()
    }

    fn cleanup(&self) -> Result<()> {
        self.layers.collect_leftovers();
        // The qgroups of deleted layers, once the kernel has let them go.
        if let Err(e) = ioctl::clear_stale_qgroups(&self.home) {
            tracing::debug!(error = %e, "could not clear stale qgroups");
        }
        Ok(())
    }
}

strata_plugin_abi::export_driver!(BtrfsDriver);
