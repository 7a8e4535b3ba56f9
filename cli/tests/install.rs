//! scripts/install.sh as a packager or an operator runs it: everything lands
//! under the prefix, the installed `strata` finds the installed drivers
//! with no configuration (and not the example template), the completions
//! and man pages are there, and the example configuration loads.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_testkit::plugins::build_plugin;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn an_installed_strata_finds_its_drivers_completions_and_man_pages() {
    let scratch = tempfile::tempdir().unwrap();
    // What a build leaves: the command, the runner, the drivers.
    let from = scratch.path().join("build");
    fs::create_dir_all(&from).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_strata"), from.join("strata")).unwrap();
    let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace())
        .args([
            "build",
            "--quiet",
            "-p",
            "strata-conformance",
            "--bin",
            "strata-conformance",
        ])
        .status()
        .unwrap();
    assert!(built.success());
    let runner = Path::new(env!("CARGO_BIN_EXE_strata"))
        .parent()
        .unwrap()
        .join("strata-conformance");
    fs::copy(&runner, from.join("strata-conformance")).unwrap();
    for driver in ["vfs", "overlay", "btrfs", "zfs", "devicemapper"] {
        let library = build_plugin(&format!("strata-driver-{driver}"));
        fs::copy(&library, from.join(library.file_name().unwrap())).unwrap();
    }
    fs::copy(
        build_plugin("strata-driver-example"),
        from.join("libstrata_driver_example.so"),
    )
    .unwrap();

    let destdir = scratch.path().join("stage");
    let out = Command::new(workspace().join("scripts/install.sh"))
        .args(["--prefix", "/usr", "--destdir"])
        .arg(&destdir)
        .arg("--from")
        .arg(&from)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let usr = destdir.join("usr");
    let strata = usr.join("bin/strata");
    assert!(usr.join("bin/strata-conformance").exists());
    assert!(usr.join("share/man/man1/strata.1").exists());
    assert!(usr.join("share/man/man1/strata-layer-list.1").exists());
    let bash = fs::read_to_string(usr.join("share/bash-completion/completions/strata")).unwrap();
    assert!(
        bash.contains("strata") && bash.contains("container"),
        "{bash}"
    );
    assert!(usr.join("share/zsh/site-functions/_strata").exists());
    assert!(
        usr.join("share/fish/vendor_completions.d/strata.fish")
            .exists()
    );
    assert!(
        !usr.join("lib/strata/drivers/libstrata_driver_example.so")
            .exists()
    );

    let run = |args: &[&str]| {
        let mut cmd = Command::new(&strata);
        for (key, _) in std::env::vars() {
            if key.starts_with("STRATA_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--root")
            .arg(scratch.path().join("root"))
            .arg("--run-root")
            .arg(scratch.path().join("run"))
            .args(args)
            .output()
            .unwrap()
    };
    let drivers = run(&["drivers"]);
    let listed = String::from_utf8_lossy(&drivers.stdout);
    assert!(drivers.status.success(), "{listed}");
    for driver in ["vfs", "overlay", "btrfs", "zfs", "devicemapper"] {
        assert!(listed.contains(&format!("{driver}\n")), "{listed}");
    }
    assert!(
        listed.contains("found via:   beside the strata binary"),
        "{listed}"
    );
    assert!(
        !listed.contains("example"),
        "the template is offered: {listed}"
    );
    // The example configuration is one strata reads.
    let example = destdir.join("etc/strata/storage.toml.example");
    let status = run(&["--config", example.to_str().unwrap(), "--json", "status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}
