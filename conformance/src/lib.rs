//! # strata-conformance
//!
//! The suite that says whether a driver can be trusted with someone's images.
//! It runs over any [`GraphDriver`], so the same checks run in-process in unit
//! tests and against a plugin library through the `strata-conformance` runner.
//!
//! Every check compares against a reference (a tree built by the suite, an
//! expected error kind), never just "no error", and states in one line the
//! contract it enforces (`strata-conformance --list`): read together, they
//! are the specification a driver is written to.
//!
//! The harness around every check:
//!
//! * it must leave the driver as it found it: no layers, and no new entries
//!   in the driver's home;
//! * it must write nothing outside the driver's home and run root: the
//!   graph root and the run root around them are watched;
//! * it runs under the process's umask and again under umask 000 and 077
//!   ([`SuiteOptions::umasks`]), since a driver that lets the umask decide
//!   a layer's modes gives different trees on different machines.
//!
//! Areas: lifecycle, mounting, content across snapshots, diffs through core's
//! layer format, the anchors' graph tests, quota, threads, processes (several
//! driver instances on one home in worker processes, some killed), restarts,
//! and the ABI contract. A check that cannot run here (a capability the
//! driver does not claim, no root, no way to start a worker) is skipped with
//! its reason, never passed.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod checks;
#[cfg(unix)]
pub mod harness;
pub mod worker;

/// Scratch filesystems for backends, and the reference tree and its
/// comparison: shared with strata's own tests through the testkit.
#[cfg(unix)]
pub use strata_testkit::{mounts as backend, tree};

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_plugin_abi::{DriverError, GraphDriver, KeyValues};

/// Starts the driver again on the same home (for the restart checks).
pub type Reopen = Box<dyn Fn() -> Result<Box<dyn GraphDriver>, DriverError> + Send + Sync>;

/// Starts the driver again on the same home with the given driver options.
pub type ReopenWith =
    Box<dyn Fn(&KeyValues) -> Result<Box<dyn GraphDriver>, DriverError> + Send + Sync>;

/// A command that starts the driver on the same home in another process and
/// runs one worker task there ([`worker::run_task`]).
pub type SpawnWorker = Box<dyn Fn(&[String]) -> std::process::Command + Send + Sync>;

/// How a run is set up.
pub struct SuiteOptions {
    /// The driver's home, to check that nothing is left behind in it (and
    /// that nothing is written beside it, in the graph root).
    pub home: Option<PathBuf>,
    /// The driver's run root; what is around it is watched too.
    pub run_root: Option<PathBuf>,
    /// Only checks whose name contains this text.
    pub filter: Option<String>,
    /// How to start the driver again on its home; without it the restart
    /// checks are skipped.
    pub reopen: Option<Reopen>,
    /// The same with other driver options.
    pub reopen_with: Option<ReopenWith>,
    /// The options the driver was started with.
    pub driver_options: KeyValues,
    /// Other documented options to restart with (ReconfigureDriver).
    pub restart_options: Vec<(String, String)>,
    /// How to run the driver in another process; without it the process
    /// checks are skipped.
    pub worker: Option<SpawnWorker>,
    /// The umasks each check runs under: `None` is the process's own.
    pub umasks: Vec<Option<u32>>,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            home: None,
            run_root: None,
            filter: None,
            reopen: None,
            reopen_with: None,
            driver_options: KeyValues::new(),
            restart_options: Vec::new(),
            worker: None,
            umasks: vec![None, Some(0o000), Some(0o077)],
        }
    }
}

/// What a check is given.
pub struct Suite<'a> {
    /// The driver under test. A check makes layers under ids of its own and
    /// removes them again; the harness fails it for anything left.
    pub driver: &'a dyn GraphDriver,
    /// How the run is set up: what a check may restart, reconfigure or run
    /// in another process, or must skip without.
    pub options: &'a SuiteOptions,
}

