//! The windows driver's library as a host loads it, through the plugin ABI:
//! on Linux the shared object, under Wine (scripts/windows-check.sh runs this
//! test cross-built) the Windows DLL, where computestorage.dll is missing as
//! on any Windows without the Containers feature.

use std::path::PathBuf;

use strata_plugin_abi::{ErrorKind, InitArgs, PluginLibrary};

/// The library cargo built beside this test (`target/<profile>/deps/..`).
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    profile_dir.join(format!(
        "{}strata_driver_windows{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

#[test]
fn the_library_loads_and_says_why_the_driver_cannot_run_here() {
    let path = library();
    assert!(path.is_file(), "{} was not built", path.display());
    let library = PluginLibrary::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(library.name(), "windows");
    let home = std::env::temp_dir().join(format!("strata-windows-driver-{}", std::process::id()));
    let args = InitArgs {
        home: home.clone(),
        run_root: home.join("run"),
        ..InitArgs::default()
    };
    let error = match library.init(&args) {
        Ok(_) => panic!("the windows driver started, but it has no layer operations yet"),
        Err(e) => e,
    };
    let driver_error = error
        .driver_error()
        .unwrap_or_else(|| panic!("not a driver error: {error}"));
    assert_eq!(driver_error.kind(), ErrorKind::NotSupported, "{error}");
    let message = driver_error.message();
    if cfg!(windows) {
        // Wine has no computestorage.dll, as Windows without Containers.
        assert!(
            message.contains("computestorage.dll not found")
                && message.contains("Windows Containers feature"),
            "{message}"
        );
    } else {
        assert!(message.contains("runs only on Windows"), "{message}");
    }
    assert!(!home.exists(), "init made its home although it cannot run");
}
