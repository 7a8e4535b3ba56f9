//! # strata-driver-windows
//!
//! Windows container layers through the Host Compute Service
//! (computestorage.dll). An image layer is imported by HCS from the
//! transport folder its Windows layer tar becomes (`HcsImportLayer`); a
//! container's layer is a writable layer over its image's chain
//! (`HcsInitializeWritableLayer`), whose merged view `get` attaches
//! (`HcsAttachLayerStorageFilter`) and `put` detaches; a layer's diff is
//! HCS's export of it (`HcsExportLayer`) written back as a tar; remove is
//! `HcsDestroyLayer`. The driver owns its layer format
//! (`OWNS_DIFF_FORMAT`): the conversion is `strata-windows-layer`, with no
//! Windows API, tested on every platform; the layer bookkeeping is
//! [`store`], tested on every platform against a stand-in for HCS; only
//! `hcs.rs` calls Windows.
//!
//! computestorage.dll is found at run time, so the library loads where it
//! is missing (Windows without the Containers feature, Wine) and answers
//! "not supported" with the reason; on other systems it always does.

#[cfg(windows)]
mod hcs;
pub mod layer_data;
pub mod store;

/// The layer format the driver owns.
pub use strata_windows_layer as layer_format;

use std::io::Read;
use std::path::PathBuf;

use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, GraphDriver, InitArgs, KeyValues,
    MountOptions, Result,
};

use store::LayerStore;

/// The Host Compute Service, where there is one.
#[cfg(windows)]
type Service = hcs::HostComputeService;

/// No Host Compute Service: nothing of this type exists, so a driver is
/// never made (`init` answers why).
#[cfg(not(windows))]
pub enum Service {}

#[cfg(not(windows))]
use std::path::Path;

#[cfg(not(windows))]
impl store::Hcs for Service {
    fn layer_guid(&self, _: &str) -> Result<String> {
        match *self {}
    }
    fn initialize_writable_layer(&self, _: &Path, _: &layer_data::LayerData) -> Result<()> {
        match *self {}
    }
    fn import_layer(&self, _: &Path, _: &Path, _: &layer_data::LayerData) -> Result<()> {
        match *self {}
    }
    fn export_layer(&self, _: &Path, _: &Path, _: &layer_data::LayerData, _: bool) -> Result<()> {
        match *self {}
    }
    fn attach_filter(&self, _: &Path, _: &layer_data::LayerData) -> Result<()> {
        match *self {}
    }
    fn detach_filter(&self, _: &Path) -> Result<()> {
        match *self {}
    }
    fn destroy_layer(&self, _: &Path) -> Result<()> {
        match *self {}
    }
}

/// The driver: the layers of one home.
pub struct WindowsDriver {
    store: LayerStore<Service>,
}

/// Why the driver does not run on this system, if it does not.
pub fn unavailable_reason() -> Option<String> {
    #[cfg(windows)]
    {
        hcs::HostComputeService::get().err().map(|missing| {
            format!(
                "{missing} — enable the Windows Containers feature (Windows Server, or Windows 10/11 Pro with Containers)"
            )
        })
    }
    #[cfg(not(windows))]
    {
        Some("the windows driver runs only on Windows: it drives the Host Compute Service (computestorage.dll)".to_string())
    }
}

impl DriverPlugin for WindowsDriver {
    const NAME: &'static str = "windows";
    const DESCRIPTION: &'static str = "Windows container layers through the Host Compute Service";

    fn init(args: &InitArgs) -> Result<Self> {
        if let Some(reason) = unavailable_reason() {
            return Err(DriverError::not_supported(format!(
                "init windows: {reason}"
            )));
        }
        if let Some((key, _)) = args.options.iter().next() {
            return Err(DriverError::invalid_input(format!(
                "init windows: unknown option '{key}' (the windows driver takes none)"
            )));
        }
        #[cfg(windows)]
        {
            let service = hcs::HostComputeService::get()
                .map_err(|e| DriverError::not_supported(format!("init windows: {e}")))?;
            let store =
                LayerStore::open(&args.home, service).map_err(|e| e.context("init windows"))?;
            Ok(WindowsDriver { store })
        }
        #[cfg(not(windows))]
        unreachable!("unavailable_reason answers on every other system")
    }
}

impl GraphDriver for WindowsDriver {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn status(&self) -> KeyValues {
        let mut status = KeyValues::default();
        status.push(
            "layers",
            self.store.list().map_or(0, |l| l.len()).to_string(),
        );
        status
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::OWNS_DIFF_FORMAT
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let record = self.store.record(id, "read the metadata of")?;
        let mut facts = KeyValues::default();
        facts.push(
            "folder",
            self.store.folder(id, "read")?.display().to_string(),
        );
        facts.push("read_write", record.read_write.to_string());
        if let Some(parent) = record.parent {
            facts.push("parent", parent);
        }
        Ok(facts)
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        if let Some((key, _)) = options.storage_opts.iter().next() {
            return Err(DriverError::invalid_input(format!(
                "create layer {id}: unknown storage option '{key}' (the windows driver takes none)"
            )));
        }
        self.store.create(id, parent, options.read_write)
    }

    fn remove(&self, id: &str) -> Result<()> {
        self.store.remove(id)
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        if let Some(option) = options.options.iter().find(|o| o.as_str() != "rw") {
            return Err(DriverError::invalid_input(format!(
                "mount layer {id}: option '{option}' is not one a Windows layer takes"
            )));
        }
        self.store.get(id)
    }

    fn put(&self, id: &str) -> Result<()> {
        self.store.put(id)
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Ok(self.store.exists(id))
    }

    fn list(&self) -> Result<Vec<String>> {
        self.store.list()
    }

    fn cleanup(&self) -> Result<()> {
        Ok(())
    }

    fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn Read + Send>> {
        self.check_parent(id, parent, "diff")?;
        self.store.diff(id)
    }

    fn apply_diff(
        &self,
        id: &str,
        parent: Option<&str>,
        diff: &mut (dyn Read + Send),
    ) -> Result<u64> {
        self.check_parent(id, parent, "apply a diff to")?;
        self.store.apply_diff(id, diff)
    }

    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        let mut diff = self.diff(id, parent)?;
        std::io::copy(&mut diff, &mut std::io::sink())
            .map_err(|e| DriverError::io(format!("diff size of layer {id}"), &e))
    }
}

impl WindowsDriver {
    /// A diff is always against the layer's own parent (HCS exports and
    /// imports a layer over its chain): another parent is refused.
    fn check_parent(&self, id: &str, parent: Option<&str>, operation: &str) -> Result<()> {
        let record = self.store.record(id, operation)?;
        if record.parent.as_deref() != parent {
            return Err(DriverError::not_supported(format!(
                "{operation} layer {id} against {}: a Windows layer's diff is against its own \
                 parent ({})",
                parent.unwrap_or("no parent"),
                record.parent.as_deref().unwrap_or("none")
            )));
        }
        Ok(())
    }
}

strata_plugin_abi::export_driver!(WindowsDriver);
