//! Configuration: built-in defaults, overridden by the TOML file, overridden by
//! the environment, overridden by command-line flags.
//!
//! ```toml
//! [storage]
//! driver = ""                  # "" = choose: btrfs, zfs, overlay, devicemapper, vfs
//! graphroot = "/var/lib/strata"
//! runroot = "/run/strata"
//! driver_dirs = ["/usr/local/lib/strata/drivers"]
//!
//! [storage.options.vfs]
//! reflink = "auto"
//! ```
//!
//! | setting     | flag         | environment          | file                   | default            |
//! |-------------|--------------|----------------------|------------------------|--------------------|
//! | config file | `--config`   | `STRATA_CONFIG`      |                        | `/etc/strata/storage.toml` if present |
//! | driver      | `--driver`   | `STRATA_DRIVER`      | `storage.driver`       | `""` (choose)      |
//! | graph root  | `--root`     | `STRATA_ROOT`        | `storage.graphroot`    | `/var/lib/strata`  |
//! | run root    | `--run-root` | `STRATA_RUN_ROOT`    | `storage.runroot`      | `/run/strata`      |
//! | driver dirs |              | `STRATA_DRIVER_PATH` (searched after the file's) | `storage.driver_dirs` | beside the binary |
//!
//! On Windows the defaults are under `C:\ProgramData\strata`: `storage.toml`,
//! `root` and `run`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use strata_plugin_abi::KeyValues;

use crate::error::{CoreError, Result};

/// The configuration file read when none is named by `--config` or
/// `$STRATA_CONFIG`; it is skipped if it does not exist.
#[cfg(unix)]
pub const DEFAULT_CONFIG_FILE: &str = "/etc/strata/storage.toml";
/// The graph root used when none is configured.
#[cfg(unix)]
pub const DEFAULT_GRAPHROOT: &str = "/var/lib/strata";
/// The run root used when none is configured.
#[cfg(unix)]
pub const DEFAULT_RUNROOT: &str = "/run/strata";
/// The configuration file read when none is named by `--config` or
/// `$STRATA_CONFIG`; it is skipped if it does not exist. Windows keeps
/// machine-wide service data under ProgramData, as Docker and containerd do.
#[cfg(windows)]
pub const DEFAULT_CONFIG_FILE: &str = r"C:\ProgramData\strata\storage.toml";
/// The graph root used when none is configured.
#[cfg(windows)]
pub const DEFAULT_GRAPHROOT: &str = r"C:\ProgramData\strata\root";
/// The run root used when none is configured (Windows has no tmpfs: mount
/// counts there outlive a reboot and are found stale by `strata check`).
#[cfg(windows)]
pub const DEFAULT_RUNROOT: &str = r"C:\ProgramData\strata\run";

/// The settings strata runs with, after every source is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The driver to use; `None` (or `""` in the file) means choose.
    pub driver: Option<String>,
    /// Where the store keeps what lasts: the driver's layers (in a
    /// directory named for the driver), the records database and the record
    /// of which driver made it. Always an absolute path.
    pub graphroot: PathBuf,
    /// Where the store keeps what lasts until reboot: mount counts and the
    /// driver's run-time state. Best on a tmpfs; always an absolute path.
    pub runroot: PathBuf,
    /// Directories from the configuration file, searched before `$STRATA_DRIVER_PATH`.
    pub driver_dirs: Vec<PathBuf>,
    /// Directories from `$STRATA_DRIVER_PATH`.
    pub env_driver_dirs: Vec<PathBuf>,
    /// `[storage.options.<driver>]`.
    pub driver_options: BTreeMap<String, KeyValues>,
    /// The file the settings came from, if any.
    pub source: Option<PathBuf>,
}

