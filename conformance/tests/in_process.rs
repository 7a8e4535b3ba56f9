//! The suite run in-process against the vfs driver linked as a library, the
//! way a driver author's unit tests can run it.

use strata_conformance::{Outcome, SuiteOptions, run};
use strata_driver_vfs::VfsDriver;
use strata_plugin_abi::{DriverPlugin, InitArgs};

#[test]
fn vfs_passes_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let driver = VfsDriver::init(&InitArgs {
        home: home.clone(),
        run_root: dir.path().join("run"),
        ..Default::default()
    })
    .unwrap();
    let report = run(
        &driver,
        &SuiteOptions {
            home: Some(home),
            filter: None,
        },
    );
    let failures: Vec<_> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(report.passed() >= 10, "{}", report.summary());
}

#[test]
fn the_runner_fails_a_driver_that_does_not_behave() {
    // The boundary probe keeps ids in memory and has no trees: a storage driver
    // it is not, and the suite must say so.
    let (success, text) = run_runner("strata-test-plugin");
    assert!(!success, "{text}");
    assert!(text.contains("FAILED   mount/get-put-same-path"), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.ends_with("skipped") && !last.contains(" 0 failed"),
        "{text}"
    );
}

#[test]
fn the_runner_passes_the_vfs_library() {
    let (success, text) = run_runner("strata-driver-vfs");
    assert!(success, "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap()
            .ends_with("0 failed, 0 skipped"),
        "{text}"
    );
}

/// Runs the `strata-conformance` runner on the library of `package`; returns
/// whether it succeeded and what it printed.
fn run_runner(package: &str) -> (bool, String) {
    let library = strata_testkit::plugins::build_plugin(package);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata-conformance"))
        .arg("--driver")
        .arg(&library)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
