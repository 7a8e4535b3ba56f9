//! # strata-driver-windows
//!
//! Windows container layers through the Host Compute Service. This version
//! is the first part of that driver: the library builds for
//! `x86_64-pc-windows-gnu` (and, answering "not supported", everywhere
//! else), loads through the plugin ABI, finds computestorage.dll at run
//! time and says why it cannot work where it is missing; the layer format
//! it will own (Windows layer tars to and from backup streams) is
//! `strata-windows-layer`. The layer operations on HCS are not built yet,
//! so even where HCS is present the driver answers "not supported" and
//! says so: selection passes over it rather than picking a driver that
//! cannot make a layer.

#[cfg(windows)]
mod hcs;

/// The layer format the driver owns.
pub use strata_windows_layer as layer_format;

use std::path::PathBuf;

use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, GraphDriver, InitArgs, KeyValues,
    MountOptions, Result,
};

/// The driver (never constructed until its layer operations exist: `init`
/// answers why it cannot run here).
pub struct WindowsDriver {
    _home: PathBuf,
}

/// Why the driver does not run on this system.
pub fn unavailable_reason() -> String {
    #[cfg(windows)]
    {
        match hcs::ComputeStorage::get() {
            Err(missing) => format!(
                "{missing} — enable the Windows Containers feature (Windows Server, or Windows 10/11 Pro with Containers)"
            ),
            Ok(_) => "the Host Compute Service is here, but this version of the windows driver does not \
                      make layers yet (it loads, probes and owns the layer format; layer operations come next)"
                .to_string(),
        }
    }
    #[cfg(not(windows))]
    {
        "the windows driver runs only on Windows: it drives the Host Compute Service (computestorage.dll)".to_string()
    }
}

fn not_here(operation: &str, id: &str) -> DriverError {
    DriverError::not_supported(format!(
        "{operation} of layer {id}: {}",
        unavailable_reason()
    ))
}

impl DriverPlugin for WindowsDriver {
    const NAME: &'static str = "windows";
    const DESCRIPTION: &'static str = "Windows container layers through the Host Compute Service";

    fn init(args: &InitArgs) -> Result<Self> {
        tracing::debug!(home = %args.home.display(), "windows driver probed");
        Err(DriverError::not_supported(format!(
            "init windows: {}",
            unavailable_reason()
        )))
    }
}

impl GraphDriver for WindowsDriver {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn status(&self) -> KeyValues {
        KeyValues::default()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::OWNS_DIFF_FORMAT
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        Err(not_here("metadata", id))
    }

    fn create(&self, id: &str, _parent: Option<&str>, _options: &CreateOptions) -> Result<()> {
        Err(not_here("create", id))
    }

    fn remove(&self, id: &str) -> Result<()> {
        Err(not_here("remove", id))
    }

    fn get(&self, id: &str, _options: &MountOptions) -> Result<PathBuf> {
        Err(not_here("get", id))
    }

    fn put(&self, id: &str) -> Result<()> {
        Err(not_here("put", id))
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Err(not_here("exists", id))
    }

    fn list(&self) -> Result<Vec<String>> {
        Err(not_here("list", "(all)"))
    }

    fn cleanup(&self) -> Result<()> {
        Ok(())
    }
}

strata_plugin_abi::export_driver!(WindowsDriver);