/// The command line's say, which beats everything else.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// The configuration file to read (`--config`); unlike the default file,
    /// it must exist.
    pub config: Option<PathBuf>,
    /// The driver to use (`--driver`); `""` means choose.
    pub driver: Option<String>,
    /// The graph root (`--root`).
    pub graphroot: Option<PathBuf>,
    /// The run root (`--run-root`).
    pub runroot: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    storage: StorageSection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StorageSection {
    driver: Option<String>,
    graphroot: Option<PathBuf>,
    runroot: Option<PathBuf>,
    #[serde(default)]
    driver_dirs: Vec<PathBuf>,
    #[serde(default)]
    options: BTreeMap<String, BTreeMap<String, toml::Value>>,
}

/// Reads the environment through a function, so tests need not change the
/// process environment.
pub trait Environment {
    /// The value of variable `name`; `None` if it is unset or not valid
    /// UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Config {
    /// Loads the configuration with the process environment.
    pub fn load(overrides: &Overrides) -> Result<Config> {
        Self::load_with(overrides, &ProcessEnvironment)
    }

    /// Loads the configuration with the environment read through `env`:
    /// the defaults, then the configuration file, then `env`, then
    /// `overrides`, each beating the one before.
    ///
    /// Fails with [`CoreError::Config`] if the file cannot be read or
    /// parsed, or a driver option is not a string, number or boolean, and
    /// with [`CoreError::Setting`] if the graph root or run root is not an
    /// absolute path.
    pub fn load_with(overrides: &Overrides, env: &dyn Environment) -> Result<Config> {
        let explicit_file = overrides.config.clone().or_else(|| {
            env.var("STRATA_CONFIG")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let (file, source) = match explicit_file {
            Some(path) => (read_file(&path)?, Some(path)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                let path = PathBuf::from(DEFAULT_CONFIG_FILE);
                (read_file(&path)?, Some(path))
            }
            None => (FileConfig::default(), None),
        };
        let storage = file.storage;
        let env_path = |name: &str| env.var(name).filter(|s| !s.is_empty()).map(PathBuf::from);

        let driver = overrides
            .driver
            .clone()
            .or_else(|| env.var("STRATA_DRIVER"))
            .or(storage.driver)
            .filter(|d| !d.is_empty());
        let graphroot = overrides
            .graphroot
            .clone()
            .or_else(|| env_path("STRATA_ROOT"))
            .or(storage.graphroot)
            .unwrap_or_else(|| DEFAULT_GRAPHROOT.into());
        let runroot = overrides
            .runroot
            .clone()
            .or_else(|| env_path("STRATA_RUN_ROOT"))
            .or(storage.runroot)
            .unwrap_or_else(|| DEFAULT_RUNROOT.into());
        let env_driver_dirs = env
            .var("STRATA_DRIVER_PATH")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();

        let mut driver_options = BTreeMap::new();
        for (driver_name, values) in storage.options {
            let mut options = KeyValues::new();
            for (key, value) in values {
                let text = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(CoreError::Config {
                            path: source.clone().unwrap_or_default(),
                            message: format!(
                                "storage.options.{driver_name}.{key} must be a string, number or boolean, not {}",
                                other.type_str()
                            ),
                        });
                    }
                };
                options.push(key, text);
            }
            driver_options.insert(driver_name, options);
        }

        for (what, path) in [("graph root", &graphroot), ("run root", &runroot)] {
            if !path.is_absolute() {
                return Err(CoreError::Setting(format!(
                    "the {what} must be an absolute path, not '{}'",
                    path.display()
                )));
            }
        }

        Ok(Config {
            driver,
            graphroot,
            runroot,
            driver_dirs: storage.driver_dirs,
            env_driver_dirs,
            driver_options,
            source,
        })
    }

    /// The options configured for `driver`.
    pub fn options_for(&self, driver: &str) -> KeyValues {
        self.driver_options.get(driver).cloned().unwrap_or_default()
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| CoreError::Config {
        path: path.to_path_buf(),
        message: format!("cannot read it: {e}"),
    })?;
    match toml::from_str(&text) {
        Ok(file) => Ok(file),
        Err(strict) => {
            if let Some(file) = from_containers_storage(path, &text) {
                return Ok(file);
            }
            Err(CoreError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "{}\n(strata's format: [storage] driver, graphroot, runroot, driver_dirs, \
                     and [storage.options.<driver>] tables; see storage.toml.example, installed \
                     in /etc/strata, or the README's Configuration)",
                    strict.to_string().trim_end()
                ),
            })
        }
    }
}

