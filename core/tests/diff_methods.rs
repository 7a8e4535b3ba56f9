//! How core turns a driver's layers into diffs and back follows what the
//! driver declares: a driver that owns its layer format gets its own
//! `apply_diff`, `diff` and `diff_size` called (by import, export, and a
//! layer's diff and changes), and a native diff in a whiteout format core
//! does not know is refused when the store opens.

use std::fs;
use std::path::Path;

use strata_core::archive::ChangeKind;
use strata_core::layers::{DiffMethod, DiffSource};
use strata_core::oci::{ImageLocation, NoProgress};
use strata_core::{Digest, ErrorKind, LayerId, Store};
use strata_plugin_abi::{InitArgs, load_driver};
use strata_testkit::fixtures::RawTar;
use strata_testkit::fixtures::layout::{Layer, write_image};
use strata_testkit::plugins::build_plugin;

fn open_store(graph: &Path, options: &[(&str, &str)]) -> strata_core::Result<Store> {
    let args = InitArgs {
        home: graph.join("format-owner"),
        run_root: graph.join("run/format-owner"),
        options: options.iter().copied().collect(),
        ..Default::default()
    };
    let driver = load_driver(&build_plugin("strata-test-format-owner"), &args).unwrap();
    Store::with_driver(graph, &graph.join("run"), Box::new(driver))
}

fn calls(graph: &Path) -> Vec<String> {
    fs::read_to_string(graph.join("format-owner/calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_driver_that_owns_its_format_gets_its_own_calls() {
    let scratch = tempfile::tempdir().unwrap();
    let graph = scratch.path().join("graph");
    let store = open_store(&graph, &[]).unwrap();
    assert_eq!(store.layers.diff_method(), DiffMethod::DriverStream);

    // Import: the driver is handed the stream, decompressed, as it is.
    let mut tar = RawTar::new();
    tar.dir("etc/")
        .file("etc/hostname", b"strata\n")
        .file("etc/.wh.passwd", b"")
        .file("usr/.wh..wh..opq", b"");
    let tar = tar.finish();
    let layout = scratch.path().join("layout");
    write_image(&layout, "latest", &[Layer::gzip(&tar)], "format-owner");
    let imported = store
        .import_image(
            &ImageLocation::parse(layout.to_str().unwrap()),
            &[],
            &NoProgress,
        )
        .unwrap();
    let layer = imported.image.top_layer.clone().unwrap();
    assert_eq!(calls(&graph), [format!("apply_diff {layer}")]);
    let kept = fs::read(graph.join(format!("format-owner/layers/{layer}/layer.tar"))).unwrap();
    assert!(kept == tar, "the driver did not get the tar as it was");
    let record = store.layers.get(&layer).unwrap().unwrap();
    let diff = record.diff.unwrap();
    assert_eq!(diff.uncompressed_digest, Digest::of_bytes(&tar));
    assert_eq!(diff.uncompressed_size, tar.len() as u64);
    assert_eq!(diff.compression, "gzip");
    // Core keeps no tar-split record of a stream the driver owns.
    let records: Vec<_> = fs::read_dir(graph.join("format-owner-layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(records.is_empty(), "{records:?}");

    // A layer's diff and its size are the driver's.
    let mut out = Vec::new();
    let source = store.layers.diff(&layer, &mut out).unwrap();
    assert_eq!(source, DiffSource::Driver);
    assert!(out == tar, "the diff is not the driver's stream");
    assert_eq!(store.layers.diff_size(&layer).unwrap(), tar.len() as u64);
    assert!(calls(&graph).contains(&format!("diff {layer}")));
    assert!(calls(&graph).contains(&format!("diff_size {layer}")));

    // Changes are read from the driver's stream: whiteouts are deletions,
    // the opaque marker makes its directory opaque.
    let changes = store.layers.changes(&layer).unwrap();
    let find = |path: &str| {
        changes
            .iter()
            .find(|c| c.path == Path::new(path))
            .unwrap_or_else(|| panic!("no change at {path}: {changes:?}"))
    };
    assert_eq!(find("etc/hostname").kind, ChangeKind::Add);
    assert_eq!(find("etc/passwd").kind, ChangeKind::Delete);
    assert!(find("usr").opaque);

    // Export: the driver's stream, recognised as the original.
    let out_layout = scratch.path().join("exported");
    let before = calls(&graph).len();
    let exported = store
        .export_image(
            &imported.image.id,
            &ImageLocation::parse(out_layout.to_str().unwrap()),
        )
        .unwrap();
    assert!(calls(&graph)[before..].contains(&format!("diff {layer}")));
    assert_eq!(exported.layers[0].diff_id, diff.uncompressed_digest);
    assert!(exported.layers[0].original);
    assert!(!exported.config_rewritten);

    // A diff against anything but the parent cannot be had from the driver:
    // refused, saying why.
    store
        .layers
        .create(
            &LayerId::new("other").unwrap(),
            None,
            &Default::default(),
            None,
        )
        .unwrap();
    let err = store
        .layers
        .diff_between(
            Some(&LayerId::new("other").unwrap()),
            &layer,
            &mut Vec::new(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");
    assert!(err.to_string().contains("owns its layer format"), "{err}");
}

#[test]
fn a_native_diff_in_a_whiteout_format_core_does_not_know_is_refused_at_open() {
    let scratch = tempfile::tempdir().unwrap();
    let graph = scratch.path().join("graph");
    let err = open_store(&graph, &[("declare", "native-diff:aufs2")])
        .err()
        .expect("the store opened on a driver whose native diffs it cannot read");
    assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("format-owner") && message.contains("'aufs2' whiteouts"),
        "{message}"
    );
    // One strata knows opens, and says which method it uses.
    let store = open_store(&graph, &[("declare", "native-diff:overlay")]).unwrap();
    assert_eq!(
        store.layers.diff_method(),
        DiffMethod::NativeDir(Some(strata_core::archive::WhiteoutFormat::Overlay))
    );
}
