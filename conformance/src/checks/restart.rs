//! Restarts: a driver started again on its home answers everything as it
//! did before, and a restart with other options does what its options say.

use std::fs;

use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, ErrorKind, GraphDriver, KeyValues,
};

use super::{Layers, check, io};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "restart/every-answer-is-the-same",
            "After a restart on the same home the driver answers exists, list, parents (removing a parent is still Busy), read-only layers (still refusing writes) and contents exactly as before.",
            every_answer_is_the_same,
        ),
        check(
            "restart/unknown-option-refused-and-harmless",
            "A restart with an unknown driver option is refused with InvalidInput and changes nothing: a normal restart afterwards sees every layer as it was.",
            unknown_option_refused,
        ),
        check(
            "restart/with-other-documented-options",
            "A restart with other documented options (given to the runner with --restart-option) sees every layer and content as before, can build on them, and a restart back sees what was built.",
            with_other_options,
        ),
    ]
}

/// What the suite can observe of a set of layers.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    listed: Vec<String>,
    exists: Vec<bool>,
    contents: Vec<Vec<u8>>,
    parent_removal: ErrorKind,
    read_only_write_refused: Option<bool>,
}

const BASE: &str = "conformance-restart-base";
const MIDDLE: &str = "conformance-restart-middle";
const TOP: &str = "conformance-restart-top";
const IDS: [&str; 3] = [BASE, MIDDLE, TOP];

fn build(layers: &mut Layers) -> CheckOutcome {
    layers.create(BASE, None)?;
    let base = layers.mount(BASE)?;
    io("write", fs::write(base.join("file"), b"from the base"))?;
    layers.unmount(BASE)?;
    // Read-only, as an image layer is.
    layers.create_with(MIDDLE, Some(BASE), &CreateOptions::default())?;
    layers.create(TOP, Some(MIDDLE))?;
    let top = layers.mount(TOP)?;
    io("write", fs::write(top.join("file"), b"from the top"))?;
    io("write", fs::write(top.join("only-top"), b"mine"))?;
    layers.unmount(TOP)
}

fn observe(driver: &dyn GraphDriver, layers: &Layers) -> Result<Observed, Verdict> {
    let mut listed = driver
        .list()
        .map_err(|e| Verdict::Fail(format!("list: {e}")))?;
    listed.retain(|id| id.starts_with("conformance-restart-"));
    listed.sort();
    let exists = IDS
        .iter()
        .map(|id| driver.exists(id).unwrap_or(false))
        .collect();
    let mut contents = Vec::new();
    for id in IDS {
        let path = layers.mount(id)?;
        contents.push(fs::read(path.join("file")).unwrap_or_default());
        contents.push(fs::read(path.join("only-top")).unwrap_or_default());
        layers.unmount(id)?;
    }
    let parent_removal = match driver.remove(MIDDLE) {
        Ok(()) => {
            return Err(Verdict::Fail(format!(
                "{MIDDLE}, parent of {TOP}, was removed"
            )));
        }
        Err(e) => e.kind(),
    };
    let read_only_write_refused = if driver
        .capabilities()
        .contains(Capabilities::READ_ONLY_LAYERS)
    {
        let path = layers.mount(MIDDLE)?;
        let refused = fs::write(path.join("new"), b"x").is_err();
        layers.unmount(MIDDLE)?;
        Some(refused)
    } else {
        None
    };
    Ok(Observed {
        listed,
        exists,
        contents,
        parent_removal,
        read_only_write_refused,
    })
}

/// Hands the layers over from the suite's driver to `again` for removal.
fn hand_over<'d>(layers: &mut Layers, again: &'d dyn GraphDriver) -> Layers<'d> {
    let mut theirs = Layers::new(again);
    for id in IDS {
        layers.forget(id);
        theirs.adopt(id);
    }
    theirs
}

fn reopen(suite: &Suite, options: Option<&KeyValues>) -> Result<Box<dyn GraphDriver>, DriverError> {
    match (options, &suite.options.reopen_with, &suite.options.reopen) {
        (Some(options), Some(reopen_with), _) => reopen_with(options),
        (None, _, Some(reopen)) => reopen(),
        _ => Err(DriverError::other("no way to restart the driver was given")),
    }
}

/// What a driver must answer about the layers `build` made.
fn expected(driver: &dyn GraphDriver) -> Observed {
    let mut listed: Vec<String> = IDS.iter().map(|id| id.to_string()).collect();
    listed.sort();
    let contents = [
        (&b"from the base"[..], &b""[..]),
        (b"from the base", b""),
        (b"from the top", b"mine"),
    ]
    .iter()
    .flat_map(|(file, only_top)| [file.to_vec(), only_top.to_vec()])
    .collect();
    Observed {
        listed,
        exists: vec![true; IDS.len()],
        contents,
        parent_removal: ErrorKind::Busy,
        read_only_write_refused: driver
            .capabilities()
            .contains(Capabilities::READ_ONLY_LAYERS)
            .then_some(true),
    }
}

