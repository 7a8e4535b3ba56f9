//! An example driver: each layer a directory, a child a `cp -a` of its parent.
//! Replace the bodies with your storage (snapshots, clones, devices); keep the
//! contract the conformance suite checks:
//!
//! * ids are validated, unknown options refused, errors carry a kind and name
//!   the layer and the operation;
//! * a missing parent is `NotFound`, a taken id `AlreadyExists`, removing a
//!   layer with children `Busy`;
//! * a failed create leaves nothing; `list` returns exactly the layers;
//! * a driver started again on the same home sees the same layers.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, GraphDriver, InitArgs, KeyValues,
    MountOptions, Result, is_valid_layer_id, validate_layer_id,
};

pub struct ExampleDriver {
    home: PathBuf,
}

impl DriverPlugin for ExampleDriver {
    /// The name in configuration; the library is libstrata_driver_example.so.
    const NAME: &'static str = "example";
    const DESCRIPTION: &'static str = "template driver: directories, children copied with cp -a";

    fn init(args: &InitArgs) -> Result<Self> {
        // No options yet: refuse any, so a typo is never silently ignored.
        args.options.reject_unknown("example driver option", &[])?;
        // A driver whose backend is missing answers NotSupported here, with
        // the reason, so automatic selection moves on.
        for dir in ["layers", "parents"] {
            let path = args.home.join(dir);
            fs::create_dir_all(&path).map_err(|e| {
                DriverError::io(format!("init example: create {}", path.display()), &e)
            })?;
        }
        Ok(ExampleDriver {
            home: args.home.clone(),
        })
    }
}

impl ExampleDriver {
    fn layer(&self, id: &str) -> PathBuf {
        self.home.join("layers").join(id)
    }

    fn parent_record(&self, id: &str) -> PathBuf {
        self.home.join("parents").join(id)
    }

    fn existing(&self, id: &str, operation: &str) -> Result<PathBuf> {
        validate_layer_id(id).map_err(|e| e.context(format!("{operation} layer {id}")))?;
        let path = self.layer(id);
        if path.is_dir() {
            Ok(path)
        } else {
            Err(DriverError::not_found(format!(
                "{operation} layer {id}: no such layer"
            )))
        }
    }

    fn children(&self, id: &str) -> Result<Vec<String>> {
        let records = fs::read_dir(self.home.join("parents"))
            .map_err(|e| DriverError::io(format!("find children of layer {id}"), &e))?;
        Ok(records
            .flatten()
            .filter(|r| fs::read_to_string(r.path()).is_ok_and(|parent| parent == id))
            .filter_map(|r| r.file_name().into_string().ok())
            .filter(|child| self.layer(child).is_dir())
            .collect())
    }
}

impl GraphDriver for ExampleDriver {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn status(&self) -> KeyValues {
        [("home", self.home.display().to_string())]
            .into_iter()
            .collect()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::COPIES_PARENT
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let path = self.existing(id, "metadata of")?;
        Ok([("path", path.display().to_string())].into_iter().collect())
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        let op = format!("create layer {id}");
        validate_layer_id(id).map_err(|e| e.context(&op))?;
        options
            .storage_opts
            .reject_unknown("example storage option", &[])
            .map_err(|e| e.context(&op))?;
        let target = self.layer(id);
        if target.exists() {
            return Err(DriverError::already_exists(format!("{op}: layer exists")));
        }
        let Some(parent) = parent else {
            return fs::create_dir(&target).map_err(|e| DriverError::io(&op, &e));
        };
        let source = self
            .existing(parent, "create")
            .map_err(|e| e.context(format!("{op}: parent {parent}")))?;
        // GNU cp -a keeps modes, owners, times, xattrs, links and devices.
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&source)
            .arg(&target)
            .status();
        if !copied.as_ref().is_ok_and(|s| s.success()) {
            let _ = fs::remove_dir_all(&target);
            return Err(DriverError::other(format!(
                "{op}: cp -a {} failed: {copied:?}",
                source.display()
            )));
        }
        fs::write(self.parent_record(id), parent).map_err(|e| {
            let _ = fs::remove_dir_all(&target);
            DriverError::io(format!("{op}: record its parent"), &e)
        })
    }

    fn remove(&self, id: &str) -> Result<()> {
        let path = self.existing(id, "remove")?;
        let children = self.children(id)?;
        if !children.is_empty() {
            return Err(DriverError::busy(format!(
                "remove layer {id}: layers {} are its children",
                children.join(", ")
            )));
        }
        fs::remove_dir_all(&path).map_err(|e| DriverError::io(format!("remove layer {id}"), &e))?;
        let _ = fs::remove_file(self.parent_record(id));
        Ok(())
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        if let Some(option) = options.options.iter().find(|o| o.as_str() != "rw") {
            return Err(DriverError::not_supported(format!(
                "mount layer {id}: mount option '{option}' is not supported"
            )));
        }
        self.existing(id, "mount")
    }

    fn put(&self, id: &str) -> Result<()> {
        self.existing(id, "unmount").map(|_| ())
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Ok(is_valid_layer_id(id) && self.layer(id).is_dir())
    }

    fn list(&self) -> Result<Vec<String>> {
        let entries = fs::read_dir(self.home.join("layers"))
            .map_err(|e| DriverError::io("list layers", &e))?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| is_valid_layer_id(id))
            .collect())
    }

    fn cleanup(&self) -> Result<()> {
        Ok(())
    }
}
