//! The host side: loading driver libraries and calling them as `GraphDriver`s.

use std::io::Read;
use std::path::{Path, PathBuf};

use abi_stable::library::{LibraryError, RootModule, lib_header_from_path};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr};

use crate::driver::GraphDriver;
use crate::error::{DriverError, Result};
use crate::ffi::{
    ByteSource_TO, ByteSourceAsRead, DriverBox, DriverModuleRef, DriverObject_TO, FfiCreateOptions,
    FfiInitArgs, FfiLogRecord, FfiMountOptions, LogSink, LogSink_TO, ReadAsByteSource,
    key_values_from_ffi,
};
use crate::log_codes::{filter_code, level_from_code};
use crate::types::{
    Capabilities, CreateOptions, InitArgs, KeyValues, MountOptions, MountSpec, NativeDiff,
};

/// The ABI version this host speaks (the version of this crate). A library
/// loads when its major matches.
pub const HOST_ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a library could not be used as a driver.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The dynamic loader could not open the file (missing, unreadable, not
    /// a shared object for this machine, unresolved symbols).
    #[error("cannot load {path}: {reason}")]
    Open {
        /// The library file, as the host was given it.
        path: PathBuf,
        /// The loader's error.
        reason: String,
    },
    /// The file loaded but is not a strata driver: no abi_stable library
    /// header, or a root module of some other kind.
    #[error("{path} is not a strata driver plugin: {reason}")]
    NotAPlugin {
        /// The library file, as the host was given it.
        path: PathBuf,
        /// What is missing or foreign, on one line.
        reason: String,
    },
    /// The library was built against a strata-plugin-abi whose major version
    /// differs from this host's; it must be rebuilt.
    #[error(
        "{path} was built against strata-plugin-abi {found}, this host speaks {expected}: the major versions differ; rebuild the driver against strata-plugin-abi {expected_major}.x"
    )]
    IncompatibleVersion {
        /// The library file, as the host was given it.
        path: PathBuf,
        /// The strata-plugin-abi version the library was built against.
        found: String,
        /// This host's version, [`HOST_ABI_VERSION`].
        expected: String,
        /// The major part of `expected`, for the "rebuild against N.x" advice.
        expected_major: String,
    },
    /// One line: the file, what differs, what to rebuild. The full
    /// comparison (hundreds of lines) is in `details`, and logged at debug
    /// level when the library is opened.
    #[error(
        "{path} claims strata-plugin-abi {found} but its driver module does not have that version's layout ({what}); rebuild the driver against this strata's strata-plugin-abi {found} (the full comparison is logged at --log-level debug)"
    )]
    LayoutMismatch {
        /// The library file, as the host was given it.
        path: PathBuf,
        /// The strata-plugin-abi version the library claims.
        found: String,
        /// The innermost type that differs and how, in a few words.
        what: String,
        /// abi_stable's full layout comparison, for bug reports.
        details: String,
    },
    /// The library is a compatible driver but its `init` failed; `error` has
    /// the driver's kind (`NotSupported` when its backend is missing here).
    #[error("{path}: the {driver} driver failed to start: {error}")]
    Init {
        /// The library file, as the host was given it.
        path: PathBuf,
        /// The driver's name, as its library exports it.
        driver: String,
        /// What the driver's `init` returned.
        error: DriverError,
    },
}