/// What became of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The check held, and it left the driver, its home and what is around
    /// it as it found them.
    Passed,
    /// The contract was broken, the check panicked, or it left something
    /// behind; the text says which and how.
    Failed(String),
    /// The check cannot run here; the reason says why.
    Skipped(String),
}

/// One run of one check, under one umask.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// The check's name, `area/what` (`lifecycle/create-exists-list-remove`).
    pub name: &'static str,
    /// The umask the check ran under, when not the process's own.
    pub umask: Option<u32>,
    /// How it ended, leftovers taken into account.
    pub outcome: Outcome,
    /// Wall-clock time from the check's start to the end of the harness's
    /// search for what it left behind.
    pub duration: Duration,
}

impl CheckResult {
    /// The check's name, with the umask when it ran under a forced one.
    pub fn label(&self) -> String {
        match self.umask {
            None => self.name.to_string(),
            Some(mask) => format!("{} [umask {mask:03o}]", self.name),
        }
    }
}

/// Everything a run found, for the runner's summary, exit code and JUnit
/// file.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every check run, once per umask, in the order they ran.
    pub results: Vec<CheckResult>,
}

impl Report {
    /// How many results have an outcome `f` accepts.
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }

    /// How many results passed.
    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Passed)
    }

    /// How many results failed; a driver passes the suite only at 0.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    /// How many results were skipped: contracts not tested here, never
    /// counted as passed.
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
        // Sum from +0.0: an empty sum of floats is -0.0.
        let total = self
            .results
            .iter()
            .fold(0.0f64, |sum, r| sum + r.duration.as_secs_f64());
        let mut xml = junit_head(
            suite_name,
            self.results.len(),
            self.failed(),
            self.skipped(),
            total,
        );
        for r in &self.results {
            let label = r.label();
            let (group, name) = label.split_once('/').unwrap_or(("", label.as_str()));
            let time = r.duration.as_secs_f64();
            match &r.outcome {
                Outcome::Passed => xml.push_str(&junit_case(group, name, time, None)),
                Outcome::Failed(why) => {
                    xml.push_str(&junit_case(group, name, time, Some(("failure", why))))
                }
                Outcome::Skipped(why) => {
                    xml.push_str(&junit_case(group, name, time, Some(("skipped", why))))
                }
            }
        }
        xml.push_str("</testsuite>\n");
        xml
    }

    /// A JUnit report for a run in which no check could run (the driver
    /// would not load, the backend could not be set up): one failing case,
    /// `runner/driver-starts`, saying why, so CI shows the reason rather
    /// than a missing file.
    pub fn junit_not_run(suite_name: &str, why: &str) -> String {
        let mut xml = junit_head(suite_name, 1, 1, 0, 0.0);
        xml.push_str(&junit_case(
            "runner",
            "driver-starts",
            0.0,
            Some(("failure", why)),
        ));
        xml.push_str("</testsuite>\n");
        xml
    }
}

/// Text as XML 1.0 can hold it: markup escaped, and control characters
/// (which XML 1.0 cannot carry at all) written as `\u{..}`.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn junit_head(name: &str, tests: usize, failures: usize, skipped: usize, time: f64) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{time:.3}\">\n",
        xml_escape(name)
    )
}

/// One test case; a failure or skip gives its first line as the message
/// and the whole text as the element's body, where CI shows it as written
/// (an attribute would fold its lines into one).
fn junit_case(group: &str, name: &str, time: f64, outcome: Option<(&str, &str)>) -> String {
    let open = format!(
        "  <testcase classname=\"{}\" name=\"{}\" time=\"{time:.3}\"",
        xml_escape(group),
        xml_escape(name)
    );
    match outcome {
        None => format!("{open}/>\n"),
        Some((element, why)) => {
            let first = why.lines().next().unwrap_or("");
            format!(
                "{open}><{element} message=\"{}\">{}</{element}></testcase>\n",
                xml_escape(first).replace('\n', " "),
                xml_escape(why)
            )
        }
    }
}

