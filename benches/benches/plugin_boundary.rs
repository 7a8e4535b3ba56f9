//! The cost of a call through the plugin boundary against the same call made
//! directly on the same driver linked in-process (both through
//! `&dyn GraphDriver`, as core calls drivers). Target: under 50 ns extra.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use strata_driver_vfs::VfsDriver;
use strata_plugin_abi::{DriverPlugin, GraphDriver, InitArgs, load_driver};
use strata_testkit::plugins::build_plugin_release;

fn boundary(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let args = |name: &str| InitArgs {
        home: dir.path().join(name),
        run_root: dir.path().join("run"),
        ..Default::default()
    };
    let direct: Box<dyn GraphDriver> = Box::new(VfsDriver::init(&args("direct")).unwrap());
    let plugin: Box<dyn GraphDriver> =
        Box::new(load_driver(&build_plugin_release("strata-driver-vfs"), &args("plugin")).unwrap());
    direct.create("present", None, &Default::default()).unwrap();
    plugin.create("present", None, &Default::default()).unwrap();

    let mut group = c.benchmark_group("boundary");
    for (how, driver) in [("direct", &direct), ("plugin", &plugin)] {
        // No system call: the boundary's cost alone.
        group.bench_function(format!("capabilities/{how}"), |b| {
            b.iter(|| black_box(driver.capabilities()))
        });
        // A string argument and a Result back, answered without a system call
        // (an id that cannot exist), so the boundary is not lost in stat noise.
        group.bench_function(format!("exists-invalid-id/{how}"), |b| {
            b.iter(|| black_box(driver.exists(black_box("not/an/id")).unwrap()))
        });
        // A real call: a stat of the layer directory. Its own noise (hundreds of
        // ns) is larger than the boundary; shown for scale.
        group.bench_function(format!("exists/{how}"), |b| {
            b.iter(|| black_box(driver.exists(black_box("present")).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, boundary);
criterion_main!(benches);
