//! Choosing and starting the storage driver.
//!
//! An explicit driver (flag, environment or file) is used or the command fails.
//! Without one, a graph root that remembers its driver gets that driver; a new
//! graph root gets the first of btrfs, zfs, overlay, devicemapper, vfs that
//! starts here (on Windows: windows). A driver answering "not supported" is passed over, with the
//! reason logged; any other failure stops the choice, since a driver that is
//! present but broken should be fixed rather than silently replaced.

use std::path::{Path, PathBuf};

use serde::Serialize;
use strata_plugin_abi::{ErrorKind, InitArgs, LoadError, LoadedDriver, PluginLibrary};

use crate::config::Config;
use crate::discovery::{self, FoundPlugin, SearchDir};
use crate::error::{CoreError, Result};
use crate::fsutil;
use crate::graphroot;

/// The order automatic selection tries drivers in: those that share data
/// between layers natively first, the copying vfs last.
#[cfg(unix)]
pub const PRIORITY: &[&str] = &["btrfs", "zfs", "overlay", "devicemapper", "vfs"];
/// The order automatic selection tries drivers in: on Windows only the
/// windows driver's layers (the Host Compute Service's) are container layers.
#[cfg(windows)]
pub const PRIORITY: &[&str] = &["windows"];

/// A running driver and how it came to be chosen.
pub struct SelectedDriver {
    /// The started driver, its library kept loaded for as long as it lives.
    pub driver: LoadedDriver,
    /// The driver's name, e.g. "overlay"; also the name of its home under the
    /// graph root.
    pub name: String,
    /// The library file it was loaded from.
    pub library: PathBuf,
    /// Why this driver: "configured", "the graph root was made by it", ...
    pub reason: String,
    /// Drivers tried before this one, with why each was passed over.
    pub passed_over: Vec<PassedOver>,
}

/// A driver automatic selection tried and did not choose.
#[derive(Clone, Debug, Serialize)]
pub struct PassedOver {
    /// The driver's name.
    pub driver: String,
    /// Why it was passed over: "not installed", or the driver's own
    /// "not supported" message.
    pub reason: String,
}

/// Opens and starts the driver the configuration calls for.
pub fn open_driver(config: &Config) -> Result<SelectedDriver> {
    let dirs = discovery::search_dirs(config);
    let owner = graphroot::recorded_driver(&config.graphroot)?;

    let recorded = owner.is_some();
    let selected = match (&config.driver, owner) {
        (Some(wanted), Some(owner)) if *wanted != owner => {
            return Err(CoreError::GraphrootOwned {
                graphroot: config.graphroot.clone(),
                owner,
                requested: wanted.clone(),
            });
        }
        (Some(wanted), _) => start_named(config, &dirs, wanted, "configured")?,
        (None, Some(owner)) => start_named(config, &dirs, &owner, "the graph root was made by it")?,
        (None, None) => choose(config, &dirs)?,
    };
    // Recorded once, by the first open: the record never changes after, and
    // writing it (durably) on every command would cost an fsync each.
    if !recorded {
        graphroot::record_driver(&config.graphroot, &selected.name)?;
    }
    tracing::info!(
        driver = %selected.name,
        library = %selected.library.display(),
        reason = %selected.reason,
        "storage driver chosen"
    );
    Ok(selected)
}

fn unknown_driver(dirs: &[SearchDir], name: &str) -> CoreError {
    let available: Vec<String> = discovery::find_plugins(dirs)
        .into_iter()
        .filter(|p| p.shadowed_by.is_none())
        .map(|p| p.name)
        .collect();
    CoreError::UnknownDriver {
        name: name.to_string(),
        searched: discovery::describe(dirs),
        available: if available.is_empty() {
            "; no drivers were found at all".to_string()
        } else {
            format!("; found: {}", available.join(", "))
        },
    }
}

