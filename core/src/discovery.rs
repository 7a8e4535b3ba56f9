//! Finding driver libraries: `libstrata_driver_<name>.so` files in the
//! configured directories, then `$STRATA_DRIVER_PATH`, then beside the running
//! `strata` binary and in its `../lib/strata/drivers`. The first file for a
//! name wins; later ones are reported as shadowed.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;

pub const LIBRARY_PREFIX: &str = "libstrata_driver_";
pub const LIBRARY_SUFFIX: &str = ".so";

/// A directory searched for drivers, and why it is searched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SearchDir {
    pub path: PathBuf,
    pub origin: &'static str,
}

/// A driver library file found on the search path (not yet opened).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FoundPlugin {
    /// The driver name the file name promises.
    pub name: String,
    pub path: PathBuf,
    pub origin: &'static str,
    /// Set when an earlier directory already has a library for this name.
    pub shadowed_by: Option<PathBuf>,
}

/// The directories searched, in order.
pub fn search_dirs(config: &Config) -> Vec<SearchDir> {
    let mut dirs = Vec::new();
    for path in &config.driver_dirs {
        dirs.push(SearchDir {
            path: path.clone(),
            origin: "storage.driver_dirs",
        });
    }
    for path in &config.env_driver_dirs {
        dirs.push(SearchDir {
            path: path.clone(),
            origin: "STRATA_DRIVER_PATH",
        });
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(SearchDir {
            path: exe_dir.join("../lib/strata/drivers"),
            origin: "beside the strata binary",
        });
        dirs.insert(
            dirs.len() - 1,
            SearchDir {
                path: exe_dir,
                origin: "the strata binary's directory",
            },
        );
    }
    dirs
}

fn driver_name_of(file_name: &str) -> Option<&str> {
    let name = file_name
        .strip_prefix(LIBRARY_PREFIX)?
        .strip_suffix(LIBRARY_SUFFIX)?;
    (!name.is_empty()).then_some(name)
}

/// Every driver library on the search path, in search order.
pub fn find_plugins(dirs: &[SearchDir]) -> Vec<FoundPlugin> {
    let mut found: Vec<FoundPlugin> = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir.path) else {
            continue;
        };
        let mut here: Vec<FoundPlugin> = entries
            .filter_map(|e| e.ok())
            .filter_map(|entry| {
                let file_name = entry.file_name().into_string().ok()?;
                let name = driver_name_of(&file_name)?.to_string();
                Some(FoundPlugin {
                    name,
                    path: entry.path(),
                    origin: dir.origin,
                    shadowed_by: None,
                })
            })
            .collect();
        here.sort_by(|a, b| a.name.cmp(&b.name));
        for mut plugin in here {
            if let Some(first) = found
                .iter()
                .find(|f| f.name == plugin.name && f.shadowed_by.is_none())
            {
                if same_file(&first.path, &plugin.path) {
                    continue; // the same directory reached twice
                }
                plugin.shadowed_by = Some(first.path.clone());
            }
            found.push(plugin);
        }
    }
    found
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The library that provides driver `name`, if any.
pub fn find_plugin(dirs: &[SearchDir], name: &str) -> Option<FoundPlugin> {
    find_plugins(dirs)
        .into_iter()
        .find(|p| p.name == name && p.shadowed_by.is_none())
}

/// The search path in words, for error messages.
pub fn describe(dirs: &[SearchDir]) -> String {
    dirs.iter()
        .map(|d| d.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_file_name_and_the_first_directory_wins() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for (dir, file) in [
            (&a, "libstrata_driver_vfs.so"),
            (&a, "libsomething_else.so"),
            (&a, "libstrata_driver_.so"),
            (&b, "libstrata_driver_vfs.so"),
            (&b, "libstrata_driver_zfs.so"),
        ] {
            std::fs::write(dir.path().join(file), b"").unwrap();
        }
        let dirs = [
            SearchDir {
                path: a.path().to_path_buf(),
                origin: "first",
            },
            SearchDir {
                path: b.path().to_path_buf(),
                origin: "second",
            },
            SearchDir {
                path: a.path().join("missing"),
                origin: "missing",
            },
        ];
        let found = find_plugins(&dirs);
        let summary: Vec<_> = found
            .iter()
            .map(|p| (p.name.as_str(), p.origin, p.shadowed_by.is_some()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("vfs", "first", false),
                ("vfs", "second", true),
                ("zfs", "second", false)
            ]
        );
        assert_eq!(find_plugin(&dirs, "vfs").unwrap().origin, "first");
        assert!(find_plugin(&dirs, "btrfs").is_none());
    }
}
