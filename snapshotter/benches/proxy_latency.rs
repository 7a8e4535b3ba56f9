//! Prepare + Commit + Remove of a snapshot through the proxy (a
//! strata-snapshotter process, over its Unix socket, as containerd calls
//! it) against the same three calls in-process on `Snapshots` (no gRPC, no
//! socket): the ratio is what the proxy costs. Overlay, on a loop ext4.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;

use common::Served;
use common::client::Snap;
use criterion::{Criterion, criterion_group, criterion_main};
use strata_snapshotter::Snapshots;
use strata_snapshotter::record::SnapshotKind;

fn proxy_latency(c: &mut Criterion) {
    if let Some(why) = common::cannot_run_here() {
        eprintln!("proxy_latency cannot run here: {why}");
        return;
    }
    let served = Served::start_built("overlay", true);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut snap = runtime.block_on(async { Snap(served.client().await) });
    runtime.block_on(async {
        snap.prepare("base-active", "").await.unwrap();
        snap.commit("base", "base-active").await.unwrap();
    });
    let in_process = Snapshots::new(served.open_store());
    let mut group = c.benchmark_group("prepare+commit+remove");
    group.sample_size(40);
    let mut n = 0u64;
    group.bench_function("through the proxy (gRPC, Unix socket)", |b| {
        b.iter(|| {
            n += 1;
            runtime.block_on(async {
                let (key, name) = (format!("p-{n}"), format!("p-{n}-done"));
                snap.prepare(&key, "base").await.unwrap();
                snap.commit(&name, &key).await.unwrap();
                snap.remove(&name).await.unwrap();
            })
        })
    });
    group.bench_function("in-process (Snapshots)", |b| {
        b.iter(|| {
            n += 1;
            let (key, name) = (format!("i-{n}"), format!("i-{n}-done"));
            in_process
                .create(SnapshotKind::Active, &key, "base", BTreeMap::new())
                .unwrap();
            in_process.commit(&name, &key, BTreeMap::new()).unwrap();
            in_process.remove(&name).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, proxy_latency);
criterion_main!(benches);
