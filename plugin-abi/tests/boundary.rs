//! The plugin boundary, exercised through real libraries: the vfs driver and the
//! boundary probe (test-plugins/probe), loaded with the host loader.

use std::io::{self, Read};
use std::path::Path;

use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, ErrorKind, GraphDriver, InitArgs, LoadError,
    LoadedDriver, MountOptions, PluginLibrary, WhiteoutFormat, load_driver,
};
use strata_testkit::plugins::{ForeignAbi, build_foreign_abi_plugin, build_plugin};

fn args(home: &Path) -> InitArgs {
    InitArgs {
        home: home.to_path_buf(),
        run_root: home.join("run"),
        ..Default::default()
    }
}

fn probe(home: &Path) -> LoadedDriver {
    load_driver(&build_plugin("strata-test-plugin"), &args(home)).expect("load probe")
}

#[test]
fn two_plugins_in_one_process_are_two_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let vfs_lib = PluginLibrary::open(&build_plugin("strata-driver-vfs")).unwrap();
    let probe_lib = PluginLibrary::open(&build_plugin("strata-test-plugin")).unwrap();
    assert_eq!(vfs_lib.name(), "vfs");
    assert_eq!(probe_lib.name(), "probe");
    assert_ne!(vfs_lib.description(), probe_lib.description());

    let vfs = vfs_lib.init(&args(&dir.path().join("vfs"))).unwrap();
    let probe = probe_lib.init(&args(&dir.path().join("probe"))).unwrap();
    assert_eq!(vfs.name(), "vfs");
    assert_eq!(probe.name(), "probe");

    vfs.create("only-in-vfs", None, &CreateOptions::default())
        .unwrap();
    probe
        .create("only-in-probe", None, &CreateOptions::default())
        .unwrap();
    assert_eq!(vfs.list().unwrap(), vec!["only-in-vfs"]);
    assert_eq!(probe.list().unwrap(), vec!["only-in-probe"]);
    assert!(dir.path().join("vfs/layers/only-in-vfs/root").is_dir());

    // The same library started twice gives two independent drivers.
    let vfs2 = vfs_lib.init(&args(&dir.path().join("vfs2"))).unwrap();
    assert!(vfs2.list().unwrap().is_empty());
    assert!(vfs.exists("only-in-vfs").unwrap());
}

#[test]
fn a_panic_inside_a_driver_is_an_error_and_the_host_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let probe = probe(dir.path());
    let err = probe
        .create("panic-now", None, &CreateOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(err.message().contains("create layer panic-now"), "{err}");
    assert!(
        err.message()
            .contains("probe was told to panic creating panic-now"),
        "{err}"
    );
    // The driver is still usable afterwards.
    probe
        .create("after", None, &CreateOptions::default())
        .unwrap();
    assert!(probe.exists("after").unwrap());
}

#[test]
fn errors_keep_their_kind_across_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let probe = probe(dir.path());
    let missing = probe.remove("nope").unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(missing.message(), "remove layer nope: no such layer");

    probe.create("a", None, &CreateOptions::default()).unwrap();
    let dup = probe
        .create("a", None, &CreateOptions::default())
        .unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::AlreadyExists);
    let orphan = probe
        .create("b", Some("ghost"), &CreateOptions::default())
        .unwrap_err();
    assert_eq!(orphan.kind(), ErrorKind::NotFound);
}

#[test]
fn every_method_answers_through_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let probe = probe(dir.path());
    let caps = probe.capabilities();
    assert!(caps.contains(Capabilities::NATIVE_DIFF | Capabilities::OWNS_DIFF_FORMAT));
    assert!(
        caps.contains(Capabilities::from_bits(1 << 40)),
        "unknown bits survive"
    );
    assert_eq!(
        probe.status().get("home"),
        Some(dir.path().display().to_string().as_str())
    );
    probe.create("l1", None, &CreateOptions::default()).unwrap();
    assert_eq!(probe.metadata("l1").unwrap().get("id"), Some("l1"));
    let mounted = probe.get("l1", &MountOptions::default()).unwrap();
    assert_eq!(mounted, dir.path().join("l1"));
    probe.put("l1").unwrap();
    let native = probe.native_diff("l1").unwrap().unwrap();
    assert_eq!(native.path, dir.path().join("l1/diff"));
    assert_eq!(native.whiteouts, WhiteoutFormat::Overlay);
    assert_eq!(probe.diff_size("l1", None).unwrap(), 100_000);
    probe.cleanup().unwrap();
    probe.remove("l1").unwrap();
    assert!(!probe.exists("l1").unwrap());

    // A driver that does not implement an optional method answers "not supported".
    let vfs = load_driver(
        &build_plugin("strata-driver-vfs"),
        &args(&dir.path().join("v")),
    )
    .unwrap();
    vfs.create("x", None, &CreateOptions::default()).unwrap();
    assert_eq!(vfs.native_diff("x").unwrap(), None);
    for err in [
        vfs.diff("x", None).err().unwrap(),
        vfs.apply_diff("x", None, &mut io::empty()).unwrap_err(),
        vfs.diff_size("x", None).unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");
        assert!(err.message().contains("layer x"), "{err}");
    }
}

