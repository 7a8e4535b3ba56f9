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
    let reopen_home = home.clone();
    let run_root = dir.path().join("run");
    let report = run(
        &driver,
        &SuiteOptions {
            home: Some(home),
            filter: None,
            reopen: Some(Box::new(move || {
                VfsDriver::init(&InitArgs {
                    home: reopen_home.clone(),
                    run_root: run_root.clone(),
                    ..Default::default()
                })
                .map(|d| Box::new(d) as Box<dyn strata_plugin_abi::GraphDriver>)
                .map_err(|e| e.to_string())
            })),
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
                why.contains("does not claim") || why.contains("has no native diff"),
                "{} skipped for a reason that could be fixed here: {why}",
                result.name
            );
        }
    }
}

#[test]
fn the_runner_fails_a_driver_that_does_not_behave() {
    // The boundary probe keeps ids in memory and has no trees: a storage driver
    // it is not, and the suite must say so.
    let (success, text) = run_runner("strata-test-plugin");
    assert!(!success, "{text}");
    assert!(
        text.contains("FAILED   mount/get-put-counts-references"),
        "{text}"
    );
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
    assert!(text.contains(" 0 failed, "), "{text}");
    for line in text.lines().filter(|l| l.starts_with("skipped")) {
        assert!(
            line.contains("does not claim") || line.contains("has no native diff"),
            "a skip that could run here: {line}"
        );
    }
}

#[test]
fn planted_faults_fail_the_checks_they_should() {
    for (fault, check, because) in [
        (
            "lose-xattrs",
            "content/snapshot-keeps-every-file-kind",
            "xattrs",
        ),
        (
            "leave-directory",
            "lifecycle/create-exists-list-remove",
            "left behind",
        ),
        (
            "orphan-children",
            "lifecycle/remove-with-children-refused",
            "expected busy",
        ),
    ] {
        let option = format!("fault={fault}");
        let (success, text) = run_runner_with("strata-test-faulty-driver", &["-o", &option]);
        assert!(
            !success,
            "{fault}: the suite passed a faulty driver:\n{text}"
        );
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("FAILED   {check}")))
            .unwrap_or_else(|| panic!("{fault}: {check} did not fail:\n{text}"));
        assert!(
            line.contains(because) || text.contains(because),
            "{fault}: {line}"
        );
    }
}

/// Runs the `strata-conformance` runner on the library of `package`; returns
/// whether it succeeded and what it printed.
fn run_runner(package: &str) -> (bool, String) {
    run_runner_with(package, &[])
}

fn run_runner_with(package: &str, extra: &[&str]) -> (bool, String) {
    let library = strata_testkit::plugins::build_plugin(package);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata-conformance"))
        .arg("--driver")
        .arg(&library)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_runner_sets_up_and_tears_down_each_backend() {
    for backend in ["tmpfs", "loop-ext4", "loop-xfs", "loop-btrfs", "zfs-fuse"] {
        if backend == "zfs-fuse"
            && std::process::Command::new("zpool")
                .arg("-?")
                .output()
                .is_err()
        {
            eprintln!("skipped backend zfs-fuse: the zfs-fuse package is not installed here");
            continue;
        }
        let (success, text) = run_runner_with(
            "strata-driver-example",
            &["--backend", backend, "--filter", "lifecycle/"],
        );
        assert!(success, "{backend}:\n{text}");
        assert!(text.contains(&format!("(backend: {backend})")), "{text}");
        // Nothing of the backend is left: no mounts under temporary directories
        // made for it, no loop devices, no pools.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.lines().any(|l| l.contains("strata-test")
                || l.contains("/tmp/.tmp")
                || l.contains("zfs-fuse")),
            "{backend} left a mount:\n{mounts}"
        );
        if backend == "zfs-fuse" {
            let pools = std::process::Command::new("zpool")
                .args(["list", "-H", "-o", "name"])
                .output()
                .unwrap();
            let names = String::from_utf8_lossy(&pools.stdout);
            assert!(!names.contains("strata-"), "pools left: {names}");
        }
    }
}
