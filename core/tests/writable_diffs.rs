//! A writable layer made from a diff gives that diff's exact bytes, streamed,
//! until something in it changes; then its diff is generated from its tree,
//! and shows the change (a file rewritten in place at the same size, a file
//! added where nothing else changed). On vfs and on overlay.

use std::fs;
use std::path::Path;

use strata_core::layers::DiffSource;
use strata_core::{LayerId, Store};
use strata_plugin_abi::{CreateOptions, InitArgs, MountOptions, load_driver};
use strata_testkit::fixtures::RawTar;
use strata_testkit::plugins::build_plugin;

fn open_store(scratch: &Path, driver: &str) -> Store {
    let graph = scratch.join("graph");
    let args = InitArgs {
        home: graph.join(driver),
        run_root: scratch.join("run").join(driver),
        ..Default::default()
    };
    let loaded = load_driver(&build_plugin(&format!("strata-driver-{driver}")), &args).unwrap();
    Store::with_driver(&graph, &scratch.join("run"), Box::new(loaded)).unwrap()
}

/// A layer id the test chose.
fn layer(id: &str) -> LayerId {
    LayerId::new(id).unwrap()
}

fn diff_of(store: &Store, id: &str) -> (DiffSource, Vec<u8>) {
    let mut out = Vec::new();
    let source = store.layers.diff(&layer(id), &mut out).unwrap();
    (source, out)
}

/// The regular files a tar holds, by name, with their contents.
fn files_in(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar);
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let name = entry.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            files.push((name, data));
        }
    }
    files
}

fn writable_layer_diffs(driver: &str) {
    // /var/tmp: overlay cannot put upper directories on an overlay /tmp.
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = open_store(scratch.path(), driver);
    let mut tar = RawTar::new();
    tar.dir("etc/")
        .file("etc/motd", b"hello from the layer\n")
        .dir("srv/")
        .file("srv/data", &[1u8; 4096]);
    let tar = tar.finish();
    let writable = CreateOptions {
        read_write: true,
        ..Default::default()
    };
    for id in ["rewritten", "added"] {
        store
            .layers
            .create(&layer(id), None, &writable, Some(&mut &tar[..]))
            .unwrap();
        let (source, bytes) = diff_of(&store, id);
        assert_eq!(source, DiffSource::Original, "{driver}: {id}");
        assert!(bytes == tar, "{driver}: {id}: not the original bytes");
    }

    // Rewritten in place, same size: the original would be wrong now.
    let root = store
        .layers
        .mount(&layer("rewritten"), &MountOptions::default())
        .unwrap();
    fs::write(root.join("etc/motd"), b"HELLO FROM THE LAYER\n").unwrap();
    store.layers.unmount("rewritten").unwrap();
    let (source, bytes) = diff_of(&store, "rewritten");
    assert_eq!(source, DiffSource::Generated, "{driver}");
    let files = files_in(&bytes);
    assert!(
        files
            .iter()
            .any(|(name, data)| name.ends_with("etc/motd") && data == b"HELLO FROM THE LAYER\n"),
        "{driver}: {files:?}"
    );

    // A file added in a directory the diff had: the original would miss it.
    let root = store
        .layers
        .mount(&layer("added"), &MountOptions::default())
        .unwrap();
    fs::write(root.join("srv/new"), b"new").unwrap();
    store.layers.unmount("added").unwrap();
    let (source, bytes) = diff_of(&store, "added");
    assert_eq!(source, DiffSource::Generated, "{driver}");
    let files = files_in(&bytes);
    assert!(
        files.iter().any(|(name, _)| name.ends_with("srv/new")),
        "{driver}: {files:?}"
    );
    for id in ["rewritten", "added"] {
        store.layers.delete(&layer(id)).unwrap();
    }
}

#[test]
fn a_writable_layer_gives_its_original_diff_until_it_changes_on_vfs() {
    writable_layer_diffs("vfs");
}

#[test]
fn a_writable_layer_gives_its_original_diff_until_it_changes_on_overlay() {
    writable_layer_diffs("overlay");
}

/// A record written by strata before 0.2 (gzip'd, `<id>.tar-split.gz`) still
/// gives the layer's original bytes.
#[test]
fn a_gzip_tar_split_record_of_an_older_strata_is_still_read() {
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = open_store(scratch.path(), "vfs");
    let mut tar = RawTar::new();
    tar.dir("etc/").file("etc/motd", b"from an older strata\n");
    let tar = tar.finish();
    store
        .layers
        .create(
            &layer("old"),
            None,
            &CreateOptions::default(),
            Some(&mut &tar[..]),
        )
        .unwrap();
    let records = scratch.path().join("graph/vfs-layers");
    let current = records.join("old.tar-split.zst");
    let record = zstd::decode_all(&fs::read(&current).unwrap()[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &record).unwrap();
    fs::write(records.join("old.tar-split.gz"), gz.finish().unwrap()).unwrap();
    fs::remove_file(&current).unwrap();
    let (source, bytes) = diff_of(&store, "old");
    assert_eq!(source, DiffSource::Original);
    assert!(bytes == tar, "not the original bytes");
    store.layers.delete(&layer("old")).unwrap();
    assert!(!records.join("old.tar-split.gz").exists());
}

/// A diff applied to a layer that already had changes of its own is not the
/// layer's whole diff: its diff is generated, and holds both.
#[test]
fn a_second_diff_applied_to_a_layer_does_not_hide_the_first() {
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = open_store(scratch.path(), "vfs");
    let mut first = RawTar::new();
    first.file("first", b"made with the layer");
    let mut second = RawTar::new();
    second.file("second", b"applied later");
    let writable = CreateOptions {
        read_write: true,
        ..Default::default()
    };
    store
        .layers
        .create(
            &layer("twice"),
            None,
            &writable,
            Some(&mut &first.finish()[..]),
        )
        .unwrap();
    store
        .layers
        .apply(&layer("twice"), &mut &second.finish()[..])
        .unwrap();
    let (source, bytes) = diff_of(&store, "twice");
    assert_eq!(source, DiffSource::Generated);
    let names: Vec<String> = files_in(&bytes).into_iter().map(|(n, _)| n).collect();
    assert!(
        names.iter().any(|n| n.ends_with("first")) && names.iter().any(|n| n.ends_with("second")),
        "{names:?}"
    );
    store.layers.delete(&layer("twice")).unwrap();
}
