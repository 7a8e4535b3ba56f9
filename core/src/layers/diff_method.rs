//! The one place that chooses how a driver's layers become diffs and back:
//! applied, compared and exported. The choice is made once, when the store
//! opens, from what the driver declares; a declaration strata cannot honour
//! is refused then, with the reason, rather than ignored.

use super::*;
use crate::archive::WhiteoutFormat as Format;

/// The status key by which a driver claiming native diffs names the
/// whiteout format its diff directories keep, so that one strata cannot read
/// is refused when the store opens rather than when a layer is read.
pub use strata_plugin_abi::NATIVE_DIFF_WHITEOUTS_KEY;

/// How a layer's diff is applied, computed and exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffMethod {
    /// The driver owns its layer format (`OWNS_DIFF_FORMAT`): its own
    /// `apply_diff`, `diff` and `diff_size` are called, the stream is
    /// measured (digests, sizes) on its way in, and no tar-split record is
    /// kept (the driver's `diff` is the layer's diff).
    DriverStream,
    /// The driver keeps each layer's changes apart (`NATIVE_DIFF`), in
    /// directories whose deletions are kept in the declared format (or, for a
    /// driver that does not declare one, in the format each directory names):
    /// the layer format is applied into, read from and exported from there.
    /// A layer whose native diff is not exact now is compared as a tree.
    NativeDir(Option<Format>),
    /// The layer's tree (and its parent's) as `get` makes them available:
    /// applied onto, compared, and exported from.
    TreeWalk,
}

impl DiffMethod {
    /// The method for `driver`, from its capabilities (and, for native
    /// diffs, the whiteout format its status declares).
    pub fn for_driver(driver: &dyn GraphDriver) -> Result<DiffMethod> {
        let capabilities = driver.capabilities();
        if capabilities.contains(Capabilities::OWNS_DIFF_FORMAT) {
            return Ok(DiffMethod::DriverStream);
        }
        // The other two methods apply, compare and export Linux trees
        // (openat2, Unix modes, xattrs): refused here, when the store opens,
        // rather than when the first layer is made.
        if cfg!(not(unix)) {
            return Err(CoreError::Unsupported(format!(
                "driver '{}' does not own its layer format, and only such drivers work on this \
                 platform: applying and exporting layer trees works only on Linux",
                driver.name()
            )));
        }
        if !capabilities.contains(Capabilities::NATIVE_DIFF) {
            return Ok(DiffMethod::TreeWalk);
        }
        let status = driver.status();
        match status.get(NATIVE_DIFF_WHITEOUTS_KEY) {
            None => Ok(DiffMethod::NativeDir(None)),
            Some(name) => match Format::from_name(name) {
                Some(format) => Ok(DiffMethod::NativeDir(Some(format))),
                None => Err(CoreError::Unsupported(format!(
                    "driver '{}' keeps native diffs with '{name}' whiteouts, which this strata \
                     cannot read (it knows: {}); upgrade strata, or start the driver without \
                     native diffs",
                    driver.name(),
                    Format::ALL.map(Format::name).join(", ")
                ))),
            },
        }
    }

    /// A name for `strata status` and logs.
    pub fn describe(self) -> String {
        match self {
            DiffMethod::DriverStream => "the driver's own stream".into(),
            DiffMethod::NativeDir(Some(format)) => {
                format!("native diff directories ({format} whiteouts)")
            }
            DiffMethod::NativeDir(None) => "native diff directories".into(),
            DiffMethod::TreeWalk => "tree walk".into(),
        }
    }
}

impl LayerStore<'_> {
    /// How this store's layers become diffs and back.
    pub fn diff_method(&self) -> DiffMethod {
        self.diff_method
    }

    /// Layer `id`'s native diff directory and its whiteout format, when the
    /// method uses them and the driver has one exact now. A directory in a
    /// format strata cannot read is refused, naming the format.
    pub(super) fn native_dir(&self, id: &str) -> Result<Option<(PathBuf, Format)>> {
        let DiffMethod::NativeDir(declared) = self.diff_method else {
            return Ok(None);
        };
        let Some(native) = self.driver.native_diff(id)? else {
            return Ok(None);
        };
        let format = match native.whiteouts {
            strata_plugin_abi::WhiteoutFormat::Overlay => Format::Overlay,
            other => {
                let name = match other {
                    strata_plugin_abi::WhiteoutFormat::Aufs => "aufs".to_string(),
                    _ => format!("code {}", other.code()),
                };
                return Err(CoreError::Unsupported(format!(
                    "layer {id}: driver '{}' gives its native diff with {name} whiteouts, which \
                     this strata cannot read",
                    self.driver.name()
                )));
            }
        };
        if let Some(declared) = declared
            && declared != format
        {
            return Err(CoreError::Unsupported(format!(
                "layer {id}: driver '{}' declared {declared} whiteouts but gives {format} ones",
                self.driver.name()
            )));
        }
        Ok(Some((native.path, format)))
    }
}