#[test]
fn streams_cross_both_ways_with_errors() {
    let dir = tempfile::tempdir().unwrap();
    let probe = probe(dir.path());
    probe
        .create("abc", None, &CreateOptions::default())
        .unwrap();
    probe
        .create("broken", None, &CreateOptions::default())
        .unwrap();

    // Driver -> host.
    let mut out = Vec::new();
    probe
        .diff("abc", None)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out.len(), 100_000);
    assert!(out.starts_with(b"abcabcabc"));
    let mut out = Vec::new();
    let err = probe
        .diff("broken", None)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap_err();
    assert_eq!(out.len(), 1000);
    assert!(
        err.to_string().contains("probe stream broke on purpose"),
        "{err}"
    );

    // Host -> driver.
    let mut data = io::repeat(7).take(3_000_000);
    assert_eq!(probe.apply_diff("abc", None, &mut data).unwrap(), 3_000_000);

    struct FailingReader(usize);
    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(DriverError::busy("host reader said no").into());
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
    }
    let err = probe
        .apply_diff("abc", None, &mut FailingReader(5000))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(err.message().contains("host reader said no"), "{err}");
    assert!(err.message().contains("apply diff to layer abc"), "{err}");

    struct PanickingReader;
    impl Read for PanickingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            panic!("host reader panicked");
        }
    }
    let err = probe
        .apply_diff("abc", None, &mut PanickingReader)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
}

#[test]
fn a_driver_refusing_to_start_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(dir.path());
    a.options.push("refuse", "true");
    let err = load_driver(&build_plugin("strata-test-plugin"), &a)
        .err()
        .unwrap();
    let driver_err = err.driver_error().expect("an init error");
    assert_eq!(driver_err.kind(), ErrorKind::NotSupported);
    assert!(err.to_string().contains("told to refuse"), "{err}");

    let mut a = args(dir.path());
    a.options.push("colour", "blue");
    let err = load_driver(&build_plugin("strata-test-plugin"), &a)
        .err()
        .unwrap();
    assert_eq!(err.driver_error().unwrap().kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("'colour'"), "{err}");
}

#[test]
fn a_file_that_is_not_a_plugin_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("libstrata_driver_junk.so");
    std::fs::write(&junk, b"this is not a shared library").unwrap();
    let err = PluginLibrary::open(&junk).unwrap_err();
    assert!(matches!(err, LoadError::Open { .. }), "{err}");
    assert!(
        err.to_string().contains(&junk.display().to_string()),
        "{err}"
    );

    // A real shared library that is not an abi_stable plugin at all.
    let libc = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("zlib is part of every Debian system");
    let err = PluginLibrary::open(Path::new(libc)).unwrap_err();
    assert!(matches!(err, LoadError::NotAPlugin { .. }), "{err}");
    assert!(
        err.to_string().contains("is not a strata driver plugin"),
        "{err}"
    );
}

#[test]
fn a_plugin_built_against_another_abi_major_is_refused() {
    let lib = build_foreign_abi_plugin(ForeignAbi::NextMajor);
    let err = PluginLibrary::open(&lib).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, LoadError::IncompatibleVersion { .. }),
        "{text}"
    );
    assert!(text.contains(&lib.display().to_string()), "{text}");
    assert!(text.contains("strata-plugin-abi 2."), "{text}");
    assert!(text.contains(strata_plugin_abi::HOST_ABI_VERSION), "{text}");
}

/// The ABI grows by appending: a driver built against strata-plugin-abi
/// 1.0.0 as released (before `describe_mount`) loads in this host, works,
/// and answers the method it never had with "not supported".
#[test]
fn a_plugin_built_against_abi_1_0_loads_and_lacks_only_the_new_method() {
    let lib = build_foreign_abi_plugin(ForeignAbi::Release1_0);
    let library = PluginLibrary::open(&lib).expect("an ABI 1.0 driver loads in a 1.1 host");
    let home = tempfile::tempdir().unwrap();
    let driver = library.init(&args(home.path())).expect("it starts");
    assert_eq!(driver.name(), "foreign");
    driver.create("a", None, &Default::default()).unwrap();
    let err = driver
        .describe_mount("a", &MountOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");
    assert!(err.message().contains("ABI 1.1"), "{err}");
    assert!(err.message().contains("layer a"), "{err}");
}

#[test]
fn a_plugin_with_a_changed_layout_is_refused() {
    let lib = build_foreign_abi_plugin(ForeignAbi::ChangedLayout);
    let err = PluginLibrary::open(&lib).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::LayoutMismatch { .. }), "{text}");
    assert!(text.contains(&lib.display().to_string()), "{text}");
    assert!(
        text.contains("type FfiKeyValue: unexpected field, expected field 'key', found 'value'"),
        "the mismatch names the type and the field: {text}"
    );
    // One line, leading with the file; the comparison is for debug logs.
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with(&lib.display().to_string()), "{text}");
    assert!(text.contains("rebuild the driver"), "{text}");
    let LoadError::LayoutMismatch { details, .. } = &err else {
        unreachable!()
    };
    assert!(details.lines().count() > 100, "the full comparison is kept");
}
