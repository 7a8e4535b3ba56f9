//! The runtime example (`core/examples/runtime.rs`) is built and run against
//! a real store: a configuration file naming the vfs driver and where its
//! library is, and an OCI layout.

use std::fs;

use strata_core::{Config, Overrides, Store};
use strata_testkit::fixtures::RawTar;
use strata_testkit::fixtures::layout::{Layer, write_image};
use strata_testkit::plugins::build_plugin;

#[test]
fn the_runtime_example_imports_mounts_and_cleans_up() {
    let scratch = tempfile::tempdir().unwrap();
    let vfs = build_plugin("strata-driver-vfs");
    let config = scratch.path().join("storage.toml");
    fs::write(
        &config,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\ndriver_dirs = [\"{}\"]\n",
            scratch.path().join("graph").display(),
            scratch.path().join("run").display(),
            vfs.parent().unwrap().display()
        ),
    )
    .unwrap();
    let mut tar = RawTar::new();
    tar.dir("etc/").file("etc/hostname", b"example\n");
    let layout = scratch.path().join("layout");
    write_image(&layout, "v1", &[Layer::gzip(&tar.finish())], "example");

    let out = strata_testkit::cargo()
        .args([
            "run",
            "-q",
            "-p",
            "strata-core",
            "--example",
            "runtime",
            "--",
        ])
        .arg(&config)
        .arg(format!("{}:v1", layout.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" mounted at "), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim() == "etc"), "{stdout}");
    assert!(stdout.contains(" deleted"), "{stdout}");

    // The container is gone and the image stays, as a runtime expects.
    let store = Store::open(
        &Config::load(&Overrides {
            config: Some(config),
            ..Default::default()
        })
        .unwrap(),
    )
    .unwrap();
    assert!(store.containers.list().unwrap().is_empty());
    assert_eq!(store.images.list().unwrap().len(), 1);
}