fn start_named(
    config: &Config,
    dirs: &[SearchDir],
    name: &str,
    reason: &str,
) -> Result<SelectedDriver> {
    let plugin = discovery::find_plugin(dirs, name).ok_or_else(|| unknown_driver(dirs, name))?;
    let library = open_library(&plugin)?;
    let driver = start(config, &library)?;
    Ok(SelectedDriver {
        driver,
        name: name.to_string(),
        library: plugin.path,
        reason: reason.to_string(),
        passed_over: Vec::new(),
    })
}

fn choose(config: &Config, dirs: &[SearchDir]) -> Result<SelectedDriver> {
    let mut passed_over = Vec::new();
    let mut pass = |driver: &str, reason: String| {
        tracing::info!(driver, %reason, "driver passed over");
        passed_over.push(PassedOver {
            driver: driver.to_string(),
            reason,
        });
    };
    for &name in PRIORITY {
        let Some(plugin) = discovery::find_plugin(dirs, name) else {
            pass(name, "not installed".to_string());
            continue;
        };
        // A library that is there but cannot be used (junk, another ABI,
        // untrusted) is not the machine lacking a feature: choosing the next
        // driver would record it for this graph root for good, so the choice
        // stops here, with why.
        let library = open_library(&plugin).map_err(|e| CoreError::BrokenChoice {
            driver: name.to_string(),
            source: Box::new(e),
        })?;
        match start(config, &library) {
            Ok(driver) => {
                let reason = if passed_over.is_empty() {
                    "first choice that works here".to_string()
                } else {
                    format!(
                        "first that works here (passed over {})",
                        passed_over
                            .iter()
                            .map(|p: &PassedOver| p.driver.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Ok(SelectedDriver {
                    driver,
                    name: name.to_string(),
                    library: plugin.path,
                    reason,
                    passed_over,
                });
            }
            Err(CoreError::Load(LoadError::Init { error, .. }))
                if error.kind() == ErrorKind::NotSupported =>
            {
                pass(name, error.message().to_string());
            }
            Err(other) => return Err(other),
        }
    }
    let mut attempts = passed_over
        .iter()
        .map(|p| format!("  {}: {}", p.driver, p.reason))
        .collect::<Vec<_>>();
    if passed_over.iter().any(|p| p.reason == "not installed") {
        // Where "not installed" was looked for, so a binary copied alone
        // says where its drivers should be.
        attempts.push(format!(
            "searched for {}<name>{} in: {}",
            discovery::LIBRARY_PREFIX,
            discovery::LIBRARY_SUFFIX,
            dirs.iter()
                .map(|d| format!("{} ({})", d.path.display(), d.origin))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Err(CoreError::NoDriverAvailable {
        attempts: attempts.join("\n"),
    })
}

fn open_library(plugin: &FoundPlugin) -> Result<PluginLibrary> {
    if let Some(reason) = discovery::untrusted_because(&plugin.path) {
        return Err(CoreError::UntrustedLibrary {
            path: plugin.path.clone(),
            reason,
        });
    }
    let library = PluginLibrary::open(&plugin.path)?;
    if library.name() != plugin.name {
        return Err(CoreError::Setting(format!(
            "{} is named for driver '{}' but holds driver '{}'",
            plugin.path.display(),
            plugin.name,
            library.name()
        )));
    }
    Ok(library)
}

/// The arguments a driver gets for this configuration.
pub fn init_args(config: &Config, name: &str) -> InitArgs {
    InitArgs {
        home: config.graphroot.join(name),
        run_root: config.runroot.join(name),
        options: config.options_for(name),
        ..Default::default()
    }
}

/// Starts `library`'s driver on its home under the graph root. If it refuses,
/// the directories made for it are taken away again, so a failed start
/// creates nothing.
fn start(config: &Config, library: &PluginLibrary) -> Result<LoadedDriver> {
    let args = init_args(config, library.name());
    let mut created = Vec::new();
    for dir in [&args.home, &args.run_root] {
        created.extend(
            fsutil::create_dirs_tracked(dir)
                .map_err(|e| CoreError::io("create directory", dir.clone(), e))?,
        );
    }
    match library.init(&args) {
        Ok(driver) => Ok(driver),
        Err(e) => {
            for dir in created.iter().rev() {
                if let Err(cleanup) = fsutil::remove_if_only_empty_dirs(dir) {
                    tracing::warn!(path = %dir.display(), error = %cleanup, "could not remove a directory made for a driver that did not start");
                }
            }
            // An option the driver refuses came from the configuration
            // file: the message names the file and the table.
            if let (Some(source), Some(error)) = (&config.source, e.driver_error())
                && error.kind() == ErrorKind::InvalidInput
                && !args.options.is_empty()
            {
                return Err(CoreError::Config {
                    path: source.clone(),
                    message: format!("[storage.options.{}]: {error}", library.name()),
                });
            }
            Err(e.into())
        }
    }
}

/// What `strata drivers` says about one library.
#[derive(Clone, Debug, Serialize)]
pub struct DriverReport {
    /// The driver name the library's file name promises.
    pub name: String,
    /// The library file.
    pub path: PathBuf,
    /// Why its directory is searched, as in [`SearchDir::origin`].
    pub origin: &'static str,
    /// The strata-plugin-abi version the library was built against; `None`
    /// if it is shadowed, or could not be opened for another reason than
    /// that version.
    pub abi_version: Option<String>,
    /// The driver's own one-line description; `None` if the library is
    /// shadowed or could not be opened.
    pub description: Option<String>,
    /// "supported", "not supported", "shadowed", "unusable", "error".
    pub state: &'static str,
    /// Why not supported / unusable / shadowed.
    pub detail: Option<String>,
}

/// Opens every library on the search path and asks each driver whether it
/// would work for this graph root: it is started on a scratch home beside the
/// graph root (same filesystem) and then the scratch home is removed.
pub fn survey(config: &Config) -> Result<Vec<DriverReport>> {
    let dirs = discovery::search_dirs(config);
    let scratch_parent = nearest_existing(&config.graphroot);
    let mut reports = Vec::new();
    for plugin in discovery::find_plugins(&dirs) {
        let mut report = DriverReport {
            name: plugin.name.clone(),
            path: plugin.path.clone(),
            origin: plugin.origin,
            abi_version: None,
            description: None,
            state: "supported",
            detail: None,
        };
        if let Some(first) = &plugin.shadowed_by {
            report.state = "shadowed";
            report.detail = Some(format!("{} is found first", first.display()));
            reports.push(report);
            continue;
        }
        let library = match open_library(&plugin) {
            Ok(library) => library,
            Err(e) => {
                if let CoreError::Load(LoadError::IncompatibleVersion { found, .. }) = &e {
                    report.abi_version = Some(found.clone());
                }
                report.state = "unusable";
                report.detail = Some(e.to_string());
                reports.push(report);
                continue;
            }
        };
        report.abi_version = Some(library.abi_version().to_string());
        report.description = Some(library.description().to_string());
        let scratch = tempfile::Builder::new()
            .prefix(".strata-probe-")
            .tempdir_in(&scratch_parent)
            .or_else(|_| tempfile::tempdir())
            .map_err(|e| CoreError::io("create a scratch directory in", &scratch_parent, e))?;
        let args = InitArgs {
            home: scratch.path().join("home"),
            run_root: scratch.path().join("run"),
            options: config.options_for(&plugin.name),
            ..Default::default()
        };
        match library.init(&args) {
            Ok(driver) => {
                use strata_plugin_abi::GraphDriver;
                let _ = driver.cleanup();
            }
            Err(LoadError::Init { error, .. }) if error.kind() == ErrorKind::NotSupported => {
                report.state = "not supported";
                report.detail = Some(error.message().to_string());
            }
            Err(e) => {
                report.state = "error";
                report.detail = Some(e.to_string());
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}