impl LoadError {
    /// The driver error, when the library loaded but the driver refused to start.
    pub fn driver_error(&self) -> Option<&DriverError> {
        match self {
            LoadError::Init { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A driver library, opened and checked, not yet started.
#[derive(Clone)]
pub struct PluginLibrary {
    path: PathBuf,
    module: Module,
    abi_version: String,
}

/// The root module of a library, in the layout of the minor it was built
/// against (see `abi_1_0`).
#[derive(Clone, Copy)]
enum Module {
    Current(DriverModuleRef),
    Release1_0(crate::abi_1_0::DriverModuleRef),
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .field("name", &self.name())
            .field("abi_version", &self.abi_version)
            .finish()
    }
}

impl PluginLibrary {
    /// Opens the library at `path` and checks that it is a strata driver of a
    /// compatible ABI version and layout. The library stays loaded for the life
    /// of the process (unloading code that may still be referenced is unsound).
    pub fn open(path: &Path) -> Result<PluginLibrary, LoadError> {
        let path = path.to_path_buf();
        // lib_header_from_path + init_root_module, not RootModule::load_from_file:
        // the latter caches one module per type, so a second driver would
        // silently come back as the first.
        let header = lib_header_from_path(&path).map_err(|e| match e {
            LibraryError::OpenError { err, .. } => LoadError::Open {
                path: path.clone(),
                reason: err.to_string(),
            },
            other => LoadError::NotAPlugin {
                path: path.clone(),
                reason: one_line(&other.to_string()),
            },
        })?;
        let found = header.version_strings().version.to_string();
        // A driver built against 1.0 lacks the methods 1.1 appended, which
        // abi_stable refuses against this host's own types: it is checked,
        // field by field as always, against 1.0's frozen types instead.
        let module = if found.starts_with("1.0.") {
            header
                .init_root_module::<crate::abi_1_0::DriverModuleRef>()
                .map(|module| {
                    tracing::debug!(path = %path.display(), version = %found, "driver built against ABI 1.0: the methods 1.1 added answer not supported");
                    Module::Release1_0(module)
                })
        } else {
            header
                .init_root_module::<DriverModuleRef>()
                .map(Module::Current)
        }
        .map_err(|e| refusal(e, &path, &found, header))?;
        Ok(PluginLibrary {
            path,
            module,
            abi_version: found,
        })
    }

    /// The file the library was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The driver's name as the library exports it (`DriverPlugin::NAME`).
    pub fn name(&self) -> &'static str {
        match self.module {
            Module::Current(m) => m.name().as_str(),
            Module::Release1_0(m) => m.name().as_str(),
        }
    }

    /// The driver's one-line description, for `strata drivers`.
    pub fn description(&self) -> &'static str {
        match self.module {
            Module::Current(m) => m.description().as_str(),
            Module::Release1_0(m) => m.description().as_str(),
        }
    }

    /// The strata-plugin-abi version the library was built against.
    pub fn abi_version(&self) -> &str {
        &self.abi_version
    }

    /// Starts a driver from this library. Each call gives an independent driver.
    pub fn init(&self, args: &InitArgs) -> Result<LoadedDriver, LoadError> {
        let name = self.name().to_string();
        let sink = LogSink_TO::from_value(
            HostLogSink {
                driver: name.clone(),
            },
            TD_Opaque,
        );
        let max_level = filter_code(tracing::level_filters::LevelFilter::current());
        let ffi_args = FfiInitArgs::new(args, sink, max_level);
        let started = match self.module {
            Module::Current(m) => (m.init())(ffi_args),
            Module::Release1_0(m) => match (m.init())(ffi_args) {
                RResult::ROk(object) => RResult::ROk(DriverObject_TO::from_value(
                    crate::abi_1_0::Release1_0Object(object),
                    TD_Opaque,
                )),
                RResult::RErr(e) => RResult::RErr(e),
            },
        };
        match started {
            RResult::ROk(object) => Ok(LoadedDriver {
                name,
                path: self.path.clone(),
                object,
            }),
            RResult::RErr(err) => Err(LoadError::Init {
                path: self.path.clone(),
                driver: name,
                error: err.into(),
            }),
        }
    }
}

/// Why abi_stable refused the library at `path`, claiming ABI `found`, in
/// this host's words.
fn refusal(
    error: LibraryError,
    path: &Path,
    found: &str,
    header: &abi_stable::library::LibHeader,
) -> LoadError {
    let path = path.to_path_buf();
    match error {
        LibraryError::IncompatibleVersionNumber { .. } | LibraryError::ParseVersionError(_) => {
            LoadError::IncompatibleVersion {
                path,
                found: found.to_string(),
                expected: HOST_ABI_VERSION.to_string(),
                expected_major: HOST_ABI_VERSION
                    .split('.')
                    .next()
                    .unwrap_or("?")
                    .to_string(),
            }
        }
        LibraryError::AbiInstability(details) => {
            let details = details.to_string();
            if header.root_mod_consts().name().as_str() != DriverModuleRef::NAME {
                LoadError::NotAPlugin {
                    path,
                    reason: format!(
                        "its root module is '{}', not a strata driver module",
                        header.root_mod_consts().name()
                    ),
                }
            } else {
                tracing::debug!(path = %path.display(), %details, "driver module layout differs");
                LoadError::LayoutMismatch {
                    path,
                    found: found.to_string(),
                    what: layout_difference(&details),
                    details,
                }
            }
        }
        other => LoadError::NotAPlugin {
            path,
            reason: one_line(&other.to_string()),
        },
    }
}

/// Opens the driver library at `path` and starts a driver with `args`.
pub fn load_driver(path: &Path, args: &InitArgs) -> Result<LoadedDriver, LoadError> {
    PluginLibrary::open(path)?.init(args)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A driver running from a library, called through the ABI.
pub struct LoadedDriver {
    name: String,
    path: PathBuf,
    object: DriverBox,
}

impl LoadedDriver {
    /// The library the driver came from.
    pub fn library_path(&self) -> &Path {
        &self.path
    }
}

fn from_ffi<T, F>(result: RResult<F, crate::ffi::FfiError>, map: impl FnOnce(F) -> T) -> Result<T> {
    match result {
        RResult::ROk(value) => Ok(map(value)),
        RResult::RErr(err) => Err(err.into()),
    }
}

fn ropt(parent: Option<&str>) -> ROption<RStr<'_>> {
    parent.map(RStr::from_str).into()
}

impl GraphDriver for LoadedDriver {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn status(&self) -> KeyValues {
        key_values_from_ffi(self.object.status())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::from_bits(self.object.capabilities())
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        from_ffi(self.object.metadata(id.into()), key_values_from_ffi)
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        let options = FfiCreateOptions::from(options);
        from_ffi(
            self.object.create(id.into(), ropt(parent), &options),
            |()| (),
        )
    }

