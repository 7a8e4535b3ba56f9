//! The conformance runner: it fails a misbehaving driver, passes the vfs
//! library, catches planted faults, and sets up and tears down each backend.
//! (The suite run in-process against a driver linked as a library is in the
//! vfs driver's own tests, the way a driver author's unit tests run it.)

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
    let (success, text) =
        run_runner_with("strata-driver-vfs", &["--restart-option", "reflink=never"]);
    assert!(success, "{text}");
    assert!(text.contains(" 0 failed, "), "{text}");
    for line in text.lines().filter(|l| l.starts_with("skipped")) {
        assert!(
            line.contains("does not claim") || line.contains("has no native diff"),
            "a skip that could run here: {line}"
        );
    }
}

/// A driver that fails a check exits 1; one the suite cannot even start
/// exits 2, and its JUnit file is still written, saying why.
#[test]
fn exit_status_tells_a_failed_check_from_a_run_that_never_started() {
    let library = strata_testkit::plugins::build_plugin("strata-test-plugin");
    let runner = || std::process::Command::new(env!("CARGO_BIN_EXE_strata-conformance"));
    let failed = runner()
        .arg("--driver")
        .arg(&library)
        .args([
            "--umasks",
            "default",
            "--filter",
            "mount/get-put-counts-references",
        ])
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("report.xml");
    let missing = dir.path().join("libstrata_driver_gone.so");
    let not_run = runner()
        .arg("--driver")
        .arg(&missing)
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap();
    assert_eq!(not_run.status.code(), Some(2), "{not_run:?}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"tests="1" failures="1""#)
            && xml.contains("driver-starts")
            && xml.contains("libstrata_driver_gone.so"),
        "{xml}"
    );
    let nothing = runner()
        .arg("--driver")
        .arg(&library)
        .args(["--filter", "no-check-is-called-this"])
        .output()
        .unwrap();
    assert_eq!(nothing.status.code(), Some(2), "{nothing:?}");
}

/// Each fault planted in the template fails the check that enforces its
/// contract, for the reason the check gives. The faults stand for the ways a
/// driver goes wrong: content, leftovers, parents, restarts, mount options,
/// cleanup, partial creates, ids outside create, writes outside the home,
/// umask, concurrent creates, and a start that disturbs live work.
#[test]
fn planted_faults_fail_the_checks_they_should() {
    for (fault, check, because) in [
        (
            "lose-xattrs",
            "content/snapshot-keeps-every-file-kind",
            "xattr user.strata.note: \"hello\" != (none)",
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
        (
            "forget-parents-on-restart",
            "restart/every-answer-is-the-same",
            "was removed",
        ),
        (
            "ignore-mount-options",
            "mount/options-honoured-or-refused",
            "with \"ro\"",
        ),
        (
            "cleanup-removes-layers",
            "lifecycle/cleanup-is-idempotent",
            "cleanup removed a layer",
        ),
        (
            "partial-create",
            "abi/unknown-storage-option-refused",
            "left behind: layers",
        ),
        (
            "unchecked-ids",
            "lifecycle/invalid-ids-refused-by-every-method",
            "expected invalid input",
        ),
        (
            "write-outside-home",
            "lifecycle/create-exists-list-remove",
            "changed outside the driver's home",
        ),
        ("umask-root", "mount/new-layer-root-mode", "[umask 077]"),
        (
            "racy-create",
            "processes/same-ids-from-several-processes",
            "expected 1 and 3",
        ),
        (
            "wipe-staging-at-start",
            "processes/parallel-lifecycles-while-others-start",
            "No such file or directory",
        ),
        (
            "visible-while-building",
            "processes/killed-processes-leave-a-home-the-next-start-cleans",
            "a half-made layer",
        ),
    ] {
        let option = format!("fault={fault}");
        let (success, text) = run_runner_with(
            "strata-test-faulty-driver",
            &["-o", &option, "--filter", check],
        );
        assert!(
            !success,
            "{fault}: the suite passed a faulty driver:\n{text}"
        );
        let first = text
            .find(&format!("FAILED   {check}"))
            .unwrap_or_else(|| panic!("{fault}: {check} did not fail:\n{text}"));
        // The reason is on the line, or on the lines of detail below it.
        assert!(
            text[first..].contains(because),
            "{fault}: {check} failed, but not for its reason ({because}):\n{}",
            &text[first..]
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
        if backend == "zfs-fuse" && !strata_testkit::skip::have_tool("zpool") {
            strata_testkit::skip::cannot_run(
                "the zfs-fuse backend",
                "the zfs-fuse package is not installed (scripts/install-deps.sh installs it)",
            );
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
