//! Starting a workspace driver library in a test: build it with cargo, load
//! it through the ABI, start it on a scratch home.

use std::path::Path;

use strata_testkit::plugins::build_plugin;

/// Builds the driver library of `package` and starts it on `home` (run root
/// `home/run`) with `options`. A driver that refuses to start gives its error;
/// a library that cannot be loaded fails the test.
pub fn start_driver(
    package: &str,
    home: &Path,
    options: &[(&str, &str)],
) -> strata_plugin_abi::Result<strata_plugin_abi::LoadedDriver> {
    let args = strata_plugin_abi::InitArgs {
        home: home.to_path_buf(),
        run_root: home.join("run"),
        options: options.iter().copied().collect(),
        ..Default::default()
    };
    strata_plugin_abi::load_driver(&build_plugin(package), &args).map_err(|e| {
        match e.driver_error() {
            Some(err) => err.clone(),
            None => panic!("{e}"),
        }
    })
}

/// Options for a read-write layer.
pub fn read_write() -> strata_plugin_abi::CreateOptions {
    strata_plugin_abi::CreateOptions {
        read_write: true,
        ..Default::default()
    }
}
