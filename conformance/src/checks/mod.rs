//! The checks, one module per area. Each creates what it needs under ids of
//! its own and removes it again whatever happens (`Layers` removes on drop).

mod abi;
mod concurrency;
// The areas that build and compare Linux trees (modes, owners, xattrs,
// device nodes, the mount table) and apply Linux layer tars: on other
// platforms each is one check that says so (`linux_only`).
#[cfg(unix)]
mod content;
#[cfg(unix)]
mod described;
#[cfg(unix)]
mod diff;
mod lifecycle;
#[cfg(unix)]
mod mount;
mod processes;
mod quota;
mod restart;
#[cfg(unix)]
mod scenarios;

use std::path::{Path, PathBuf};

use strata_plugin_abi::{CreateOptions, ErrorKind, GraphDriver, MountOptions};

use crate::{Check, CheckOutcome, Suite, Verdict};

/// Every check of the suite, area by area in the order a run takes them:
/// lifecycle, mount, described mounts, content, diff, scenarios, quota, concurrency,
/// processes, restart, abi.
pub fn all() -> Vec<Check> {
    let mut checks = Vec::new();
    checks.extend(lifecycle::checks());
    #[cfg(unix)]
    {
        checks.extend(mount::checks());
        checks.extend(described::checks());
        checks.extend(content::checks());
        checks.extend(diff::checks());
        checks.extend(scenarios::checks());
    }
    #[cfg(not(unix))]
    checks.extend(linux_only());
    checks.extend(quota::checks());
    checks.extend(concurrency::checks());
    checks.extend(processes::checks());
    checks.extend(restart::checks());
    checks.extend(abi::checks());
    checks
}

/// The Linux-only areas where they cannot run: one check each, skipped
/// with the reason, so a run says what it did not prove.
#[cfg(not(unix))]
fn linux_only() -> Vec<Check> {
    fn skip(_: &Suite) -> CheckOutcome {
        Err(Verdict::Skip(
            "this area builds and compares Linux trees and layer tars (modes, owners, xattrs, \
             device nodes, the mount table); it runs only on Linux"
                .into(),
        ))
    }
    vec![
        check("mount/*", "The mount area: Linux only.", skip),
        check(
            "described-mount/*",
            "The described-mount area: Linux only.",
            skip,
        ),
        check("content/*", "The content area: Linux only.", skip),
        check("diff/*", "The diff area: Linux only.", skip),
        check("scenarios/*", "The scenarios area: Linux only.", skip),
    ]
}

/// The layers a check made, removed (children first) when dropped, so a
/// failing check still leaves nothing behind.
pub(crate) struct Layers<'d> {
    pub driver: &'d dyn GraphDriver,
    ids: Vec<String>,
    /// Ids made by others (worker processes) that are the check's too.
    prefixes: Vec<String>,
}

impl<'d> Layers<'d> {
    pub fn new(driver: &'d dyn GraphDriver) -> Self {
        Layers {
            driver,
            ids: Vec::new(),
            prefixes: Vec::new(),
        }
    }

    /// Takes charge of every layer whose id starts with `prefix` (made by
    /// worker processes): removed on drop, before the layers made here.
    pub fn claim_prefix(&mut self, prefix: &str) {
        self.prefixes.push(prefix.to_string());
    }

    pub fn create_with(
        &mut self,
        id: &str,
        parent: Option<&str>,
        options: &CreateOptions,
    ) -> CheckOutcome {
        self.driver
            .create(id, parent, options)
            .map_err(|e| Verdict::Fail(format!("create {id}: {e}")))?;
        self.ids.push(id.to_string());
        Ok(())
    }

    pub fn create(&mut self, id: &str, parent: Option<&str>) -> CheckOutcome {
        let options = CreateOptions {
            read_write: true,
            ..Default::default()
        };
        self.create_with(id, parent, &options)
    }

    pub fn mount(&self, id: &str) -> Result<PathBuf, Verdict> {
        self.driver
            .get(id, &MountOptions::default())
            .map_err(|e| Verdict::Fail(format!("mount {id}: {e}")))
    }

    pub fn unmount(&self, id: &str) -> CheckOutcome {
        self.driver
            .put(id)
            .map_err(|e| Verdict::Fail(format!("unmount {id}: {e}")))
    }

    /// Removes a layer now (and forgets it).
    pub fn remove(&mut self, id: &str) -> CheckOutcome {
        self.driver
            .remove(id)
            .map_err(|e| Verdict::Fail(format!("remove {id}: {e}")))?;
        self.ids.retain(|i| i != id);
        Ok(())
    }

