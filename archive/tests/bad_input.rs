//! Junk and truncated streams in every compression: a clear error, never a panic.

use strata_testkit::fixtures;

use std::io::Write;

use fixtures::RawTar;
use strata_archive::{ApplyOptions, ArchiveError, apply_layer};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn apply(bytes: &[u8]) -> Result<(), ArchiveError> {
    let dir = tempfile::tempdir().unwrap();
    apply_layer(
        dir.path(),
        bytes,
        &ApplyOptions::default(),
        Some(&mut Vec::new()),
    )
    .map(|_| ())
}

fn sample() -> Vec<u8> {
    RawTar::new()
        .dir("d/")
        .file("d/big", &vec![7u8; 100_000])
        .file("d/small", b"small")
        .finish()
}

#[test]
fn junk_is_refused_in_every_compression() {
    let junk: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (what, bytes) in [
        ("plain junk", junk.clone()),
        ("gzip of junk", gzip(&junk)),
        ("zstd of junk", zstd(&junk)),
        ("gzip magic then junk", [&[0x1f, 0x8b][..], &junk].concat()),
        (
            "zstd magic then junk",
            [&[0x28, 0xb5, 0x2f, 0xfd][..], &junk].concat(),
        ),
        ("bzip2 magic", b"BZh91AY&SY".to_vec()),
    ] {
        let err = apply(&bytes).expect_err(what);
        assert!(matches!(err, ArchiveError::Input(_)), "{what}: {err}");
    }
}

#[test]
fn truncation_is_refused_in_every_compression() {
    let tar = sample();
    for cut in [100, 512, 700, 50_000, tar.len() - 1030] {
        let short = &tar[..cut];
        for (what, bytes) in [
            ("plain", short.to_vec()),
            ("gzip", gzip(short)),
            ("zstd", zstd(short)),
        ] {
            let err = apply(&bytes).expect_err(&format!("{what} cut at {cut}"));
            assert!(
                matches!(err, ArchiveError::Input(_)),
                "{what} cut at {cut}: {err}"
            );
        }
    }
    // A compressed stream cut short.
    for (what, whole) in [("gzip", gzip(&tar)), ("zstd", zstd(&tar))] {
        let err = apply(&whole[..whole.len() / 2]).expect_err(what);
        assert!(matches!(err, ArchiveError::Input(_)), "{what}: {err}");
    }
}

#[test]
fn malformed_headers_are_refused() {
    let mut tar = sample();
    tar[148] ^= 1; // checksum of the first header
    assert!(matches!(apply(&tar), Err(ArchiveError::Input(_))));

    // A size far beyond the data that follows.
    let tar = RawTar::new()
        .header(b"huge", fixtures::REGULAR, b"", 1 << 40, 0o644)
        .data(b"x")
        .finish();
    assert!(matches!(apply(&tar), Err(ArchiveError::Input(_))));

    // A PAX size record that disagrees with the data.
    let tar = RawTar::new()
        .pax(&[("size", b"99999999")])
        .file("f", b"abc")
        .finish();
    assert!(apply(&tar).is_err());

    // A sparse map that runs past the file's size.
    let tar = RawTar::new()
        .pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"s"),
            ("GNU.sparse.realsize", b"10"),
        ])
        .file("GNUSparseFile.0/s", b"1\n5\n100\n")
        .finish();
    let err = apply(&tar).unwrap_err();
    assert!(err.to_string().contains("sparse"), "{err}");
}
