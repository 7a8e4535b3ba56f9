//! The overlay driver, on a loop-mounted ext4:
//! - mounting against stack depth, the new mount API against mount(2) with
//!   short links (as deep as one page allows);
//! - changes and export of a layer of 10,000 files with 1% changed, read from
//!   its native diff against the naive walk of both trees;
//! - applying a Debian root filesystem tar into an overlay layer against into
//!   a vfs layer.
//!
//! Run: `cargo bench -p strata-benches --bench overlay` (root).

use std::fs;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use strata_benches::debian_rootfs_tar;
use strata_core::archive::{
    ApplyOptions, ApplyTarget, apply_layer, changes, export_changes, overlay_changes,
};
use strata_plugin_abi::{
    CreateOptions, GraphDriver, InitArgs, LoadedDriver, MountOptions, load_driver,
};
use strata_testkit::mounts::{LoopFilesystem, LoopFsKind};
use strata_testkit::plugins::build_plugin_release;

fn driver(package: &str, home: &Path, options: &[(&str, &str)]) -> LoadedDriver {
    load_driver(
        &build_plugin_release(package),
        &InitArgs {
            home: home.to_path_buf(),
            run_root: home.join("run"),
            options: options.iter().copied().collect(),
            ..Default::default()
        },
    )
    .unwrap()
}

fn rw() -> CreateOptions {
    CreateOptions {
        read_write: true,
        ..Default::default()
    }
}

fn mount_depth(c: &mut Criterion, fs: &LoopFilesystem) {
    let mut group = c.benchmark_group("overlay-mount-by-depth");
    group.sample_size(20);
    for (method, max) in [("new", 500usize), ("legacy", 40)] {
        let home = fs.path().join(format!("mount-{method}"));
        let d = driver("strata-driver-overlay", &home, &[("mount_method", method)]);
        let id = |i: usize| format!("m{i:04}");
        for i in 0..max {
            let parent = (i > 0).then(|| id(i - 1));
            d.create(&id(i), parent.as_deref(), &rw()).unwrap();
        }
        for depth in [1usize, 16, 40, 128, 500].into_iter().filter(|d| *d <= max) {
            group.bench_with_input(BenchmarkId::new(method, depth), &depth, |b, depth| {
                b.iter(|| {
                    d.get(&id(depth - 1), &MountOptions::default()).unwrap();
                    d.put(&id(depth - 1)).unwrap();
                })
            });
        }
        for i in (0..max).rev() {
            d.remove(&id(i)).unwrap();
        }
    }
    group.finish();
}

fn native_against_naive(c: &mut Criterion, fs: &LoopFilesystem) {
    let home = fs.path().join("diffs");
    let d = driver("strata-driver-overlay", &home, &[]);
    d.create("parent", None, &rw()).unwrap();
    let parent = d.get("parent", &MountOptions::default()).unwrap();
    for dir in 0..100 {
        fs::create_dir_all(parent.join(format!("d{dir:03}"))).unwrap();
        for f in 0..100 {
            fs::write(
                parent.join(format!("d{dir:03}/f{f:03}")),
                format!("{dir}/{f}").repeat(20),
            )
            .unwrap();
        }
    }
    d.put("parent").unwrap();
    d.create("child", Some("parent"), &rw()).unwrap();
    let child = d.get("child", &MountOptions::default()).unwrap();
    for i in 0..50 {
        fs::write(child.join(format!("d{:03}/f{:03}", i * 2, i)), b"modified").unwrap();
    }
    for i in 0..25 {
        fs::write(child.join(format!("d{:03}/new{i}", i * 4)), b"added").unwrap();
        fs::remove_file(child.join(format!("d{:03}/f{:03}", i * 4 + 1, 50 + i))).unwrap();
    }
    let parent = d.get("parent", &MountOptions::default()).unwrap();
    let native_dir = d.native_diff("child").unwrap().unwrap().path;

    let naive_list = changes(&child, Some(&parent)).unwrap();
    let native_list = overlay_changes(&native_dir, Some(&parent)).unwrap();
    let mut group = c.benchmark_group("overlay-changes-10k-files-1pct");
    group.sample_size(20);
    group.bench_function("changes: naive walk of both trees", |b| {
        b.iter(|| changes(&child, Some(&parent)).unwrap())
    });
    group.bench_function("changes: native diff", |b| {
        b.iter(|| overlay_changes(&native_dir, Some(&parent)).unwrap())
    });
    group.bench_function("changes+export: naive", |b| {
        b.iter(|| {
            let list = changes(&child, Some(&parent)).unwrap();
            export_changes(&child, &list, std::io::sink()).unwrap()
        })
    });
    group.bench_function("changes+export: native", |b| {
        b.iter(|| {
            let list = overlay_changes(&native_dir, Some(&parent)).unwrap();
            export_changes(&native_dir, &list, std::io::sink()).unwrap()
        })
    });
    group.finish();
    println!(
        "naive changes: {}, native changes: {}",
        naive_list.len(),
        native_list.len()
    );
    d.put("parent").unwrap();
    d.put("child").unwrap();
    d.remove("child").unwrap();
    d.remove("parent").unwrap();
}

fn apply_overlay_against_vfs(c: &mut Criterion, fs: &LoopFilesystem) {
    let tar = fs::read(debian_rootfs_tar()).unwrap();
    let overlay = driver(
        "strata-driver-overlay",
        &fs.path().join("apply-overlay"),
        &[],
    );
    let vfs = driver("strata-driver-vfs", &fs.path().join("apply-vfs"), &[]);
    let mut group = c.benchmark_group("apply-debian-rootfs");
    group.sample_size(10);
    let mut n = 0;
    group.bench_function("into an overlay layer (native diff dir)", |b| {
        b.iter(|| {
            n += 1;
            let id = format!("o{n}");
            overlay.create(&id, None, &rw()).unwrap();
            let dir = overlay.native_diff(&id).unwrap().unwrap().path;
            let options = ApplyOptions {
                target: ApplyTarget::OVERLAY_UPPER,
                ..Default::default()
            };
            apply_layer(&dir, &tar[..], &options, None).unwrap();
            overlay.remove(&id).unwrap();
        })
    });
    group.bench_function("into a vfs layer", |b| {
        b.iter(|| {
            n += 1;
            let id = format!("v{n}");
            vfs.create(&id, None, &rw()).unwrap();
            let dir = vfs.get(&id, &MountOptions::default()).unwrap();
            apply_layer(&dir, &tar[..], &ApplyOptions::default(), None).unwrap();
            vfs.put(&id).unwrap();
            vfs.remove(&id).unwrap();
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let fs = LoopFilesystem::new(LoopFsKind::Ext4, 4 << 30).expect("loop ext4 (needs root)");
    mount_depth(c, &fs);
    native_against_naive(c, &fs);
    apply_overlay_against_vfs(c, &fs);
}

criterion_group!(overlay, benches);
criterion_main!(overlay);