fn needs_reopen(suite: &Suite, with_options: bool) -> CheckOutcome {
    let given = if with_options {
        suite.options.reopen_with.is_some()
    } else {
        suite.options.reopen.is_some()
    };
    if given {
        Ok(())
    } else {
        Err(Verdict::Skip(
            "the suite was not given a way to start the driver again on its home".into(),
        ))
    }
}

fn every_answer_is_the_same(suite: &Suite) -> CheckOutcome {
    needs_reopen(suite, false)?;
    let mut layers = Layers::new(suite.driver);
    build(&mut layers)?;
    let before = observe(suite.driver, &layers)?;
    let want = expected(suite.driver);
    ensure!(
        before == want,
        "before any restart the driver answers {before:?}, expected {want:?}"
    );
    // A second instance on the same home, as another process starting on it
    // would be; the first one stays up.
    let again = reopen(suite, None).map_err(|e| Verdict::Fail(format!("restart: {e}")))?;
    let theirs = hand_over(&mut layers, again.as_ref());
    let after = observe(again.as_ref(), &theirs)?;
    ensure!(
        after == before,
        "after a restart the driver answers {after:?}, before it answered {before:?}"
    );
    Ok(())
}

fn unknown_option_refused(suite: &Suite) -> CheckOutcome {
    needs_reopen(suite, true)?;
    needs_reopen(suite, false)?;
    let mut layers = Layers::new(suite.driver);
    build(&mut layers)?;
    let before = observe(suite.driver, &layers)?;
    let mut bogus = suite.options.driver_options.clone();
    bogus.push("conformance-no-such-option", "1");
    match reopen(suite, Some(&bogus)) {
        Ok(_) => {
            return Err(Verdict::Fail(
                "the driver started with an unknown option 'conformance-no-such-option'".into(),
            ));
        }
        Err(e) => {
            ensure!(
                e.kind() == ErrorKind::InvalidInput,
                "an unknown option was refused as {}, expected invalid input ({e})",
                e.kind()
            );
            ensure!(
                e.message().contains("conformance-no-such-option"),
                "the refusal of an unknown option does not name it: {e}"
            );
        }
    }
    let again = reopen(suite, None).map_err(|e| Verdict::Fail(format!("restart: {e}")))?;
    let theirs = hand_over(&mut layers, again.as_ref());
    let after = observe(again.as_ref(), &theirs)?;
    ensure!(
        after == before,
        "after a refused start with an unknown option the driver answers {after:?}, before {before:?}"
    );
    Ok(())
}

fn with_other_options(suite: &Suite) -> CheckOutcome {
    needs_reopen(suite, true)?;
    if suite.options.restart_options.is_empty() {
        return Err(Verdict::Skip(
            "no other documented options were given to restart with (runner: --restart-option KEY=VALUE)".into(),
        ));
    }
    let mut layers = Layers::new(suite.driver);
    build(&mut layers)?;
    let before = observe(suite.driver, &layers)?;
    let mut other = suite.options.driver_options.clone();
    for (key, value) in &suite.options.restart_options {
        other.push(key.clone(), value.clone());
    }
    let reconfigured = reopen(suite, Some(&other))
        .map_err(|e| Verdict::Fail(format!("restart with {other:?}: {e}")))?;
    let mut theirs = hand_over(&mut layers, reconfigured.as_ref());
    let after = observe(reconfigured.as_ref(), &theirs)?;
    ensure!(
        after == before,
        "after a restart with {other:?} the driver answers {after:?}, before {before:?}"
    );
    // Build on the old layers under the new options.
    let built = "conformance-restart-built";
    theirs.create(built, Some(TOP))?;
    let path = theirs.mount(built)?;
    io(
        "write",
        fs::write(path.join("built"), b"under other options"),
    )?;
    let inherited = fs::read(path.join("file")).unwrap_or_default();
    theirs.unmount(built)?;
    ensure!(
        inherited == b"from the top",
        "a child made after the restart with {other:?} reads {inherited:?}"
    );
    // And back: the original options see it.
    let back = reopen(suite, Some(&suite.options.driver_options))
        .map_err(|e| Verdict::Fail(format!("restart back with the original options: {e}")))?;
    let path = back
        .get(built, &Default::default())
        .map_err(|e| Verdict::Fail(format!("mount {built} after restarting back: {e}")))?;
    let read = fs::read(path.join("built")).unwrap_or_default();
    let _ = back.put(built);
    ensure!(
        read == b"under other options",
        "restarted back, {built} reads {read:?}"
    );
    Ok(())
}
