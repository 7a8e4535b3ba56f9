//! A driver's tracing events reach the host's subscriber (its own test binary,
//! because it installs a global subscriber).

use std::io::Write;
use std::sync::{Arc, Mutex};

use strata_plugin_abi::{CreateOptions, GraphDriver, InitArgs, load_driver};
use strata_testkit::plugins::build_plugin;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn driver_events_reach_the_host_subscriber_filtered_by_its_level() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let library = build_plugin("strata-test-plugin");
    let dir = tempfile::tempdir().unwrap();
    let driver = load_driver(
        &library,
        &InitArgs {
            home: dir.path().to_path_buf(),
            ..Default::default()
        },
    )
    .unwrap();
    driver
        .create("logged", None, &CreateOptions::default())
        .unwrap();
    let _ = driver.create("panic-logged", None, &CreateOptions::default());

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |marker: &str| log.lines().find(|l| l.contains(marker)).map(str::to_string);
    let init = line("probe-init").unwrap_or_else(|| panic!("no init event in:\n{log}"));
    assert!(init.contains("INFO"), "{init}");
    assert!(init.contains("strata::driver"), "{init}");
    assert!(init.contains("driver=\"probe\""), "{init}");
    assert!(init.contains("probe driver starting"), "{init}");
    let create = line("probe-create").unwrap_or_else(|| panic!("no create event in:\n{log}"));
    assert!(create.contains("layer=logged"), "{create}");
    // The panic message goes to the host's log, not to the plugin's stderr.
    assert!(
        line("probe was told to panic creating panic-logged").is_some(),
        "panic not logged:\n{log}"
    );
    // Below the host's level: never sent.
    assert!(line("probe-trace").is_none(), "trace event crossed:\n{log}");
}
