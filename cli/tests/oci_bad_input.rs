//! OCI imports of bad layouts: each is refused with an error naming the blob,
//! manifest, tag or image at fault, and leaves no image or layer behind; the
//! store opens again afterwards.

use strata_testkit::fixtures;

use std::fs;
use std::path::Path;

use fixtures::RawTar;
use fixtures::layout::{Layer, blob_path, digest, gzip, write_image};
use strata_conformance::harness::start_driver;
use strata_core::oci::LocationKind;
use strata_core::oci::{ImageLocation, NoProgress, import_image};
use strata_core::store::Store;

fn open_store(scratch: &Path) -> Store {
    let graph = scratch.join("graph");
    let driver = start_driver("strata-driver-vfs", &graph.join("vfs"), &[]).unwrap();
    Store::with_driver(&graph, &scratch.join("run"), Box::new(driver)).unwrap()
}

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = RawTar::new();
    for (name, data) in files {
        tar.file(name, data.as_bytes());
    }
    tar.finish()
}

fn base_tar() -> Vec<u8> {
    tar_of(&[("etc/os-release", "ID=strata\n"), ("bin/sh", "#!")])
}

fn import(store: &Store, dir: &Path, tag: &str) -> strata_core::Result<String> {
    let location = ImageLocation {
        dir: dir.to_path_buf(),
        tag: Some(tag.to_string()),
        kind: LocationKind::Layout,
    };
    import_image(store, &location, &[], &NoProgress).map(|r| r.image.id.into_string())
}

/// What a failed import may leave: nothing but what `kept_layers` says.
fn assert_nothing_left(scratch: &Path, store: &Store, kept_images: usize, kept_layers: usize) {
    assert_eq!(store.images.list().unwrap().len(), kept_images, "images");
    assert_eq!(
        store.layers.list().unwrap().len(),
        kept_layers,
        "layer records"
    );
    assert_eq!(
        store.driver().list().unwrap().len(),
        kept_layers,
        "driver layers"
    );
    // The records load again in a fresh store.
    let again = open_store(scratch);
    assert_eq!(again.images.list().unwrap().len(), kept_images);
    assert_eq!(again.layers.list().unwrap().len(), kept_layers);
}

/// Writes a two-layer image, lets `spoil` damage the layout, imports it and
/// returns the error text.
fn refused(spoil: impl FnOnce(&Path, &fixtures::layout::Written)) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    let written = write_image(
        &layout,
        "app",
        &[
            Layer::gzip(&base_tar()),
            Layer::gzip(&tar_of(&[("app/run", "run")])),
        ],
        "one",
    );
    spoil(&layout, &written);
    let store = open_store(scratch.path());
    let err = import(&store, &layout, "app").expect_err("the import must fail");
    assert_nothing_left(scratch.path(), &store, 0, 0);
    err.to_string()
}

#[test]
fn a_missing_layer_blob_is_named() {
    let mut second = String::new();
    let err = refused(|dir, w| {
        second = w.layers[1].clone();
        fs::remove_file(blob_path(dir, &w.layers[1])).unwrap();
    });
    assert!(
        err.contains(&second) && err.contains("layer 2 of 2"),
        "{err}"
    );
}

#[test]
fn a_blob_whose_content_does_not_match_its_digest_is_named() {
    let mut second = String::new();
    let err = refused(|dir, w| {
        second = w.layers[1].clone();
        // Same size, different bytes: a gzip'd tar with other content.
        let path = blob_path(dir, &w.layers[1]);
        let original = fs::read(&path).unwrap();
        let mut other = gzip(&tar_of(&[("app/run", "RUN")]));
        other.resize(original.len(), 0);
        fs::write(&path, other).unwrap();
    });
    assert!(err.contains(&second), "{err}");
    assert!(
        err.contains("digest") || err.contains("bad layer stream"),
        "{err}"
    );
}

#[test]
fn a_blob_of_the_wrong_size_is_named() {
    let mut second = String::new();
    let err = refused(|dir, w| {
        second = w.layers[1].clone();
        let path = blob_path(dir, &w.layers[1]);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(b"extra");
        fs::write(&path, bytes).unwrap();
    });
    assert!(err.contains(&second) && err.contains("bytes"), "{err}");
}

