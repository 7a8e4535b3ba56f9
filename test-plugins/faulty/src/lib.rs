//! The driver template (conformance/template) with a fault planted, chosen by
//! the option `fault`:
//!
//! * `lose-xattrs`: a child layer loses its files' user.* xattrs;
//! * `leave-directory`: removing a layer leaves a directory in the home;
//! * `orphan-children`: a layer with children can be removed;
//! * `forget-parents-on-restart`: a start loses the parent records, so after
//!   a restart a parent can be removed under its child (restart behaviour);
//! * `ignore-mount-options`: `get` accepts any option and honours none;
//! * `cleanup-removes-layers`: `cleanup` deletes every layer;
//! * `partial-create`: a create refused for a bad storage option leaves the
//!   layer it had already made;
//! * `unchecked-ids`: `get`, `put`, `remove` and `metadata` use the id as a
//!   path without checking it (`../x` reaches outside the home);
//! * `write-outside-home`: a create writes a file beside the driver's home;
//! * `umask-root`: a new layer's root gets its mode from the umask;
//! * `racy-create`: two creates of the same id at once both succeed;
//! * `wipe-staging-at-start`: a start deletes every staging directory, a live
//!   process's too (the overlay bug of strata 0.1);
//! * `visible-while-building`: a child appears at once, empty, and is filled
//!   with its parent's tree afterwards (a kill leaves it half made).
//!
//! The conformance suite's own tests run it to show each fault fails the
//! checks it should. The template's driver module is compiled in here by path
//! rather than linked: its library exports a root module of its own, and a
//! library can export only one.

#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
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
    ForgetParentsOnRestart,
    IgnoreMountOptions,
    CleanupRemovesLayers,
    PartialCreate,
    UncheckedIds,
    WriteOutsideHome,
    UmaskRoot,
    RacyCreate,
    WipeStagingAtStart,
    VisibleWhileBuilding,
}