/// What a check returns: `Ok(())` passed, `Err(Skip)` could not run here,
/// `Err(Fail)` failed.
pub type CheckOutcome = Result<(), Verdict>;

/// Why a check did not pass.
#[derive(Debug)]
pub enum Verdict {
    /// The driver broke the contract; the text says how, naming the layer,
    /// path or value at fault (what [`ensure!`] returns).
    Fail(String),
    /// The check cannot run here (a capability not claimed, no root, no
    /// worker); the text is the reason reported.
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
    /// `area/what`, unique in the suite; `--filter` matches against it.
    pub name: &'static str,
    /// What a driver must do to pass, in one sentence.
    pub contract: &'static str,
    /// The check itself. It may panic (that fails it); the harness times
    /// it, sets the umask and looks for leftovers around it.
    pub run: fn(&Suite) -> CheckOutcome,
}

/// Runs every check (or those matching the filter) against `driver`, under
/// each of the umasks asked for, calling `on_result` as each finishes.
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
        for umask in options.umasks.iter().copied() {
            let result = run_one(driver, options, &check, umask);
            on_result(&result);
            report.results.push(result);
        }
    }
    report
}

fn run_one(
    driver: &dyn GraphDriver,
    options: &SuiteOptions,
    check: &Check,
    umask: Option<u32>,
) -> CheckResult {
    let home_before = options.home.as_deref().map(snapshot_home);
    let layers_before: BTreeSet<String> = driver.list().unwrap_or_default().into_iter().collect();
    let around_before = surroundings(options);
    let start = Instant::now();
    let suite = Suite { driver, options };
    // umask is the whole process's: checks run one at a time.
    #[cfg(unix)]
    let saved = umask.map(|mask| rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask)));
    // Elsewhere there is no umask to set: a run asked for one says so.
    #[cfg(not(unix))]
    if umask.is_some() {
        return CheckResult {
            name: check.name,
            umask,
            outcome: Outcome::Skipped("a umask exists only on Linux".into()),
            duration: start.elapsed(),
        };
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| (check.run)(&suite)));
    #[cfg(unix)]
    if let Some(saved) = saved {
        rustix::process::umask(saved);
    }
    let outcome = match outcome {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(Verdict::Fail(why))) => Outcome::Failed(why),
        Ok(Err(Verdict::Skip(why))) => Outcome::Skipped(why),
        Err(panic) => Outcome::Failed(format!("panicked: {}", panic_text(&*panic))),
    };
    let mut left = leftovers(driver, &layers_before, options.home.as_deref(), home_before);
    let around_after = surroundings(options);
    let outside: Vec<String> = around_after
        .difference(&around_before)
        .chain(around_before.difference(&around_after))
        .map(|p| p.display().to_string())
        .collect();
    if !outside.is_empty() {
        let written = format!(
            "changed outside the driver's home and run root: {}",
            outside.join(", ")
        );
        left = Some(match left {
            Some(l) => format!("{l}; {written}"),
            None => written,
        });
    }
    let outcome = match (outcome, left) {
        (Outcome::Passed, Some(left)) => Outcome::Failed(format!("left behind: {left}")),
        (outcome, _) => outcome,
    };
    CheckResult {
        name: check.name,
        umask,
        outcome,
        duration: start.elapsed(),
    }
}

/// What is beside the driver's home and run root (the graph root and the run
/// root's parent), the two themselves left out: a driver writes nothing
/// there.
fn surroundings(options: &SuiteOptions) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let own: Vec<&Path> = [options.home.as_deref(), options.run_root.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    for dir in own.iter().filter_map(|p| p.parent()) {
        walk_outside(dir, &own, &mut out);
    }
    out
}