    fn remove(&self, id: &str) -> Result<()> {
        from_ffi(self.object.remove(id.into()), |()| ())
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        let options = FfiMountOptions::from(options);
        from_ffi(self.object.get(id.into(), &options), |p| p.to_path_buf())
    }

    fn put(&self, id: &str) -> Result<()> {
        from_ffi(self.object.put(id.into()), |()| ())
    }

    fn exists(&self, id: &str) -> Result<bool> {
        from_ffi(self.object.exists(id.into()), |b| b)
    }

    fn list(&self) -> Result<Vec<String>> {
        from_ffi(self.object.list(), |ids| {
            ids.into_iter().map(String::from).collect()
        })
    }

    fn cleanup(&self) -> Result<()> {
        from_ffi(self.object.cleanup(), |()| ())
    }

    fn native_diff(&self, id: &str) -> Result<Option<NativeDiff>> {
        from_ffi(self.object.native_diff(id.into()), |d| {
            d.into_option().map(NativeDiff::from)
        })
    }

    fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn Read + Send>> {
        from_ffi(self.object.diff(id.into(), ropt(parent)), |source| {
            Box::new(ByteSourceAsRead(source)) as Box<dyn Read + Send>
        })
    }

    fn apply_diff(
        &self,
        id: &str,
        parent: Option<&str>,
        diff: &mut (dyn Read + Send),
    ) -> Result<u64> {
        // The stream crosses as a trait object borrowed for this call only.
        let source = ByteSource_TO::from_value(ReadAsByteSource(diff), TD_Opaque);
        from_ffi(
            self.object.apply_diff(id.into(), ropt(parent), source),
            |n| n,
        )
    }

    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        from_ffi(self.object.diff_size(id.into(), ropt(parent)), |n| n)
    }

    fn describe_mount(&self, id: &str, options: &MountOptions) -> Result<Vec<MountSpec>> {
        from_ffi(
            self.object
                .describe_mount(id.into(), &FfiMountOptions::from(options)),
            |mounts| mounts.into_iter().map(MountSpec::from).collect(),
        )
    }
}

/// Receives a driver's log events and re-emits them through the host's tracing
/// subscriber under the target `strata::driver`, with the driver's name and the
/// event's original target as fields.
struct HostLogSink {
    driver: String,
}

impl LogSink for HostLogSink {
    fn log(&self, record: FfiLogRecord) {
        let driver = self.driver.as_str();
        let origin = record.target.as_str();
        let message = record.message.as_str();
        let fields = record.fields.as_str();
        macro_rules! emit {
            ($level:ident) => {
                if fields.is_empty() {
                    tracing::$level!(target: "strata::driver", driver, origin, "{message}")
                } else {
                    tracing::$level!(target: "strata::driver", driver, origin, "{message} {fields}")
                }
            };
        }
        match level_from_code(record.level) {
            Some(tracing::Level::ERROR) => emit!(error),
            Some(tracing::Level::WARN) => emit!(warn),
            Some(tracing::Level::INFO) => emit!(info),
            Some(tracing::Level::DEBUG) => emit!(debug),
            Some(_) => emit!(trace),
            None => {}
        }
    }
}

/// The gist of abi_stable's layout comparison: the innermost type whose
/// layout differs, the first error, and the fields expected and found.
fn layout_difference(details: &str) -> String {
    let lines: Vec<&str> = details.lines().map(str::trim).collect();
    let after = |marker: &str, prefix: &str, last: bool| {
        let mut positions = lines.iter().enumerate().filter(|(_, l)| **l == marker);
        let at = if last {
            positions.next_back()
        } else {
            positions.next()
        };
        at.and_then(|(i, _)| lines[i + 1..].iter().find_map(|l| l.strip_prefix(prefix)))
    };
    let ty = after("Layout of expected type:", "type:", true);
    let error = lines.iter().find_map(|l| l.strip_prefix("Error:"));
    let expected = after("Expected:", "field_name:", false);
    let found = after("Found:", "field_name:", false);
    let mut what = match (ty, error) {
        (Some(ty), Some(error)) => format!("type {ty}: {error}"),
        (Some(ty), None) => format!("type {ty} differs"),
        (None, Some(error)) => error.to_string(),
        (None, None) => "a type differs".to_string(),
    };
    if let (Some(expected), Some(found)) = (expected, found) {
        what.push_str(&format!(", expected field '{expected}', found '{found}'"));
    }
    what
}