const FAULTS: [(&str, Fault); 13] = [
    ("lose-xattrs", Fault::LoseXattrs),
    ("leave-directory", Fault::LeaveDirectory),
    ("orphan-children", Fault::OrphanChildren),
    ("forget-parents-on-restart", Fault::ForgetParentsOnRestart),
    ("ignore-mount-options", Fault::IgnoreMountOptions),
    ("cleanup-removes-layers", Fault::CleanupRemovesLayers),
    ("partial-create", Fault::PartialCreate),
    ("unchecked-ids", Fault::UncheckedIds),
    ("write-outside-home", Fault::WriteOutsideHome),
    ("umask-root", Fault::UmaskRoot),
    ("racy-create", Fault::RacyCreate),
    ("wipe-staging-at-start", Fault::WipeStagingAtStart),
    ("visible-while-building", Fault::VisibleWhileBuilding),
];

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
        let asked = args.options.get("fault");
        let Some(fault) = FAULTS
            .iter()
            .find(|(name, _)| Some(*name) == asked)
            .map(|(_, f)| *f)
        else {
            let names: Vec<&str> = FAULTS.iter().map(|(n, _)| *n).collect();
            return Err(DriverError::invalid_input(format!(
                "faulty: option fault must be one of {}, not {asked:?}",
                names.join(", ")
            )));
        };
        let mut inner_args = args.clone();
        inner_args.options = args.options.iter().filter(|(k, _)| *k != "fault").collect();
        let layers = args.home.join("layers");
        if fault == Fault::WipeStagingAtStart {
            // The kit's staging, live makers' work included.
            for entry in fs::read_dir(layers.join(".staging"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.file_name().to_string_lossy().starts_with(".new-") {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let inner = ExampleDriver::init(&inner_args)?;
        if fault == Fault::ForgetParentsOnRestart {
            for entry in fs::read_dir(&layers).into_iter().flatten().flatten() {
                let _ = fs::remove_file(entry.path().join("parent"));
            }
        }
        Ok(Faulty {
            inner,
            fault,
            home: args.home.clone(),
        })
    }
}

impl Faulty {
    /// A layer's tree by its id used as a path, unchecked.
    fn unchecked_tree(&self, id: &str) -> PathBuf {
        self.home.join("layers").join(id).join("tree")
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

/// Copies the tree at `from` into the existing directory `to`, in this
/// process (so a kill stops it half way).
fn copy_into(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            fs::create_dir(&target)?;
            copy_into(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn current_umask() -> u32 {
    let mask = rustix::process::umask(rustix::fs::Mode::empty());
    rustix::process::umask(mask);
    mask.bits()
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
        if self.fault == Fault::UncheckedIds && !is_valid_layer_id(id) {
            let tree = self.unchecked_tree(id);
            return Ok([("path", tree.display().to_string())].into_iter().collect());
        }
        self.inner.metadata(id)
    }
    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        match self.fault {
            Fault::PartialCreate if !options.storage_opts.is_empty() => {
                // Makes the layer, then refuses the option, leaving it.
                self.inner.create(id, parent, &CreateOptions::default())?;
                return Err(DriverError::invalid_input(format!(
                    "create layer {id}: unknown storage option"
                )));
            }
            Fault::RacyCreate => {
                return match self.inner.create(id, parent, options) {
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
                    other => other,
                };
            }
            Fault::VisibleWhileBuilding if parent.is_some() => {
                let source = self
                    .inner
                    .get(parent.unwrap_or_default(), &MountOptions::default())?;
                self.inner.create(id, None, options)?;
                let target = self.inner.get(id, &MountOptions::default())?;
                // Filled in place, file by file, while it is already listed.
                return copy_into(&source, &target)
                    .map_err(|e| DriverError::io(format!("create layer {id}: fill"), &e));
            }
            Fault::WriteOutsideHome => {
                if let Some(graph_root) = self.home.parent() {
                    let _ = fs::write(graph_root.join("faulty-was-here"), id);
                }
            }
            _ => {}
        }
        self.inner.create(id, parent, options)?;
        match self.fault {
            Fault::LoseXattrs if parent.is_some() => {
                strip_user_xattrs(&self.inner.get(id, &MountOptions::default())?);
            }
            Fault::UmaskRoot if parent.is_none() => {
                let root = self.inner.get(id, &MountOptions::default())?;
                fs::set_permissions(&root, fs::Permissions::from_mode(0o777 & !current_umask()))
                    .map_err(|e| DriverError::io("set the root's mode", &e))?;
            }
            _ => {}
        }
        Ok(())
    }
    fn remove(&self, id: &str) -> Result<()> {
        match self.fault {
            Fault::OrphanChildren => {
                // Takes the layer even when it has children.
                let path = self.inner.get(id, &MountOptions::default())?;
                let layer = path.parent().expect("a tree is inside its layer");
                fs::remove_dir_all(layer)
                    .map_err(|e| DriverError::io(format!("remove layer {id}"), &e))
            }
            Fault::LeaveDirectory => {
                self.inner.remove(id)?;
                fs::create_dir_all(self.home.join(format!("forgotten-{id}")))
                    .map_err(|e| DriverError::io("leave a directory", &e))
            }
            Fault::UncheckedIds if !is_valid_layer_id(id) => {
                fs::remove_dir_all(self.unchecked_tree(id))
                    .map_err(|e| DriverError::io(format!("remove layer {id}"), &e))
            }
            _ => self.inner.remove(id),
        }
    }
    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        match self.fault {
            Fault::IgnoreMountOptions => self.inner.get(id, &MountOptions::default()),
            Fault::UncheckedIds if !is_valid_layer_id(id) => {
                let tree = self.unchecked_tree(id);
                if tree.exists() {
                    Ok(tree)
                } else {
                    Err(DriverError::not_found(format!(
                        "mount layer {id}: no such layer"
                    )))
                }
            }
            _ => self.inner.get(id, options),
        }
    }
    fn put(&self, id: &str) -> Result<()> {
        if self.fault == Fault::UncheckedIds && !is_valid_layer_id(id) {
            return Ok(());
        }
        self.inner.put(id)
    }
    fn exists(&self, id: &str) -> Result<bool> {
        self.inner.exists(id)
    }
    fn list(&self) -> Result<Vec<String>> {
        self.inner.list()
    }
    fn cleanup(&self) -> Result<()> {
        if self.fault == Fault::CleanupRemovesLayers {
            for id in self.inner.list()? {
                let _ = fs::remove_dir_all(self.home.join("layers").join(id));
            }
        }
        self.inner.cleanup()
    }
}

export_driver!(Faulty);
