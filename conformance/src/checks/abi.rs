//! The driver object as a whole: every method answers, optional ones say
//! "not supported" cleanly, capabilities are honoured.

use strata_plugin_abi::{Capabilities, CreateOptions, ErrorKind};

use super::{Layers, check, expect_kind};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "abi/optional-methods-answer-cleanly",
            "A driver not owning the diff format answers diff, apply_diff and diff_size with NotSupported, and native_diff answers Some only from a driver claiming native-diff.",
            optional_methods_answer_cleanly,
        ),
        check(
            "abi/unknown-storage-option-refused",
            "Create with an unknown storage option fails with InvalidInput.",
            unknown_storage_option_refused,
        ),
        check(
            "abi/status-and-metadata-answer",
            "The driver has a name and a non-empty status; metadata answers for an existing layer and NotFound for an unknown one.",
            status_and_metadata_answer,
        ),
    ]
}

fn optional_methods_answer_cleanly(suite: &Suite) -> CheckOutcome {
    let driver = suite.driver;
    let mut layers = Layers::new(driver);
    layers.create("conformance-optional", None)?;
    let caps = driver.capabilities();
    if !caps.contains(Capabilities::OWNS_DIFF_FORMAT) {
        expect_kind(
            "diff from a driver that does not own the format",
            driver.diff("conformance-optional", None).map(|_| ()),
            ErrorKind::NotSupported,
        )?;
        expect_kind(
            "apply_diff to a driver that does not own the format",
            driver.apply_diff("conformance-optional", None, &mut std::io::empty()),
            ErrorKind::NotSupported,
        )?;
        expect_kind(
            "diff size from a driver that does not own the format",
            driver.diff_size("conformance-optional", None),
            ErrorKind::NotSupported,
        )?;
    }
    let native = driver
        .native_diff("conformance-optional")
        .map_err(|e| Verdict::Fail(format!("native diff: {e}")))?;
    // A driver with native diff may answer None when its diff would be wrong
    // right now; one without it must never answer Some.
    ensure!(
        native.is_none() || caps.contains(Capabilities::NATIVE_DIFF),
        "native_diff answered {native:?} but the driver does not claim native-diff"
    );
    Ok(())
}

fn unknown_storage_option_refused(suite: &Suite) -> CheckOutcome {
    let mut options = CreateOptions::default();
    options.storage_opts.push("conformance-no-such-option", "1");
    let result = suite.driver.create("conformance-opt", None, &options);
    if result.is_ok() {
        let _ = suite.driver.remove("conformance-opt");
    }
    expect_kind(
        "create with an unknown storage option",
        result,
        ErrorKind::InvalidInput,
    )
}

fn status_and_metadata_answer(suite: &Suite) -> CheckOutcome {
    let driver = suite.driver;
    ensure!(!driver.name().is_empty(), "the driver has no name");
    ensure!(
        !driver.status().is_empty(),
        "the driver reports no status at all"
    );
    let mut layers = Layers::new(driver);
    layers.create("conformance-meta", None)?;
    driver
        .metadata("conformance-meta")
        .map_err(|e| Verdict::Fail(format!("metadata of an existing layer: {e}")))?;
    expect_kind(
        "metadata of an unknown layer",
        driver.metadata("conformance-ghost"),
        ErrorKind::NotFound,
    )
}