/// Replaces layer 2 with `blob` under a matching digest and size (so only
/// its content is wrong) and returns the import error.
fn refused_layer(blob: Vec<u8>, diff_id: Option<String>) -> (String, String) {
    let media_type = if blob.starts_with(&[0x1f, 0x8b]) {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    };
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    let full = tar_of(&[("app/run", &"x".repeat(100_000))]);
    let layer = Layer {
        blob,
        diff_id: diff_id.unwrap_or_else(|| digest(&full)),
        media_type,
    };
    let written = write_image(&layout, "app", &[Layer::gzip(&base_tar()), layer], "two");
    let store = open_store(scratch.path());
    let err = import(&store, &layout, "app").expect_err("the import must fail");
    assert_nothing_left(scratch.path(), &store, 0, 0);
    (err.to_string(), written.layers[1].clone())
}

#[test]
fn a_truncated_layer_is_named() {
    let full = tar_of(&[("app/run", &"x".repeat(100_000))]);
    let gz = gzip(&full);
    let (err, blob) = refused_layer(gz[..gz.len() / 2].to_vec(), None);
    assert!(err.contains(&blob), "{err}");
    assert!(err.contains("bad layer stream"), "{err}");
    // A tar cut at a member boundary, not compressed, declared with the
    // digest of what is left: its diff id gives the cut away.
    let mut tar = RawTar::new();
    tar.file("app/run", b"run").file("app/more", b"more");
    let full = tar.finish();
    let cut = full[..1024].to_vec();
    let (err, blob) = refused_layer(cut, Some(digest(&full)));
    assert!(err.contains(&blob) && err.contains("diff id"), "{err}");
}

/// umoci's `insert` writes layers without the end-of-archive blocks; with
/// the diff id to vouch for the stream, they are accepted.
#[test]
fn a_layer_without_end_of_archive_blocks_is_accepted_when_its_digest_matches() {
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    let mut tar = RawTar::new();
    tar.file("app/run", b"run");
    let mut no_end = tar.finish();
    no_end.truncate(no_end.len() - 1024);
    // As umoci 0.4.7's insert writes them: the last file's padding missing too.
    let mut tar = RawTar::new();
    tar.file("app/other", b"other");
    let mut no_padding = tar.finish();
    no_padding.truncate(512 + 5);
    write_image(
        &layout,
        "app",
        &[Layer::gzip(&no_end), Layer::gzip(&no_padding)],
        "no-end",
    );
    let store = open_store(scratch.path());
    let id = import(&store, &layout, "app").unwrap();
    let image = store.image(&id).unwrap();
    let layers = store.image_layers(&image).unwrap();
    for (layer, bytes) in layers.iter().zip([&no_end, &no_padding]) {
        let mut diff = Vec::new();
        store.layers.diff(&layer.id, &mut diff).unwrap();
        assert_eq!(&diff, bytes, "the diff is the stream as it came");
    }
    let container = store
        .create_container(&id, &[], &Default::default())
        .unwrap();
    let root = store
        .mount_container(&container.id, &Default::default())
        .unwrap();
    assert_eq!(fs::read(root.join("app/run")).unwrap(), b"run");
    assert_eq!(fs::read(root.join("app/other")).unwrap(), b"other");
    store.delete_container(&container.id).unwrap();
}

/// Even with its digest matching, a stream that stops inside a file's data
/// is refused: only padding and end blocks may be missing.
#[test]
fn a_layer_cut_inside_a_file_is_refused_even_when_its_digest_matches() {
    let mut tar = RawTar::new();
    tar.file("app/run", &[7u8; 2000]);
    let mut cut = tar.finish();
    cut.truncate(512 + 1000);
    let (err, blob) = refused_layer(gzip(&cut), Some(digest(&cut)));
    assert!(
        err.contains(&blob) && err.contains("inside the data of \"app/run\""),
        "{err}"
    );
}

#[test]
fn a_junk_layer_is_named() {
    let junk: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let (err, blob) = refused_layer(junk, None);
    assert!(
        err.contains(&blob) && err.contains("bad layer stream"),
        "{err}"
    );
}

