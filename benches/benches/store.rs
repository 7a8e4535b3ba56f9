//! The store as a runtime uses it, on a loop-mounted ext4: mounting and
//! unmounting a container on a 50-layer image (each layer made from a small
//! tar through the layer store), in process, overlay and vfs. The target is
//! under 10 ms each.
//!
//! Run: `cargo bench -p strata-benches --bench store` (root).

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use strata_core::images::NewImage;
use strata_core::layers::NewLayer;
use strata_core::store::Store;
use strata_plugin_abi::{CreateOptions, InitArgs, load_driver};
use strata_testkit::mounts::{LoopFilesystem, LoopFsKind};
use strata_testkit::plugins::build_plugin_release;

fn layer_tar(i: usize) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let data = format!("layer {i}\n");
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_uid(0);
    header.set_gid(0);
    builder
        .append_data(&mut header, format!("layers/file-{i:02}"), data.as_bytes())
        .unwrap();
    builder.finish().unwrap();
    builder.into_inner().unwrap()
}

fn store_with_deep_image(driver: &str, home: &Path) -> Store {
    let graph = home.join("graph");
    let loaded = load_driver(
        &build_plugin_release(&format!("strata-driver-{driver}")),
        &InitArgs {
            home: graph.join(driver),
            run_root: home.join("run").join(driver),
            ..Default::default()
        },
    )
    .unwrap();
    let store = Store::with_driver(&graph, &home.join("run"), Box::new(loaded)).unwrap();
    let mut parent = None;
    for i in 0..50 {
        let id = strata_core::LayerId::new(format!("{i:064x}")).unwrap();
        let tar = layer_tar(i);
        store
            .layers
            .create_layer(
                &NewLayer {
                    parent: parent.clone(),
                    options: CreateOptions::default(),
                    ..NewLayer::new(id.clone())
                },
                Some(&mut tar.as_slice()),
            )
            .unwrap();
        parent = Some(id);
    }
    store
        .images
        .create(&NewImage {
            names: vec!["deep".into()],
            top_layer: parent,
            ..NewImage::new(strata_core::ImageId::new("ab".repeat(32)).unwrap())
        })
        .unwrap();
    store
        .create_container("deep", &["bench".into()], &CreateOptions::default())
        .unwrap();
    store
}

fn container_mount(c: &mut Criterion) {
    let fs = LoopFilesystem::new(LoopFsKind::Ext4, 2 << 30).expect("a loop ext4 (run as root)");
    let mut group = c.benchmark_group("container-on-50-layers");
    group.sample_size(30);
    for driver in ["overlay", "vfs"] {
        let store = store_with_deep_image(driver, &fs.path().join(driver));
        // Each iteration mounts and unmounts once; the two are timed apart.
        let timed = |iters: u64, mount_side: bool| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                store.mount_container("bench", &Default::default()).unwrap();
                let mounted = t.elapsed();
                let t = Instant::now();
                store.unmount_container("bench").unwrap();
                total += if mount_side { mounted } else { t.elapsed() };
            }
            total
        };
        group.bench_function(format!("{driver}/mount"), |b| {
            b.iter_custom(|iters| timed(iters, true))
        });
        group.bench_function(format!("{driver}/unmount"), |b| {
            b.iter_custom(|iters| timed(iters, false))
        });
        store.delete_container("bench").unwrap();
        store.delete_image("deep").unwrap();
    }
    group.finish();
}

criterion_group!(benches, container_mount);
criterion_main!(benches);
