//! The checks, one module per area. Each creates what it needs under ids of
//! its own and removes it again whatever happens (`Layers` removes on drop).

mod abi;
mod concurrency;
mod content;
mod diff;
mod lifecycle;
mod mount;
mod quota;

use std::path::PathBuf;

use strata_plugin_abi::{CreateOptions, ErrorKind, GraphDriver, MountOptions};

use crate::{Check, CheckOutcome, Suite, Verdict};

pub fn all() -> Vec<Check> {
    let mut checks = Vec::new();
    checks.extend(lifecycle::checks());
    checks.extend(mount::checks());
    checks.extend(content::checks());
    checks.extend(diff::checks());
    checks.extend(quota::checks());
    checks.extend(concurrency::checks());
    checks.extend(abi::checks());
    checks
}

/// The layers a check made, removed (children first) when dropped, so a
/// failing check still leaves nothing behind.
pub(crate) struct Layers<'d> {
    pub driver: &'d dyn GraphDriver,
    ids: Vec<String>,
}

impl<'d> Layers<'d> {
    pub fn new(driver: &'d dyn GraphDriver) -> Self {
        Layers {
            driver,
            ids: Vec::new(),
        }
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

pub(crate) fn needs_root() -> CheckOutcome {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(Verdict::Skip(
            "needs root (owners, device nodes, trusted.* and security.* xattrs)".into(),
        ))
    }
}

/// `Check` constructor shorthand.
pub(crate) fn check(name: &'static str, run: fn(&Suite) -> CheckOutcome) -> Check {
    Check { name, run }
}
