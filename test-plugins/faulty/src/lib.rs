//! A throwaway driver with a fault planted, chosen by the option `fault`.
//! Layers are directories; a child is made with GNU `cp -a` of its parent.
//!
//! * `lose-xattrs`: a child layer loses its files' user.* xattrs;
//! * `leave-directory`: removing a layer leaves a directory in the home;
//! * `orphan-children`: a layer with children can be removed.
//!
//! The conformance suite's own tests run it to show each fault fails the
//! checks it should. (It cannot reuse the vfs crate: linking another driver's
//! library would export two root modules.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_plugin_abi::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    LoseXattrs,
    LeaveDirectory,
    OrphanChildren,
}

pub struct Faulty {
    fault: Fault,
    home: PathBuf,
}

impl DriverPlugin for Faulty {
    const NAME: &'static str = "faulty";
    const DESCRIPTION: &'static str =
        "a copying driver with a planted fault, for testing the conformance suite";

    fn init(args: &InitArgs) -> Result<Self> {
        args.options.reject_unknown("faulty option", &["fault"])?;
        let fault = match args.options.get("fault") {
            Some("lose-xattrs") => Fault::LoseXattrs,
            Some("leave-directory") => Fault::LeaveDirectory,
            Some("orphan-children") => Fault::OrphanChildren,
            other => {
                return Err(DriverError::invalid_input(format!(
                    "faulty: option fault must be lose-xattrs, leave-directory or orphan-children, not {other:?}"
                )));
            }
        };
        for dir in ["layers", "parents"] {
            fs::create_dir_all(args.home.join(dir)).map_err(|e| DriverError::io("init", &e))?;
        }
        Ok(Faulty {
            fault,
            home: args.home.clone(),
        })
    }
}

impl Faulty {
    fn layer(&self, id: &str) -> PathBuf {
        self.home.join("layers").join(id)
    }

    fn existing(&self, id: &str, op: &str) -> Result<PathBuf> {
        validate_layer_id(id).map_err(|e| e.context(format!("{op} layer {id}")))?;
        let path = self.layer(id);
        if path.is_dir() {
            Ok(path)
        } else {
            Err(DriverError::not_found(format!(
                "{op} layer {id}: no such layer"
            )))
        }
    }

    fn children(&self, id: &str) -> Vec<String> {
        fs::read_dir(self.home.join("parents"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| fs::read_to_string(e.path()).is_ok_and(|p| p == id))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|child| self.layer(child).is_dir())
            .collect()
    }
}

/// Removes every user.* xattr below `dir`.
fn strip_user_xattrs(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let mut names = vec![0u8; 4096];
        if let Ok(n) = rustix::fs::llistxattr(&path, &mut names[..]) {
            for name in names[..n]
                .split(|b| *b == 0)
                .filter(|n| n.starts_with(b"user."))
            {
                let _ = rustix::fs::lremovexattr(&path, name);
            }
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            strip_user_xattrs(&path);
        }
    }
}

impl GraphDriver for Faulty {
    fn name(&self) -> String {
        Self::NAME.into()
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
        validate_layer_id(id).map_err(|e| e.context(format!("create layer {id}")))?;
        options
            .storage_opts
            .reject_unknown("faulty storage option", &[])
            .map_err(|e| e.context(format!("create layer {id}")))?;
        let target = self.layer(id);
        if target.exists() {
            return Err(DriverError::already_exists(format!(
                "create layer {id}: layer exists"
            )));
        }
        match parent {
            None => fs::create_dir(&target)
                .map_err(|e| DriverError::io(format!("create layer {id}"), &e))?,
            Some(parent) => {
                let from = self.existing(parent, "create")?;
                let ok = Command::new("cp")
                    .arg("-a")
                    .arg(&from)
                    .arg(&target)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    let _ = fs::remove_dir_all(&target);
                    return Err(DriverError::other(format!(
                        "create layer {id}: cp -a failed"
                    )));
                }
                fs::write(self.home.join("parents").join(id), parent)
                    .map_err(|e| DriverError::io(format!("create layer {id}"), &e))?;
                if self.fault == Fault::LoseXattrs {
                    strip_user_xattrs(&target);
                }
            }
        }
        Ok(())
    }
    fn remove(&self, id: &str) -> Result<()> {
        let path = self.existing(id, "remove")?;
        if self.fault != Fault::OrphanChildren && !self.children(id).is_empty() {
            return Err(DriverError::busy(format!(
                "remove layer {id}: it has children"
            )));
        }
        fs::remove_dir_all(&path).map_err(|e| DriverError::io(format!("remove layer {id}"), &e))?;
        let _ = fs::remove_file(self.home.join("parents").join(id));
        if self.fault == Fault::LeaveDirectory {
            fs::create_dir_all(self.home.join(format!("forgotten-{id}")))
                .map_err(|e| DriverError::io("leave a directory", &e))?;
        }
        Ok(())
    }
    fn get(&self, id: &str, _options: &MountOptions) -> Result<PathBuf> {
        self.existing(id, "mount")
    }
    fn put(&self, id: &str) -> Result<()> {
        self.existing(id, "unmount").map(|_| ())
    }
    fn exists(&self, id: &str) -> Result<bool> {
        Ok(is_valid_layer_id(id) && self.layer(id).is_dir())
    }
    fn list(&self) -> Result<Vec<String>> {
        Ok(fs::read_dir(self.home.join("layers"))
            .map_err(|e| DriverError::io("list", &e))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }
    fn cleanup(&self) -> Result<()> {
        Ok(())
    }
}

export_driver!(Faulty);
