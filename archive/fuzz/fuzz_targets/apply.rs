//! Any byte stream given to apply: an error or a tree, never a panic, and
//! never anything outside the layer's root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_archive::{ApplyOptions, ApplyTarget, apply_layer};

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let target = if data.first().is_some_and(|b| b & 1 == 1) {
        ApplyTarget::OVERLAY_UPPER
    } else {
        ApplyTarget::Tree
    };
    // A lower tree for the overlay path (its directories' metadata is copied
    // up), and the lenient end-of-stream mode a digest-checked import uses.
    let lower = scratch.path().join("lower");
    std::fs::create_dir_all(lower.join("a/b")).expect("lower");
    std::fs::write(lower.join("a/b/file"), b"lower").expect("lower file");
    let flags = data.get(1).copied().unwrap_or(0);
    let options = ApplyOptions {
        target,
        lower: (flags & 1 == 1).then(|| lower.clone()),
        require_end_of_archive: flags & 2 == 0,
        ..Default::default()
    };
    let mut record = Vec::new();
    let _ = apply_layer(&root, data, &options, Some(&mut record));
    // Nothing but the root changed in the scratch directory, whatever happened.
    let mut outside: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("read scratch")
        .map(|e| e.expect("entry").file_name())
        .collect();
    outside.sort();
    assert_eq!(outside, vec![std::ffi::OsString::from("lower"), std::ffi::OsString::from("root")], "something was written outside the root");
    let lower_entries: Vec<_> = walk(&lower);
    assert_eq!(lower_entries, vec!["a".to_string(), "a/b".to_string(), "a/b/file".to_string()], "the lower tree changed");
    assert_eq!(std::fs::read(lower.join("a/b/file")).expect("lower file"), b"lower", "the lower tree changed");
});

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel)).expect("read lower") {
            let entry = entry.expect("entry");
            let path = rel.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                stack.push(path.clone());
            }
            found.push(path.to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
}