#[test]
fn a_layer_whose_diff_id_is_wrong_is_named() {
    let full = tar_of(&[("app/run", &"x".repeat(100_000))]);
    let wrong = digest(b"another tar");
    let (err, blob) = refused_layer(gzip(&full), Some(wrong.clone()));
    assert!(
        err.contains(&blob) && err.contains("diff id") && err.contains(&wrong),
        "{err}"
    );
}

#[test]
fn a_layer_reaching_outside_its_root_is_refused() {
    let mut tar = RawTar::new();
    tar.file("../../escaped", b"out");
    let bytes = tar.finish();
    let (err, blob) = refused_layer(gzip(&bytes), Some(digest(&bytes)));
    assert!(err.contains(&blob) && err.contains("escaped"), "{err}");
}

#[test]
fn an_index_naming_a_missing_manifest_is_named() {
    let mut manifest = String::new();
    let err = refused(|dir, w| {
        manifest = w.manifest.clone();
        fs::remove_file(blob_path(dir, &w.manifest)).unwrap();
    });
    assert!(err.contains(&manifest) && err.contains("manifest"), "{err}");
}

#[test]
fn a_missing_config_and_a_bad_digest_are_named() {
    let mut config = String::new();
    let err = refused(|dir, w| {
        config = w.config.clone();
        fs::remove_file(blob_path(dir, &w.config)).unwrap();
    });
    assert!(err.contains(&config) && err.contains("config"), "{err}");
    let err = refused(|dir, _| {
        let index = fs::read_to_string(dir.join("index.json")).unwrap();
        let bad = index.replace("sha256:", "md5:");
        fs::write(dir.join("index.json"), bad).unwrap();
    });
    assert!(err.contains("md5:"), "{err}");
}

#[test]
fn unknown_tags_images_and_non_layouts_are_named() {
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    write_image(&layout, "app", &[Layer::gzip(&base_tar())], "x");
    let store = open_store(scratch.path());
    let err = import(&store, &layout, "nope").unwrap_err().to_string();
    assert!(err.contains("'nope'") && err.contains("app"), "{err}");
    let err = import(&store, scratch.path(), "app")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an OCI image layout"), "{err}");
    let err = store.image("no-such-image").unwrap_err().to_string();
    assert!(err.contains("'no-such-image'"), "{err}");
    let err = store.delete_image("no-such-image").unwrap_err().to_string();
    assert!(err.contains("'no-such-image'"), "{err}");
    let err = store
        .create_container("no-such-image", &[], &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("'no-such-image'"), "{err}");
    assert_nothing_left(scratch.path(), &store, 0, 0);
}

#[test]
fn a_failed_import_keeps_the_layers_other_images_use() {
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    write_image(&layout, "base", &[Layer::gzip(&base_tar())], "base");
    let bad = write_image(
        &layout,
        "broken",
        &[
            Layer::gzip(&base_tar()),
            Layer::gzip(&tar_of(&[("app/run", "run")])),
        ],
        "broken",
    );
    fs::remove_file(blob_path(&layout, &bad.layers[1])).unwrap();
    let store = open_store(scratch.path());
    let base = import(&store, &layout, "base").unwrap();
    import(&store, &layout, "broken").unwrap_err();
    assert_nothing_left(scratch.path(), &store, 1, 1);
    // The shared layer is intact: a container on the base image reads it.
    let container = store
        .create_container(&base, &[], &Default::default())
        .unwrap();
    let root = store
        .mount_container(&container.id, &Default::default())
        .unwrap();
    assert_eq!(
        fs::read_to_string(root.join("etc/os-release")).unwrap(),
        "ID=strata\n"
    );
    store.unmount_container(&container.id).unwrap();
    store.delete_container(&container.id).unwrap();
    let (_, deleted) = store.delete_image("base").unwrap();
    assert_eq!(deleted.len(), 1);
    assert_nothing_left(scratch.path(), &store, 0, 0);
}

