//! Computing changes over a 10,000-file tree with 1% changed, and exporting
//! them, against GNU tar creating a tar of the same changed files (the
//! reference a diff export is compared with in the same run).
//!
//! Run: `cargo bench -p strata-benches --bench archive_changes`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use strata_core::archive::{changes, export_changes};
use strata_testkit::mounts::{LoopFilesystem, LoopFsKind};

/// A parent of 10,000 files in 100 directories, and a child (a copy) where
/// 1% of the files changed: 50 modified, 25 added, 25 deleted.
fn trees(base: &Path) -> (PathBuf, PathBuf, Vec<PathBuf>) {
    let parent = base.join("parent");
    for d in 0..100 {
        let dir = parent.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}").repeat(20)).unwrap();
        }
    }
    let child = base.join("child");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&parent)
        .arg(&child)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut touched = Vec::new();
    for i in 0..50 {
        let rel = PathBuf::from(format!("d{:03}/f{:03}", i * 2, i));
        fs::write(child.join(&rel), b"modified").unwrap();
        touched.push(rel);
    }
    for i in 0..25 {
        let rel = PathBuf::from(format!("d{:03}/new{i}", i * 4));
        fs::write(child.join(&rel), b"added").unwrap();
        touched.push(rel);
    }
    for i in 0..25 {
        fs::remove_file(child.join(format!("d{:03}/f{:03}", i * 4 + 1, 50 + i))).unwrap();
    }
    (parent, child, touched)
}

fn bench(c: &mut Criterion) {
    let fs_ = LoopFilesystem::new(LoopFsKind::Ext4, 1 << 30).expect("loop ext4 (needs root)");
    let (parent, child, touched) = trees(fs_.path());
    let list = changes(&child, Some(&parent)).unwrap();
    // 100 file changes plus the directories holding them and the root.
    assert!(list.len() >= 100, "{} changes", list.len());

    let mut group = c.benchmark_group("changes-10k-files-1pct");
    group.sample_size(20);
    group.bench_function("changes (naive walk of both trees)", |b| {
        b.iter(|| changes(&child, Some(&parent)).unwrap())
    });
    group.bench_function("export the changes", |b| {
        b.iter(|| export_changes(&child, &list, std::io::sink()).unwrap())
    });
    // The reference: GNU tar writing the same changed files (it does no
    // comparing at all, so this bounds what export alone can cost).
    let names: Vec<String> = touched.iter().map(|p| p.display().to_string()).collect();
    group.bench_function("GNU tar -c of the changed files", |b| {
        b.iter(|| {
            let out = Command::new("tar")
                .arg("-C")
                .arg(&child)
                .args(["-cf", "/dev/null"])
                .args(&names)
                .output()
                .unwrap();
            assert!(out.status.success());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
