//! A driver for tests of how core chooses a layer's diff method.
//!
//! By default it owns its layer format (`OWNS_DIFF_FORMAT`), as the Windows
//! driver does: `apply_diff` keeps the stream it is given as it is
//! (`<home>/layers/<id>/layer.tar`), `diff` hands that file back and
//! `diff_size` is its length. `get` gives an empty directory: the layer's
//! content is the stream, which core never applies itself. Every call of the
//! three format methods is appended to `<home>/calls`, so a test can tell
//! they were called.
//!
//! With the option `declare=native-diff:<format>` it claims native diffs in
//! whiteout format `<format>` instead (declared in its status), so a test can
//! show a format core does not know being refused when the store opens.

#![forbid(unsafe_code)]

use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;

#[cfg(windows)]
mod plain_home;

#[cfg(windows)]
use plain_home::LayerHome;
#[cfg(unix)]
use strata_driver_kit::{DriverOptions, LayerHome};
use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, GraphDriver, InitArgs, KeyValues,
    MountOptions, NATIVE_DIFF_WHITEOUTS_KEY, Result,
};

/// The stream a layer was given, inside its directory.
const STREAM: &str = "layer.tar";
/// The (empty) tree `get` gives, inside its directory.
const TREE: &str = "root";

pub struct FormatOwner {
    home: LayerHome,
    calls: PathBuf,
    /// `Some(format)`: claims native diffs in that whiteout format instead of
    /// owning the format.
    native_whiteouts: Option<String>,
}

impl FormatOwner {
    fn note(&self, call: &str, id: &str) {
        let line = format!("{call} {id}\n");
        let _ = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.calls)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }

    fn stream(&self, id: &str, operation: &str) -> Result<PathBuf> {
        Ok(self.home.existing(id, operation)?.join(STREAM))
    }
}

impl DriverPlugin for FormatOwner {
    const NAME: &'static str = "format-owner";
    const DESCRIPTION: &'static str = "keeps each layer's stream as given (tests only)";

    fn init(args: &InitArgs) -> Result<Self> {
        #[cfg(unix)]
        DriverOptions::new("format-owner option", &args.options, &["declare"])?;
        #[cfg(windows)]
        if let Some((key, _)) = args.options.iter().find(|(k, _)| *k != "declare") {
            return Err(DriverError::invalid_input(format!(
                "unknown format-owner option '{key}' (known: declare)"
            )));
        }
        let declared = args.options.get("declare").unwrap_or("owns-format");
        let native_whiteouts = match declared.split_once(':') {
            None if declared == "owns-format" => None,
            Some(("native-diff", format)) => Some(format.to_string()),
            _ => {
                return Err(DriverError::invalid_input(format!(
                    "format-owner option declare={declared}: owns-format or native-diff:<format>"
                )));
            }
        };
        fs::create_dir_all(&args.home).map_err(|e| {
            DriverError::io(
                format!("init format-owner: create {}", args.home.display()),
                &e,
            )
        })?;
        Ok(FormatOwner {
            home: LayerHome::open(&args.home)?,
            calls: args.home.join("calls"),
            native_whiteouts,
        })
    }
}

impl GraphDriver for FormatOwner {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn status(&self) -> KeyValues {
        let mut status = KeyValues::new();
        if let Some(format) = &self.native_whiteouts {
            status.push(NATIVE_DIFF_WHITEOUTS_KEY, format.clone());
        }
        status
    }

    fn capabilities(&self) -> Capabilities {
        match self.native_whiteouts {
            Some(_) => Capabilities::NATIVE_DIFF,
            None => Capabilities::OWNS_DIFF_FORMAT,
        }
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let dir = self.home.existing(id, "metadata of")?;
        Ok([("path", dir.display().to_string())].into_iter().collect())
    }

    fn create(&self, id: &str, parent: Option<&str>, _options: &CreateOptions) -> Result<()> {
        if self.home.exists(id) {
            return Err(DriverError::already_exists(format!(
                "create layer {id}: layer exists"
            )));
        }
        if let Some(parent) = parent {
            self.home
                .existing(parent, "create")
                .map_err(|e| e.context(format!("create layer {id}: parent {parent}")))?;
        }
        let staging = self.home.stage(id, "create")?;
        let tree = staging.path().join(TREE);
        fs::create_dir(&tree).map_err(|e| {
            DriverError::io(format!("create layer {id}: create {}", tree.display()), &e)
        })?;
        self.home.place(staging, id, parent, "create").map(|_| ())
    }

    fn remove(&self, id: &str) -> Result<()> {
        self.home.remove(id, "remove", |_| Ok(()))
    }

    fn get(&self, id: &str, _options: &MountOptions) -> Result<PathBuf> {
        Ok(self.home.existing(id, "mount")?.join(TREE))
    }

    fn put(&self, id: &str) -> Result<()> {
        self.home.existing(id, "unmount").map(|_| ())
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Ok(self.home.exists(id))
    }

    fn list(&self) -> Result<Vec<String>> {
        self.home.list()
    }

    fn cleanup(&self) -> Result<()> {
        self.home.collect_leftovers();
        Ok(())
    }

    fn diff(&self, id: &str, _parent: Option<&str>) -> Result<Box<dyn Read + Send>> {
        self.note("diff", id);
        let path = self.stream(id, "diff of")?;
        let file = fs::File::open(&path).map_err(|e| {
            DriverError::io(format!("diff of layer {id}: open {}", path.display()), &e)
        })?;
        Ok(Box::new(file))
    }

    fn apply_diff(
        &self,
        id: &str,
        _parent: Option<&str>,
        diff: &mut (dyn Read + Send),
    ) -> Result<u64> {
        self.note("apply_diff", id);
        let path = self.stream(id, "apply a diff to")?;
        let partial = path.with_extension("partial");
        let failed = |e: std::io::Error| {
            DriverError::io(
                format!("apply a diff to layer {id}: write {}", partial.display()),
                &e,
            )
        };
        let mut file = fs::File::create(&partial).map_err(failed)?;
        let size = std::io::copy(diff, &mut file).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        fs::rename(&partial, &path).map_err(failed)?;
        Ok(size)
    }

    fn diff_size(&self, id: &str, _parent: Option<&str>) -> Result<u64> {
        self.note("diff_size", id);
        let path = self.stream(id, "diff size of")?;
        fs::metadata(&path).map(|m| m.len()).map_err(|e| {
            DriverError::io(
                format!("diff size of layer {id}: stat {}", path.display()),
                &e,
            )
        })
    }
}

strata_plugin_abi::export_driver!(FormatOwner);
