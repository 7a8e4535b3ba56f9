//! The driver template (conformance/template) with a fault planted, chosen by
//! the option `fault`:
//!
//! * `lose-xattrs`: a child layer loses its files' user.* xattrs;
//! * `leave-directory`: removing a layer leaves a directory in the home;
//! * `orphan-children`: a layer with children can be removed.
//!
//! The conformance suite's own tests run it to show each fault fails the
//! checks it should. The template's driver module is compiled in here by path
//! rather than linked: its library exports a root module of its own, and a
//! library can export only one.

use std::fs;
use std::path::{Path, PathBuf};

use strata_plugin_abi::*;

#[path = "../../../conformance/template/src/driver.rs"]
mod template;

use template::ExampleDriver;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    LoseXattrs,
    LeaveDirectory,
    OrphanChildren,
}

pub struct Faulty {
    inner: ExampleDriver,
    fault: Fault,
    home: PathBuf,
}

impl DriverPlugin for Faulty {
    const NAME: &'static str = "faulty";
    const DESCRIPTION: &'static str =
        "the template driver with a planted fault, for testing the conformance suite";

    fn init(args: &InitArgs) -> Result<Self> {
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
        let mut inner_args = args.clone();
        inner_args.options = args.options.iter().filter(|(k, _)| *k != "fault").collect();
        Ok(Faulty {
            inner: ExampleDriver::init(&inner_args)?,
            fault,
            home: args.home.clone(),
        })
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
        self.inner.status()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn metadata(&self, id: &str) -> Result<KeyValues> {
        self.inner.metadata(id)
    }
    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        self.inner.create(id, parent, options)?;
        if self.fault == Fault::LoseXattrs && parent.is_some() {
            strip_user_xattrs(&self.inner.get(id, &MountOptions::default())?);
        }
        Ok(())
    }
    fn remove(&self, id: &str) -> Result<()> {
        match self.fault {
            Fault::OrphanChildren => {
                // Takes the layer even when it has children.
                let path = self.inner.get(id, &MountOptions::default())?;
                fs::remove_dir_all(&path)
                    .map_err(|e| DriverError::io(format!("remove layer {id}"), &e))
            }
            Fault::LeaveDirectory => {
                self.inner.remove(id)?;
                fs::create_dir_all(self.home.join(format!("forgotten-{id}")))
                    .map_err(|e| DriverError::io("leave a directory", &e))
            }
            Fault::LoseXattrs => self.inner.remove(id),
        }
    }
    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        self.inner.get(id, options)
    }
    fn put(&self, id: &str) -> Result<()> {
        self.inner.put(id)
    }
    fn exists(&self, id: &str) -> Result<bool> {
        self.inner.exists(id)
    }
    fn list(&self) -> Result<Vec<String>> {
        self.inner.list()
    }
    fn cleanup(&self) -> Result<()> {
        self.inner.cleanup()
    }
}

export_driver!(Faulty);
