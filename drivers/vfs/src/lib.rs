//! # strata-driver-vfs
//!
//! The driver that works on any filesystem: every layer is a plain directory
//! and a child starts as a full copy of its parent. Copies share extents
//! (FICLONE) where the filesystem allows it (btrfs, xfs), so there a child
//! costs metadata only; elsewhere data is copied in the kernel.
//!
//! Layout of the home (the driver kit's [`LayerHome`] places and removes
//! layers, so any number of processes may share it and a kill anywhere
//! leaves only what the next start collects):
//!
//! ```text
//! <home>/layers/<id>/root/     a layer's tree
//! <home>/layers/<id>/parent    its parent's id
//! ```

#![forbid(unsafe_code)]

use std::fs;
use std::path::PathBuf;

use strata_driver_kit::copy::{self, CopyOptions, DataCopy};
use strata_driver_kit::mounts::read_only_asked;
use strata_driver_kit::{DriverOptions, LayerHome, fs_type};
use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, GraphDriver, InitArgs, KeyValues,
    MountOptions, MountSpec, Result,
};

/// The tree of a layer, inside its directory.
const TREE: &str = "root";

pub struct VfsDriver {
    home: LayerHome,
    copy: CopyOptions,
    reflink_option: &'static str,
}

impl VfsDriver {
    /// The tree of an existing layer.
    fn tree(&self, id: &str, operation: &str) -> Result<PathBuf> {
        Ok(self.home.existing(id, operation)?.join(TREE))
    }
}

/// Refuses a home laid out by strata before the driver kit (`dir/<id>` and
/// `parents/<id>`): its layers are not where this version looks, and
/// starting on it would make them silently invisible.
fn refuse_old_layout(args: &InitArgs) -> Result<()> {
    let old = args.home.join("dir");
    let holds_layers = fs::read_dir(&old)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if holds_layers {
        return Err(DriverError::invalid_input(format!(
            "init vfs: {} holds layers in the layout of strata 0.1 before the driver kit \
             (dir/<id>); this version keeps them in layers/<id>/root. Re-import the images \
             into a new graph root, or move each dir/<id> to layers/<id>/root with its \
             parents/<id> as layers/<id>/parent",
            old.display()
        )));
    }
    Ok(())
}

impl DriverPlugin for VfsDriver {
    const NAME: &'static str = "vfs";
    const DESCRIPTION: &'static str =
        "plain directories, a full copy per layer (reflinked where the filesystem can)";

    fn init(args: &InitArgs) -> Result<Self> {
        let options = DriverOptions::new(
            "vfs driver option",
            &args.options,
            &["reflink", "ignore_chown_errors"],
        )?;
        let reflink_option = options.choice("reflink", &["auto", "always", "never"], "auto")?;
        let ignore_chown_errors = options.bool("ignore_chown_errors", false)?;
        refuse_old_layout(args)?;
        fs::create_dir_all(&args.home).map_err(|e| {
            DriverError::io(format!("init vfs: create {}", args.home.display()), &e)
        })?;
        // Decided before anything else is written, so a refusal leaves the home
        // as it found it. The home is on the layers' filesystem.
        let can_reflink = copy::reflink_works_in(&args.home);
        let data = match (reflink_option, can_reflink) {
            ("never", _) | ("auto", false) => DataCopy::Full,
            (_, true) => DataCopy::Reflink,
            (_, false) => {
                return Err(DriverError::not_supported(format!(
                    "init vfs: reflink=always, but the filesystem of {} cannot share extents (FICLONE)",
                    args.home.display()
                )));
            }
        };
        let home = LayerHome::open(&args.home)?;
        tracing::debug!(home = %args.home.display(), ?data, "vfs driver ready");
        Ok(VfsDriver {
            home,
            copy: CopyOptions {
                data,
                ignore_chown_errors,
            },
            reflink_option,
        })
    }
}

impl GraphDriver for VfsDriver {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn status(&self) -> KeyValues {
        let mut status = KeyValues::new();
        status.push("layers", self.home.layers_dir().display().to_string());
        status.push(
            "backing filesystem",
            fs_type::of(self.home.layers_dir())
                .map_or_else(|e| format!("unknown ({e})"), |fs| fs.to_string()),
        );
        status.push(
            "data copy",
            match self.copy.data {
                DataCopy::Reflink => "reflink (extents shared with the parent)",
                DataCopy::Full => "full copy (copy_file_range)",
            },
        );
        status.push("reflink option", self.reflink_option);
        status
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::COPIES_PARENT
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let tree = self.tree(id, "metadata of")?;
        Ok([("path", tree.display().to_string())].into_iter().collect())
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        let op = || format!("create layer {id}");
        self.home.path_of(id, "create")?;
        if options.storage_opts.get("size").is_some() {
            return Err(DriverError::not_supported(format!(
                "{}: the vfs driver cannot limit a layer's size (storage option 'size')",
                op()
            )));
        }
        DriverOptions::new("vfs storage option", &options.storage_opts, &[])
            .map_err(|e| e.context(op()))?;
        if self.home.exists(id) {
            return Err(DriverError::already_exists(format!(
                "{}: layer exists",
                op()
            )));
        }
        let parent_tree = match parent {
            Some(parent) => Some(
                self.tree(parent, "create")
                    .map_err(|e| e.context(format!("{}: parent {parent}", op())))?,
            ),
            None => None,
        };
        let staging = self.home.stage(id, "create")?;
        let tree = staging.path().join(TREE);
        match parent_tree {
            Some(parent_tree) => {
                let stats = copy::copy_tree(&parent_tree, &tree, self.copy).map_err(|e| {
                    DriverError::io(
                        format!("{}: {} {}", op(), e.operation, e.path.display()),
                        &e.source,
                    )
                })?;
                tracing::debug!(layer = id, ?parent, ?stats, "copied parent");
            }
            None => fs::create_dir(&tree)
                .and_then(|()| strata_driver_kit::home::set_mode(&tree, 0o755))
                .map_err(|e| DriverError::io(format!("{}: create {}", op(), tree.display()), &e))?,
        }
        // The parent may have gone while its tree was copied: place checks
        // again, under the home lock.
        self.home.place(staging, id, parent, "create")?;
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<()> {
        self.home.remove(id, "remove", |_| Ok(()))
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        let tree = self.tree(id, "mount")?;
        if let Some(option) = options.options.iter().find(|o| o.as_str() != "rw") {
            // A plain directory cannot be mounted read-only or with nodev; saying
            // so beats pretending.
            return Err(DriverError::not_supported(format!(
                "mount layer {id}: the vfs driver has no mount options ('{option}')"
            )));
        }
        Ok(tree)
    }

    fn put(&self, id: &str) -> Result<()> {
        self.home.existing(id, "unmount").map(|_| ())
    }

    fn describe_mount(&self, id: &str, options: &MountOptions) -> Result<Vec<MountSpec>> {
        // A bind of the layer's directory: unlike `get`, which hands out the
        // directory itself, a bind can be read-only.
        let tree = self.tree(id, "describe the mount of")?;
        let read_only = read_only_asked(id, &options.options)?;
        Ok(vec![MountSpec::bind(&tree, read_only)])
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Ok(self.home.exists(id))
    }

    fn list(&self) -> Result<Vec<String>> {
        self.home.list()
    }

    fn cleanup(&self) -> Result<()> {
        // Nothing is mounted; only leftovers of killed processes to collect.
        self.home.collect_leftovers();
        Ok(())
    }
}

strata_plugin_abi::export_driver!(VfsDriver);
