//! What a test does when something it needs is missing here: it fails,
//! naming what is missing, because a test that passes without running
//! proves nothing. Where skipping is wanted (a developer's machine without
//! zfs-fuse, say), `STRATA_TEST_ALLOW_SKIP=1` turns the failure into a skip
//! that says why on standard error.

/// The environment variable that lets tests skip instead of failing.
pub const ALLOW_SKIP: &str = "STRATA_TEST_ALLOW_SKIP";

/// Fails the test `test`, which cannot run here because of `reason`, unless
/// skips are allowed ([`ALLOW_SKIP`]); then says it skipped and returns, and
/// the caller returns too.
pub fn cannot_run(test: &str, reason: &str) {
    if std::env::var_os(ALLOW_SKIP).is_some_and(|v| v == "1") {
        eprintln!("skipped {test}: {reason}");
        return;
    }
    panic!("{test} cannot run here: {reason} (set {ALLOW_SKIP}=1 to skip such tests instead)");
}

/// Whether `tool` is on the PATH.
pub fn have_tool(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the tests run as root (mounts, loop devices, chown).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