    /// Takes charge of a layer made earlier (by another driver instance on the
    /// same home): it is removed on drop, after the layers made here.
    pub fn adopt(&mut self, id: &str) {
        self.ids.push(id.to_string());
    }

    /// Forgets a layer something else removed or took over.
    pub fn forget(&mut self, id: &str) {
        self.ids.retain(|i| i != id);
    }
}

impl Drop for Layers<'_> {
    fn drop(&mut self) {
        if !self.prefixes.is_empty() {
            let claimed: Vec<String> = self
                .driver
                .list()
                .unwrap_or_default()
                .into_iter()
                .filter(|id| {
                    self.prefixes.iter().any(|p| id.starts_with(p.as_str()))
                        && !self.ids.contains(id)
                })
                .collect();
            // Made by workers on layers made here: removed before those.
            self.ids.extend(claimed);
        }
        for id in self.ids.iter().rev() {
            if let Err(e) = self.driver.remove(id)
                && e.kind() != ErrorKind::NotFound
            {
                tracing::warn!(layer = %id, error = %e, "conformance: could not remove a check's layer");
            }
        }
    }
}

/// Fails unless `result` is an error of `kind`.
pub(crate) fn expect_kind<T: std::fmt::Debug>(
    what: &str,
    result: strata_plugin_abi::Result<T>,
    kind: ErrorKind,
) -> CheckOutcome {
    match result {
        Ok(value) => Err(Verdict::Fail(format!(
            "{what}: succeeded ({value:?}), expected {kind}"
        ))),
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(Verdict::Fail(format!(
            "{what}: expected {kind}, got {} ({e})",
            e.kind()
        ))),
    }
}

/// An io::Result as a check step.
pub(crate) fn io<T>(
    what: impl std::fmt::Display,
    result: std::io::Result<T>,
) -> Result<T, Verdict> {
    result.map_err(|e| Verdict::Fail(format!("{what}: {e}")))
}

#[cfg(unix)]
pub(crate) fn needs_root() -> CheckOutcome {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(Verdict::Skip(
            "needs root (owners, device nodes, trusted.* and security.* xattrs)".into(),
        ))
    }
}

/// `Check` constructor shorthand: the name, the one-sentence contract a driver
/// must keep to pass, and the check.
pub(crate) fn check(
    name: &'static str,
    contract: &'static str,
    run: fn(&Suite) -> CheckOutcome,
) -> Check {
    Check {
        name,
        contract,
        run,
    }
}

/// The mount points of this process's mount namespace (the driver kit
/// reads them from `/proc/self/mountinfo`, escapes undone).
#[cfg(unix)]
pub(crate) fn mount_points() -> Result<Vec<PathBuf>, Verdict> {
    io(
        "read /proc/self/mountinfo",
        strata_driver_kit::mounts::mount_points(),
    )
}

/// How many mounts sit exactly on `path` (0: it is not a mount point).
#[cfg(unix)]
pub(crate) fn mounts_on(path: &Path) -> Result<usize, Verdict> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(mount_points()?.iter().filter(|p| **p == path).count())
}

/// The mount points at or under `dir` (the driver's home), to see that a
/// refused or released mount left nothing behind.
#[cfg(unix)]
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, Verdict> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut found = io(
        "read /proc/self/mountinfo",
        strata_driver_kit::mounts::mounted_beneath(&dir),
    )?;
    found.sort();
    Ok(found)
}

/// How many mounts sit on `path`: Windows has no mount table to read (a
/// layer is a volume, not a mount on a directory), so a check counting
/// mounts is skipped there with that reason.
#[cfg(not(unix))]
pub(crate) fn mounts_on(_path: &Path) -> Result<usize, Verdict> {
    Err(Verdict::Skip(
        "counts mounts in the Linux mount table; Windows has none (a layer there is a volume)"
            .into(),
    ))
}

/// The mounts under the driver's home: none can be on Windows, where a
/// layer is made available as a volume of its own, never mounted on a
/// directory under the home.
#[cfg(not(unix))]
pub(crate) fn mounts_under(_dir: &Path) -> Result<Vec<PathBuf>, Verdict> {
    Ok(Vec::new())
}

/// Sets a path's modification and access times (not following symlinks), so
/// trees built at different moments compare equal.
#[cfg(unix)]
pub(crate) fn set_mtime(path: &Path, seconds: i64) -> CheckOutcome {
    let at = rustix::fs::Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: at,
        last_modification: at,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| Verdict::Fail(format!("set the times of {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_a_mount_point_and_a_subdirectory_usually_not() {
        assert!(mounts_on(Path::new("/")).unwrap() >= 1);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mounts_on(dir.path()).unwrap(), 0);
    }
}
