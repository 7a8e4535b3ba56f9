//! Any byte stream given to apply: an error or a tree, never a panic, and
//! never anything outside the layer's root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::archive::{ApplyOptions, ApplyTarget, apply_layer};

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let target = if data.first().is_some_and(|b| b & 1 == 1) {
        ApplyTarget::OverlayUpper
    } else {
        ApplyTarget::Tree
    };
    let options = ApplyOptions {
        target,
        ..Default::default()
    };
    let mut record = Vec::new();
    let _ = apply_layer(&root, data, &options, Some(&mut record));
    // The root is the only thing in the scratch directory, whatever happened.
    let outside: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("read scratch")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("root")], "something was written outside the root");
});
