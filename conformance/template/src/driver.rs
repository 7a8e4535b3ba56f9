//! An example driver: each layer a directory, a child a copy of its parent.
//! Replace the bodies with your storage (snapshots, clones, devices); keep the
//! contract the conformance suite checks (`strata-conformance --list` prints
//! it, one line a check). The driver kit does the parts that are easy to get
//! wrong:
//!
//! * [`LayerHome`] checks every id, builds each layer in a staging directory
//!   owned by a lock, and puts it in place (with its parent recorded) in one
//!   rename, so a layer is whole or absent, whoever else uses the home and
//!   wherever a process is killed; leftovers of killed processes are
//!   collected at the next start, never the work of a live one.
//! * [`copy::copy_tree`] keeps every file kind, owner, mode, time, xattr,
//!   hard link and hole.
//! * [`DriverOptions`] refuses unknown options, so a typo is never ignored.
//!
//! Errors carry a kind (a missing parent is `NotFound`, a taken id
//! `AlreadyExists`, removing a layer with children `Busy`, a bad id or option
//! `InvalidInput`) and name the layer and the operation. Mounts are counted
//! by the host: `get` makes the tree available (again: same path), `put`
//! releases it.

use std::path::PathBuf;

use strata_driver_kit::copy::{self, CopyOptions, DataCopy};
use strata_driver_kit::{DriverOptions, LayerHome};
use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, GraphDriver, InitArgs, KeyValues,
    MountOptions, Result,
};

/// A layer's tree, inside its directory `<home>/layers/<id>/`.
const TREE: &str = "tree";

/// The example driver on one home: layers live in `<home>/layers/<id>/tree`,
/// a child starts as a full copy of its parent's tree
/// ([`Capabilities::COPIES_PARENT`]), and `get` returns the tree itself, so
/// there is nothing to mount or unmount.
pub struct ExampleDriver {
    layers: LayerHome,
}

impl DriverPlugin for ExampleDriver {
    /// The name in configuration; the library is libstrata_driver_example.so.
    const NAME: &'static str = "example";
    const DESCRIPTION: &'static str = "template driver: directories, children copied";

    fn init(args: &InitArgs) -> Result<Self> {
        // No options yet: refuse any, so a typo is never silently ignored.
        DriverOptions::new("example driver option", &args.options, &[])?;
        // A driver whose backend is missing answers NotSupported here, with
        // the reason, so automatic selection moves on.
        Ok(ExampleDriver {
            layers: LayerHome::open(&args.home)?,
        })
    }
}

impl ExampleDriver {
    fn tree(&self, id: &str, operation: &str) -> Result<PathBuf> {
        Ok(self.layers.existing(id, operation)?.join(TREE))
    }
}

impl GraphDriver for ExampleDriver {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn status(&self) -> KeyValues {
        [("layers", self.layers.layers_dir().display().to_string())]
            .into_iter()
            .collect()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::COPIES_PARENT
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let tree = self.tree(id, "metadata of")?;
        Ok([("path", tree.display().to_string())].into_iter().collect())
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        let op = format!("create layer {id}");
        DriverOptions::new("example storage option", &options.storage_opts, &[])
            .map_err(|e| e.context(&op))?;
        if self.layers.exists(id) {
            return Err(DriverError::already_exists(format!("{op}: layer exists")));
        }
        let source = match parent {
            Some(parent) => Some(
                self.tree(parent, "create")
                    .map_err(|e| e.context(format!("{op}: parent {parent}")))?,
            ),
            None => None,
        };
        // Built where nobody looks; deleted if anything below fails.
        let staging = self.layers.stage(id, "create")?;
        let tree = staging.path().join(TREE);
        match source {
            Some(source) => {
                let how = CopyOptions {
                    data: DataCopy::Full,
                    ignore_chown_errors: false,
                };
                copy::copy_tree(&source, &tree, how)
                    .map_err(|e| DriverError::io(format!("{op}: {e}"), &e.source))?;
            }
            // The root of a new layer is 0755 whatever the umask.
            None => std::fs::create_dir(&tree)
                .and_then(|()| strata_driver_kit::home::set_mode(&tree, 0o755))
                .map_err(|e| DriverError::io(&op, &e))?,
        }
        // Appears whole, or not at all (AlreadyExists if another process won).
        self.layers.place(staging, id, parent, "create")?;
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<()> {
        // Busy while the layer has children; taken away in one rename.
        self.layers.remove(id, "remove", |_| Ok(()))
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        let tree = self.tree(id, "mount")?;
        if let Some(option) = options.options.iter().find(|o| o.as_str() != "rw") {
            return Err(DriverError::not_supported(format!(
                "mount layer {id}: mount option '{option}' is not supported"
            )));
        }
        Ok(tree)
    }

    fn put(&self, id: &str) -> Result<()> {
        self.tree(id, "unmount").map(|_| ())
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Ok(self.layers.exists(id))
    }

    fn list(&self) -> Result<Vec<String>> {
        self.layers.list()
    }

    fn cleanup(&self) -> Result<()> {
        // Nothing mounted to release; collect what killed processes left.
        self.layers.collect_leftovers();
        Ok(())
    }
}
