//! The conformance suite run in-process against the vfs driver linked as a
//! library, the way a driver author's unit tests can run it.

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
    let run_root = dir.path().join("run");
    let start = move |home: std::path::PathBuf, run_root: std::path::PathBuf| {
        move |options: &strata_plugin_abi::KeyValues| {
            VfsDriver::init(&InitArgs {
                home: home.clone(),
                run_root: run_root.clone(),
                options: options.clone(),
                ..Default::default()
            })
            .map(|d| Box::new(d) as Box<dyn strata_plugin_abi::GraphDriver>)
        }
    };
    let reopen = start(home.clone(), run_root.clone());
    let report = run(
        &driver,
        &SuiteOptions {
            home: Some(home.clone()),
            run_root: Some(run_root.clone()),
            reopen: Some(Box::new(move || reopen(&Default::default()))),
            reopen_with: Some(Box::new(start(home, run_root))),
            restart_options: vec![("reflink".into(), "never".into())],
            // umask is the process's, and the other tests of this binary run
            // beside this one: the runner tests cover the other umasks.
            umasks: vec![None],
            ..Default::default()
        },
    );
    let failures: Vec<_> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(report.passed() >= 25, "{}", report.summary());
    // The only skips are checks for capabilities vfs does not claim.
    for result in &report.results {
        if let Outcome::Skipped(why) = &result.outcome {
            assert!(
                why.contains("does not claim")
                    || why.contains("has no native diff")
                    || why.contains("a way to start the driver in another process"),
                "{} skipped for a reason that could be fixed here: {why}",
                result.name
            );
        }
    }
}