fn walk_outside(dir: &Path, own: &[&Path], out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if own.contains(&path.as_path()) || out.len() >= 10_000 {
            continue;
        }
        let meta = entry.metadata().ok();
        let stamp = meta
            .as_ref()
            .map(|m| {
                let modified = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                format!("{}:{modified}", m.len())
            })
            .unwrap_or_default();
        // The entry and its size and time, so a write into an existing file
        // shows as well as a new one.
        out.insert(path.join(format!("@{stamp}")));
        if meta.is_some_and(|m| m.is_dir()) {
            walk_outside(&path, own, out);
        }
    }
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

/// What a check left: layers it made still listed (removed now), mounts
/// under the home (taken down now), or new entries in the home.
fn leftovers(
    driver: &dyn GraphDriver,
    layers_before: &BTreeSet<String>,
    home: Option<&Path>,
    before: Option<BTreeSet<PathBuf>>,
) -> Option<String> {
    let mut found = Vec::new();
    match driver.list() {
        Ok(layers) => {
            let mut new: Vec<String> = layers
                .into_iter()
                .filter(|id| !layers_before.contains(id))
                .collect();
            if !new.is_empty() {
                new.sort();
                found.push(format!("layers {new:?}"));
                // Removed, so one check's mess does not fail the next:
                // children before parents, by trying again while it helps.
                while !new.is_empty() {
                    let before = new.len();
                    new.retain(|id| {
                        driver.remove(id).is_err() && driver.exists(id).unwrap_or(false)
                    });
                    if new.len() == before {
                        break;
                    }
                }
            }
        }
        Err(e) => found.push(format!("(list failed: {e})")),
    }
    // (Windows: a layer is a volume of its own, never mounted under the home.)
    #[cfg(unix)]
    if let Some(home) = home
        && let Ok(mounted) = strata_driver_kit::mounts::mounted_beneath(home)
        && !mounted.is_empty()
    {
        let names: Vec<String> = mounted.iter().map(|p| p.display().to_string()).collect();
        found.push(format!(
            "mounts under the driver's home: {}",
            names.join(", ")
        ));
        // Taken down, so the next check starts clean and nothing outlives
        // the run.
        let _ = strata_driver_kit::mounts::unmount_beneath(home);
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

#[cfg(test)]
mod junit_tests {
    use super::*;

    fn result(name: &'static str, outcome: Outcome) -> CheckResult {
        CheckResult {
            name,
            umask: None,
            outcome,
            duration: Duration::from_millis(1500),
        }
    }

    #[test]
    fn failures_keep_their_lines_in_the_body_and_xml_stays_valid() {
        let report = Report {
            results: vec![
                result("content/a", Outcome::Passed),
                result(
                    "content/b",
                    Outcome::Failed("trees differ:\n  /x: mode 644 <> 600\n  bell \u{7}".into()),
                ),
                result("quota/c", Outcome::Skipped("no quota".into())),
            ],
        };
        let xml = report.junit("suite \"x\"");
        assert!(
            xml.contains(
                r#"name="suite &quot;x&quot;" tests="3" failures="1" skipped="1" time="4.500""#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<failure message="trees differ:">trees differ:
  /x: mode 644 &lt;&gt; 600
  bell \u{7}</failure>"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<skipped message="no quota">no quota</skipped>"#),
            "{xml}"
        );
        assert!(!xml.chars().any(|c| c.is_control() && c != '\n'), "{xml:?}");
    }

    #[test]
    fn an_empty_run_takes_no_negative_time_and_a_run_that_never_started_says_why() {
        let empty = Report { results: vec![] }.junit("s");
        assert!(
            empty.contains(r#"tests="0" failures="0" skipped="0" time="0.000""#),
            "{empty}"
        );
        let not_run = Report::junit_not_run("s", "the driver would not load: no such file");
        assert!(not_run.contains(r#"tests="1" failures="1""#), "{not_run}");
        assert!(
            not_run.contains(r#"name="driver-starts" time="0.000"><failure message="the driver would not load: no such file">"#),
            "{not_run}"
        );
    }
}
