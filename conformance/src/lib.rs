//! # strata-conformance
//!
//! The suite that says whether a driver can be trusted with someone's images.
//! It runs over any [`GraphDriver`], so the same checks run in-process in unit
//! tests and against a plugin library through the `strata-conformance` runner.
//!
//! Every check compares against a reference (a tree built by the suite, an
//! expected error kind), never just "no error". Each check must leave the
//! driver as it found it: no layers, and no new entries in the driver's home;
//! the suite verifies that after every check and fails the check otherwise.
//!
//! Areas: lifecycle, mounting (reference counts, root modes, read-only
//! layers, a 128-layer stack), content across snapshots, diffs through core's
//! layer format, quota, concurrency, and the ABI contract. A check that cannot
//! run here (a capability the driver does not claim, no root) is skipped with
//! its reason.

pub mod backend;
pub mod checks;
pub mod tree;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_plugin_abi::GraphDriver;

/// Starts the driver again on the same home (for the re-initialisation check).
pub type Reopen = Box<dyn Fn() -> Result<Box<dyn GraphDriver>, String> + Send + Sync>;

/// How a run is set up.
#[derive(Default)]
pub struct SuiteOptions {
    /// The driver's home, to check that nothing is left behind in it.
    pub home: Option<PathBuf>,
    /// Only checks whose name contains this text.
    pub filter: Option<String>,
    /// How to start the driver again on its home; without it the restart check
    /// is skipped.
    pub reopen: Option<Reopen>,
}

/// What a check is given.
pub struct Suite<'a> {
    pub driver: &'a dyn GraphDriver,
    pub options: &'a SuiteOptions,
}

/// What became of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    /// The check cannot run here; the reason says why.
    Skipped(String),
}

#[derive(Clone, Debug)]
pub struct CheckResult {
    pub name: &'static str,
    pub outcome: Outcome,
    pub duration: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub results: Vec<CheckResult>,
}

impl Report {
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }

    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Passed)
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }

    /// `N passed, N failed, N skipped`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }

    /// The report as JUnit XML, one test case per check, for CI systems.
    pub fn junit(&self, suite_name: &str) -> String {
        let escape = |text: &str| {
            text.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let total: f64 = self.results.iter().map(|r| r.duration.as_secs_f64()).sum();
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{total:.3}\">\n",
            escape(suite_name),
            self.results.len(),
            self.failed(),
            self.skipped()
        );
        for r in &self.results {
            let (group, name) = r.name.split_once('/').unwrap_or(("", r.name));
            xml.push_str(&format!(
                "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                escape(group),
                escape(name),
                r.duration.as_secs_f64()
            ));
            match &r.outcome {
                Outcome::Passed => xml.push_str("/>\n"),
                Outcome::Failed(why) => xml.push_str(&format!(
                    "><failure message=\"{}\"/></testcase>\n",
                    escape(why)
                )),
                Outcome::Skipped(why) => xml.push_str(&format!(
                    "><skipped message=\"{}\"/></testcase>\n",
                    escape(why)
                )),
            }
        }
        xml.push_str("</testsuite>\n");
        xml
    }
}

/// What a check returns: `Ok(())` passed, `Err(Skip)` could not run here,
/// `Err(Fail)` failed.
pub type CheckOutcome = Result<(), Verdict>;

#[derive(Debug)]
pub enum Verdict {
    Fail(String),
    Skip(String),
}

/// Fails the check with a message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::Verdict::Fail(format!($($msg)+)));
        }
    };
}

/// One check of the suite.
pub struct Check {
    pub name: &'static str,
    pub run: fn(&Suite) -> CheckOutcome,
}

/// Runs every check (or those matching the filter) against `driver`, calling
/// `on_result` as each finishes.
pub fn run_with(
    driver: &dyn GraphDriver,
    options: &SuiteOptions,
    mut on_result: impl FnMut(&CheckResult),
) -> Report {
    let mut report = Report::default();
    for check in checks::all() {
        if let Some(filter) = &options.filter
            && !check.name.contains(filter.as_str())
        {
            continue;
        }
        let home_before = options.home.as_deref().map(snapshot_home);
        let start = Instant::now();
        let suite = Suite { driver, options };
        let outcome = match catch_unwind(AssertUnwindSafe(|| (check.run)(&suite))) {
            Ok(Ok(())) => Outcome::Passed,
            Ok(Err(Verdict::Fail(why))) => Outcome::Failed(why),
            Ok(Err(Verdict::Skip(why))) => Outcome::Skipped(why),
            Err(panic) => Outcome::Failed(format!("panicked: {}", panic_text(&*panic))),
        };
        let outcome = match (
            outcome,
            leftovers(driver, options.home.as_deref(), home_before),
        ) {
            (Outcome::Passed, Some(left)) => Outcome::Failed(format!("left behind: {left}")),
            (outcome, _) => outcome,
        };
        let result = CheckResult {
            name: check.name,
            outcome,
            duration: start.elapsed(),
        };
        on_result(&result);
        report.results.push(result);
    }
    report
}

/// Runs the suite without progress output.
pub fn run(driver: &dyn GraphDriver, options: &SuiteOptions) -> Report {
    run_with(driver, options, |_| {})
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn snapshot_home(home: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            // Only the driver's own layout, not layer contents.
            if out.len() < 10_000
                && entry.file_type().is_ok_and(|t| t.is_dir())
                && path
                    .strip_prefix(root)
                    .map(|p| p.components().count() < 3)
                    .unwrap_or(false)
            {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(home, home, &mut out);
    out
}

/// What a check left: layers still listed, or new entries in the home.
fn leftovers(
    driver: &dyn GraphDriver,
    home: Option<&Path>,
    before: Option<BTreeSet<PathBuf>>,
) -> Option<String> {
    let mut found = Vec::new();
    match driver.list() {
        Ok(layers) if !layers.is_empty() => found.push(format!("layers {layers:?}")),
        Ok(_) => {}
        Err(e) => found.push(format!("(list failed: {e})")),
    }
    if let (Some(home), Some(before)) = (home, before) {
        let after = snapshot_home(home);
        let new: Vec<String> = after
            .difference(&before)
            .map(|p| p.display().to_string())
            .collect();
        if !new.is_empty() {
            found.push(format!(
                "new entries in the driver's home: {}",
                new.join(", ")
            ));
        }
    }
    (!found.is_empty()).then(|| found.join("; "))
}