#[test]
fn compressions_layers_reuse_and_image_delete() {
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    let base = base_tar();
    let app = tar_of(&[("app/run", "run")]);
    let extra = tar_of(&[("app/extra", "extra")]);
    write_image(&layout, "plain", &[Layer::plain(&base)], "p");
    write_image(
        &layout,
        "zstd",
        &[Layer::plain(&base), Layer::zstd(&app)],
        "z",
    );
    write_image(
        &layout,
        "gzip",
        &[Layer::plain(&base), Layer::zstd(&app), Layer::gzip(&extra)],
        "g",
    );
    let store = open_store(scratch.path());
    let location = |tag: &str| ImageLocation {
        dir: layout.clone(),
        tag: Some(tag.to_string()),
        kind: LocationKind::Layout,
    };
    let plain = import_image(&store, &location("plain"), &[], &NoProgress).unwrap();
    assert_eq!(plain.created_layers.len(), 1);
    let zstd = import_image(&store, &location("zstd"), &[], &NoProgress).unwrap();
    assert_eq!(
        (zstd.reused_layers.len(), zstd.created_layers.len()),
        (1, 1)
    );
    let gzip = import_image(&store, &location("gzip"), &[], &NoProgress).unwrap();
    assert_eq!(
        (gzip.reused_layers.len(), gzip.created_layers.len()),
        (2, 1)
    );
    let again = import_image(&store, &location("gzip"), &["other".into()], &NoProgress).unwrap();
    assert!(again.already_present);
    assert_eq!(store.images.resolve("other").unwrap(), gzip.image.id);
    let layers = store.image_layers(&gzip.image).unwrap();
    let compressions: Vec<&str> = layers
        .iter()
        .map(|l| l.diff.as_ref().unwrap().compression.as_str())
        .collect();
    assert_eq!(compressions, ["none", "zstd", "gzip"]);
    // Parents and heads follow the layers.
    let (images, family) = store.image_family().unwrap();
    assert_eq!(family.parent(&zstd.image.id), Some(plain.image.id.as_str()));
    assert_eq!(family.parent(&gzip.image.id), Some(zstd.image.id.as_str()));
    let heads: Vec<&str> = family.heads(&images).collect();
    assert_eq!(heads, [gzip.image.id.as_str()]);
    // One image's relations, read alone, are the family's.
    for image in &images {
        let (parent, children) = store.image_relations(&image.id).unwrap();
        assert_eq!(parent.as_deref(), family.parent(&image.id), "{}", image.id);
        let mut expected: Vec<&str> = family.children(&image.id).collect();
        expected.sort();
        assert_eq!(children, expected, "{}", image.id);
    }
    // A layer an image stands on is not deleted by itself.
    let err = store.delete_layer(&layers[0].id).unwrap_err().to_string();
    assert!(
        err.contains("used by image") && err.contains("plain"),
        "{err}"
    );
    // Deleting the middle image frees nothing the others use.
    let (_, deleted) = store.delete_image("zstd").unwrap();
    assert!(deleted.is_empty(), "{deleted:?}");
    let (_, deleted) = store.delete_image("gzip").unwrap();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    // A container holds its image.
    let container = store
        .create_container("plain", &["web".into()], &Default::default())
        .unwrap();
    let err = store.delete_image("plain").unwrap_err().to_string();
    assert!(err.contains("web"), "{err}");
    store.delete_container("web").unwrap();
    assert!(store.container(&container.id).is_err());
    store.delete_image("plain").unwrap();
    assert_nothing_left(scratch.path(), &store, 0, 0);
}

/// Through the command: a broken layout exits 1 with the blob named on
/// standard error, and the store is left empty and usable.
#[test]
fn the_command_reports_a_broken_import_and_leaves_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    let written = write_image(
        &layout,
        "app",
        &[
            Layer::gzip(&base_tar()),
            Layer::gzip(&tar_of(&[("app/run", "run")])),
        ],
        "cli",
    );
    fs::remove_file(blob_path(&layout, &written.layers[1])).unwrap();
    let drivers = strata_testkit::plugins::build_plugin("strata-driver-vfs");
    let strata = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .env("STRATA_DRIVER_PATH", drivers.parent().unwrap())
            .env_remove("STRATA_CONFIG")
            .args(["--root", scratch.path().join("graph").to_str().unwrap()])
            .args(["--run-root", scratch.path().join("run").to_str().unwrap()])
            .args(["--driver", "vfs"])
            .args(args)
            .output()
            .unwrap()
    };
    let location = format!("{}:app", layout.display());
    let out = strata(&["image", "import", &location]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&written.layers[1]) && stderr.contains("layer 2 of 2"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing printed as if it worked");
    let out = strata(&["image", "inspect", "app"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'app'"));
    let out = strata(&["--json", "layer", "list"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}
