//! The archive module against GNU tar: real tars in, real trees out.

use strata_testkit::fixtures;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

use strata_archive::{ApplyOptions, Compression, Sha256Digest, apply_layer, tarsplit};
use strata_testkit::gnu_tar;
use strata_testkit::tree::{build_every_kind, compare_trees};

#[test]
fn a_gnu_tar_of_every_file_kind_applies_to_an_identical_tree() {
    let scratch = tempfile::tempdir().unwrap();
    let original = scratch.path().join("original");
    fs::create_dir(&original).unwrap();
    build_every_kind(&original);
    // A tar cannot hold a socket (GNU tar skips it with a warning).
    fs::remove_file(original.join("dev/log")).unwrap();
    // Nor does applying keep trusted.* and security labels (see
    // hostile_content.rs): the tree that must come back whole has none.
    fixtures::remove_xattrs_layers_drop(&original);
    let tar = gnu_tar(&original, &["--sparse"]);

    for (compression, bytes) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        }),
        (Compression::Zstd, zstd::encode_all(&tar[..], 3).unwrap()),
    ] {
        let applied = scratch.path().join(format!("applied-{compression}"));
        fs::create_dir(&applied).unwrap();
        let mut record = Vec::new();
        let report = apply_layer(
            &applied,
            &bytes[..],
            &ApplyOptions::default(),
            Some(&mut record),
        )
        .unwrap();
        assert_eq!(report.compression, compression);
        assert_eq!(report.uncompressed_digest, Sha256Digest::of(&tar));
        assert_eq!(report.uncompressed_size, tar.len() as u64);
        assert_eq!(report.compressed_digest, Sha256Digest::of(&bytes));
        assert_eq!(report.compressed_size, bytes.len() as u64);
        let differences = compare_trees(&original, &applied);
        assert!(
            differences.is_empty(),
            "{compression}: {}",
            differences.join("\n")
        );

        // The record and the files give back the exact stream.
        let mut rebuilt = Vec::new();
        tarsplit::reassemble(&record[..], &applied, &mut rebuilt).unwrap();
        assert_eq!(rebuilt.len(), tar.len());
        assert!(rebuilt == tar, "{compression}: the rebuilt tar differs");
    }
}

#[test]
fn owners_are_shifted_through_id_maps_and_unmapped_ones_refused() {
    use strata_archive::IdMap;
    let mut tar = fixtures::RawTar::new();
    tar.header(b"owned", fixtures::REGULAR, b"", 2, 0o640)
        .data(b"hi");
    // Make the member owned by 1000:1000 (uid at 108, gid at 116, then re-sum).
    let mut bytes = tar.finish();
    bytes[108..116].copy_from_slice(b"0001750\0");
    bytes[116..124].copy_from_slice(b"0001750\0");
    bytes[148..156].copy_from_slice(b"        ");
    let sum: u32 = bytes[..512].iter().map(|b| *b as u32).sum();
    bytes[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());

    let maps = vec![IdMap {
        container_id: 0,
        host_id: 100_000,
        size: 65_536,
    }];
    let options = ApplyOptions {
        uid_maps: maps.clone(),
        gid_maps: maps,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    apply_layer(dir.path(), &bytes[..], &options, None).unwrap();
    let meta = fs::metadata(dir.path().join("owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (101_000, 101_000));

    let narrow = vec![IdMap {
        container_id: 0,
        host_id: 100_000,
        size: 1000,
    }];
    let options = ApplyOptions {
        uid_maps: narrow.clone(),
        gid_maps: narrow,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = apply_layer(dir.path(), &bytes[..], &options, None).unwrap_err();
    assert!(
        err.to_string().contains("owned") && err.to_string().contains("maps"),
        "{err}"
    );
}
