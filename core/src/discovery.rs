//! Finding driver libraries: `libstrata_driver_<name>.so` files
//! (`strata_driver_<name>.dll` on Windows) in the configured directories, then `$STRATA_DRIVER_PATH`, then beside the running
//! `strata` binary and in its `../lib/strata/drivers`. The first file for a
//! name wins; later ones are reported as shadowed.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;

/// How a driver library's file name starts; the driver's name follows.
/// Cargo names a `cdylib` crate `strata-driver-x` this way on each platform.
#[cfg(unix)]
pub const LIBRARY_PREFIX: &str = "libstrata_driver_";
/// How a driver library's file name starts; the driver's name follows.
/// Cargo names a `cdylib` crate `strata-driver-x` this way on each platform.
#[cfg(windows)]
pub const LIBRARY_PREFIX: &str = "strata_driver_";
/// How a driver library's file name ends.
#[cfg(unix)]
pub const LIBRARY_SUFFIX: &str = ".so";
/// How a driver library's file name ends.
#[cfg(windows)]
pub const LIBRARY_SUFFIX: &str = ".dll";

/// A directory searched for drivers, and why it is searched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SearchDir {
    /// The directory; it need not exist.
    pub path: PathBuf,
    /// Why it is searched: "storage.driver_dirs", "STRATA_DRIVER_PATH",
    /// "the strata binary's directory" or "beside the strata binary".
    pub origin: &'static str,
}

/// A driver library file found on the search path (not yet opened).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FoundPlugin {
    /// The driver name the file name promises.
    pub name: String,
    /// The library file.
    pub path: PathBuf,
    /// Why its directory is searched, as in [`SearchDir::origin`].
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

/// Why the library at `path` must not be loaded, if it must not: a library
/// runs with strata's privileges, so it, and the directory it is in, must be
/// writable by nobody but root or the user running strata. A file owned by
/// another user, or writable by its group or by everyone, or in a directory
/// others can write to (without the sticky bit, which keeps them from
/// replacing files they do not own), could be replaced by someone else.
#[cfg(unix)]
pub fn untrusted_because(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let trusted_owner = |uid: u32| uid == 0 || uid == me;
    let file = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return Some(format!("cannot stat it: {e}")),
    };
    if !trusted_owner(file.uid()) {
        return Some(format!(
            "it is owned by uid {}, not by root or the user running strata (uid {me})",
            file.uid()
        ));
    }
    if file.mode() & 0o022 != 0 {
        return Some(format!(
            "it is writable by its group or by everyone (mode {:o})",
            file.mode() & 0o7777
        ));
    }
    let resolved = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let dir = resolved.parent()?;
    let dir_meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) => return Some(format!("cannot stat its directory {}: {e}", dir.display())),
    };
    let sticky = dir_meta.mode() & 0o1000 != 0;
    if !trusted_owner(dir_meta.uid()) {
        return Some(format!(
            "its directory {} is owned by uid {}, not by root or the user running strata",
            dir.display(),
            dir_meta.uid()
        ));
    }
    if dir_meta.mode() & 0o022 != 0 && !sticky {
        return Some(format!(
            "its directory {} is writable by its group or by everyone (mode {:o}), so the library could be replaced",
            dir.display(),
            dir_meta.mode() & 0o7777
        ));
    }
    None
}

/// Why the library at `path` must not be loaded, if it must not. On Windows
/// who may replace a file is said by its ACL, which this version does not
/// read: only a library that is missing, or not a plain file (a symlink or
/// junction whose target could change), is refused. Installing drivers where
/// only administrators can write (beside `strata.exe` under Program Files)
/// is what keeps them safe there.
#[cfg(windows)]
pub fn untrusted_because(path: &Path) -> Option<String> {
    match std::fs::symlink_metadata(path) {
        Err(e) => Some(format!("cannot stat it: {e}")),
        Ok(meta) if meta.file_type().is_symlink() => {
            Some("it is a symbolic link or junction, whose target could be changed".to_string())
        }
        Ok(meta) if !meta.is_file() => Some("it is not a file".to_string()),
        Ok(_) => None,
    }
}

/// The search path in words, for error messages.
pub fn describe(dirs: &[SearchDir]) -> String {
    dirs.iter()
        .map(|d| d.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_libraries_nobody_else_can_replace_are_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libstrata_driver_x.so");
        std::fs::write(&lib, b"").unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(untrusted_because(&lib), None);
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o775)).unwrap();
        let why = untrusted_because(&lib).unwrap();
        assert!(
            why.contains("writable by its group or by everyone (mode 775)"),
            "{why}"
        );
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = untrusted_because(&lib).unwrap();
        assert!(why.contains("could be replaced"), "{why}");
        // Sticky, as /tmp is: others cannot replace what they do not own.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(untrusted_because(&lib), None);
        if strata_testkit::skip::is_root() {
            std::os::unix::fs::chown(&lib, Some(4242), None).unwrap();
            let why = untrusted_because(&lib).unwrap();
            assert!(why.contains("owned by uid 4242"), "{why}");
        } else {
            strata_testkit::skip::cannot_run(
                "the other-owner half of the library trust check",
                "chown to another uid takes root",
            );
        }
    }

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
