//! Fills a store with N images of 10 empty layers each (so 10 x N layers),
//! through the library, for the scale comparison
//! (`benches/scripts/scale-vs-containers-storage.sh`). Layer ids are
//! `%056x%08x` of (image, layer), image ids `ff%054x%08x` of (image, 0),
//! names `example.com/imgN:latest`: the same as the script gives the peer.
//!
//!   populate GRAPHROOT RUNROOT DRIVER_LIBRARY_DIR DRIVER N

use std::path::PathBuf;

use strata_core::images::NewImage;
use strata_core::layers::NewLayer;
use strata_core::store::Store;
use strata_plugin_abi::{CreateOptions, InitArgs, load_driver};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, graph, run, libs, driver, count] = args.as_slice() else {
        eprintln!("usage: populate GRAPHROOT RUNROOT DRIVER_LIBRARY_DIR DRIVER N");
        std::process::exit(2);
    };
    let graph = PathBuf::from(graph);
    let run = PathBuf::from(run);
    let count: u64 = count.parse().expect("N is a number");
    let library = PathBuf::from(libs).join(format!("libstrata_driver_{driver}.so"));
    let loaded = load_driver(
        &library,
        &InitArgs {
            home: graph.join(driver),
            run_root: run.join(driver),
            ..Default::default()
        },
    )
    .expect("driver starts");
    let store = Store::with_driver(&graph, &run, Box::new(loaded)).expect("store opens");
    for image in 0..count {
        let mut parent = None;
        for layer in 0..10u64 {
            let id = strata_core::LayerId::new(format!("{image:056x}{layer:08x}")).unwrap();
            store
                .layers
                .create_layer(
                    &NewLayer {
                        parent: parent.clone(),
                        options: CreateOptions::default(),
                        ..NewLayer::new(id.clone())
                    },
                    None,
                )
                .expect("layer made");
            parent = Some(id);
        }
        store
            .images
            .create(&NewImage {
                names: vec![format!("example.com/img{image}:latest")],
                top_layer: parent,
                ..NewImage::new(
                    strata_core::ImageId::new(format!("ff{image:054x}{:08x}", 0))
                        .expect("an image id"),
                )
            })
            .expect("image recorded");
    }
}