/// Reads a containers/storage `storage.conf` (podman's, CRI-O's): the
/// settings that mean the same in strata (driver, graphroot, runroot, and
/// the overlay driver's `mountopt`) are taken, and every other one is named
/// in a warning as ignored. `None` if `text` is not such a file.
fn from_containers_storage(path: &Path, text: &str) -> Option<FileConfig> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let storage = table.get("storage")?.as_table()?;
    let options = storage.get("options").and_then(toml::Value::as_table);
    // Only containers/storage has these, or values directly under
    // [storage.options] (strata keeps a table per driver there).
    let its_own = ["rootless_storage_path", "transient_store", "imagestore"]
        .iter()
        .any(|key| storage.contains_key(*key))
        || options.is_some_and(|o| o.values().any(|v| !v.is_table()));
    if !its_own {
        return None;
    }
    let text_of = |key: &str| {
        storage
            .get(key)
            .and_then(toml::Value::as_str)
            .map(str::to_string)
    };
    let mut ignored: Vec<String> = table
        .keys()
        .filter(|k| *k != "storage")
        .map(|k| format!("[{k}]"))
        .collect();
    ignored.extend(
        storage
            .keys()
            .filter(|k| !["driver", "graphroot", "runroot", "options"].contains(&k.as_str()))
            .map(|k| format!("storage.{k}")),
    );
    let mut file = FileConfig::default();
    file.storage.driver = text_of("driver");
    file.storage.graphroot = text_of("graphroot").map(PathBuf::from);
    file.storage.runroot = text_of("runroot").map(PathBuf::from);
    for (key, value) in options.into_iter().flatten() {
        match (key.as_str(), value.as_table()) {
            ("overlay", Some(overlay)) => {
                for (option, value) in overlay {
                    match (option.as_str(), value.as_str()) {
                        ("mountopt", Some(mountopt)) => {
                            file.storage
                                .options
                                .entry("overlay".into())
                                .or_default()
                                .insert(
                                    "mountopt".into(),
                                    toml::Value::String(mountopt.to_string()),
                                );
                        }
                        _ => ignored.push(format!("storage.options.overlay.{option}")),
                    }
                }
            }
            _ => ignored.push(format!("storage.options.{key}")),
        }
    }
    tracing::warn!(
        file = %path.display(),
        "read as containers/storage's storage.conf: driver, graphroot, runroot and the overlay \
         mountopt are taken; ignored: {}",
        if ignored.is_empty() { "nothing".to_string() } else { ignored.join(", ") }
    );
    Some(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<&'static str, String>);

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("storage.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// An absolute path on this platform: `/a/b`, or `C:\a\b` on Windows.
    fn abs(rel: &str) -> PathBuf {
        if cfg!(windows) {
            PathBuf::from(format!(r"C:\{}", rel.replace('/', "\\")))
        } else {
            PathBuf::from(format!("/{rel}"))
        }
    }

    #[test]
    fn flag_beats_environment_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_config(
            dir.path(),
            &format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = '{}'\ndriver_dirs = ['{}']\n\
                 [storage.options.vfs]\nreflink = \"never\"\nignore_chown_errors = true\n",
                abs("file/root").display(),
                abs("file/drivers").display()
            ),
        );
        let no_env = FakeEnv(HashMap::new());
        let from_file = Config::load_with(
            &Overrides {
                config: Some(file.clone()),
                ..Default::default()
            },
            &no_env,
        )
        .unwrap();
        assert_eq!(from_file.driver.as_deref(), Some("overlay"));
        assert_eq!(from_file.graphroot, abs("file/root"));
        assert_eq!(from_file.runroot, PathBuf::from(DEFAULT_RUNROOT));
        assert_eq!(from_file.driver_dirs, vec![abs("file/drivers")]);
        assert_eq!(from_file.options_for("vfs").get("reflink"), Some("never"));
        assert_eq!(
            from_file.options_for("vfs").get("ignore_chown_errors"),
            Some("true")
        );

        let env = FakeEnv(HashMap::from([
            ("STRATA_CONFIG", file.display().to_string()),
            ("STRATA_DRIVER", "vfs".to_string()),
            ("STRATA_ROOT", abs("env/root").display().to_string()),
            (
                "STRATA_DRIVER_PATH",
                std::env::join_paths([abs("env/a"), abs("env/b")])
                    .unwrap()
                    .into_string()
                    .unwrap(),
            ),
        ]));
        let from_env = Config::load_with(&Overrides::default(), &env).unwrap();
        assert_eq!(from_env.driver.as_deref(), Some("vfs"));
        assert_eq!(from_env.graphroot, abs("env/root"));
        assert_eq!(from_env.env_driver_dirs, vec![abs("env/a"), abs("env/b")]);

        let from_flags = Config::load_with(
            &Overrides {
                driver: Some("btrfs".into()),
                graphroot: Some(abs("flag/root")),
                runroot: Some(abs("flag/run")),
                ..Default::default()
            },
            &env,
        )
        .unwrap();
        assert_eq!(from_flags.driver.as_deref(), Some("btrfs"));
        assert_eq!(from_flags.graphroot, abs("flag/root"));
        assert_eq!(from_flags.runroot, abs("flag/run"));
    }

    /// containers/storage (and its Linux paths) is Linux's.
    #[cfg(unix)]
    #[test]
    fn a_podman_storage_conf_gives_what_means_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_config(
            dir.path(),
            "[storage]\ndriver = \"overlay\"\nrunroot = \"/run/containers/storage\"\n\
             graphroot = \"/var/lib/containers/storage\"\n\
             rootless_storage_path = \"$HOME/.local/share/containers/storage\"\n\
             [storage.options]\nadditionalimagestores = [\n]\n\
             pull_options = {enable_partial_images = \"false\"}\n\
             [storage.options.overlay]\nmountopt = \"nodev\"\nmount_program = \"/usr/bin/fuse-overlayfs\"\n\
             [storage.options.thinpool]\n",
        );
        let config = Config::load_with(
            &Overrides {
                config: Some(file),
                ..Default::default()
            },
            &FakeEnv(HashMap::new()),
        )
        .unwrap();
        assert_eq!(config.driver.as_deref(), Some("overlay"));
        assert_eq!(
            config.graphroot,
            PathBuf::from("/var/lib/containers/storage")
        );
        assert_eq!(config.runroot, PathBuf::from("/run/containers/storage"));
        assert_eq!(config.options_for("overlay").get("mountopt"), Some("nodev"));
        assert_eq!(config.options_for("overlay").get("mount_program"), None);
        assert!(config.options_for("thinpool").is_empty());
    }

    #[test]
    fn empty_driver_means_choose() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_config(dir.path(), "[storage]\ndriver = \"\"\n");
        let config = Config::load_with(
            &Overrides {
                config: Some(file),
                ..Default::default()
            },
            &FakeEnv(HashMap::new()),
        )
        .unwrap();
        assert_eq!(config.driver, None);
    }

    #[test]
    fn bad_files_are_refused_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let env = FakeEnv(HashMap::new());
        let load = |text: &str| {
            let file = write_config(dir.path(), text);
            Config::load_with(
                &Overrides {
                    config: Some(file),
                    ..Default::default()
                },
                &env,
            )
            .unwrap_err()
            .to_string()
        };
        assert!(load("[storage]\ndriverr = \"vfs\"\n").contains("driverr"));
        assert!(load("[storage\n").contains("storage.toml"));
        assert!(load("[storage]\ngraphroot = \"relative\"\n").contains("absolute"));
        assert!(load("[storage.options.vfs]\nx = [1]\n").contains("storage.options.vfs.x"));
        let missing = Config::load_with(
            &Overrides {
                config: Some(dir.path().join("absent.toml")),
                ..Default::default()
            },
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("absent.toml"), "{missing}");
    }
}
