//! The other side of the multi-process checks: a process that starts the
//! driver on the same home and does one task, reporting on stdout (one line
//! per outcome) and failing with a message on stderr.
//!
//! The runner re-executes itself as `strata-conformance worker ... -- TASK`;
//! a driver author's own harness can do the same with [`run_task`].

use std::fs;
use std::io::Write;
use std::path::Path;

use strata_plugin_abi::{CreateOptions, ErrorKind, GraphDriver, MountOptions};

/// A file every base layer of the process checks holds, and how many files
/// it holds besides (so a child can be checked whole).
pub const BASE_MARKER: &str = "conformance-base";

/// Runs one task against `driver`; `Err` is the failure to report.
///
/// Tasks:
/// * `start`: nothing beyond starting (and cleaning up) the driver;
/// * `lifecycle PREFIX ROUNDS BASE ENTRIES`: each round creates `PREFIX-N`
///   on `BASE`, mounts it, checks it holds the base whole (`ENTRIES` entries),
///   writes and reads back a file of its own, unmounts and removes it;
/// * `create-same BASE ID...`: creates each id on `BASE`, printing
///   `won ID` or `lost ID` (someone else made it: AlreadyExists);
/// * `remove-same ID...`: removes each, printing `removed ID` or `gone ID`
///   (NotFound);
/// * `churn PREFIX BASE ENTRIES`: prints `ready`, then creates, mounts,
///   unmounts and removes children of `BASE` until killed (the kill
///   campaign's victim), printing `begin N` and `end N` around each.
///
/// A worker mounts only layers it made itself: mounts are counted by the
/// host, so two processes sharing a mount go through the host's counts, not
/// the driver.
pub fn run_task(driver: &dyn GraphDriver, task: &[String]) -> Result<(), String> {
    let words: Vec<&str> = task.iter().map(String::as_str).collect();
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    match words.as_slice() {
        ["start"] => Ok(()),
        ["lifecycle", prefix, rounds, base, entries] => {
            let rounds: usize = rounds.parse().map_err(|_| format!("bad rounds {rounds}"))?;
            let expected = entries
                .parse()
                .map_err(|_| format!("bad entries {entries}"))?;
            for round in 0..rounds {
                let id = format!("{prefix}-{round}");
                one_lifecycle(driver, &id, base, expected)?;
            }
            say(format!("done {rounds}"));
            Ok(())
        }
        ["create-same", base, ids @ ..] => {
            for id in ids {
                match driver.create(id, Some(base), &read_write()) {
                    Ok(()) => say(format!("won {id}")),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => say(format!("lost {id}")),
                    Err(e) => return Err(format!("create {id}: {e}")),
                }
            }
            Ok(())
        }
        ["remove-same", ids @ ..] => {
            for id in ids {
                match driver.remove(id) {
                    Ok(()) => say(format!("removed {id}")),
                    Err(e) if e.kind() == ErrorKind::NotFound => say(format!("gone {id}")),
                    Err(e) => return Err(format!("remove {id}: {e}")),
                }
            }
            Ok(())
        }
        ["churn", prefix, base, entries] => {
            let expected = entries
                .parse()
                .map_err(|_| format!("bad entries {entries}"))?;
            // The killer waits for `ready` and reads `begin`/`end` to know
            // where its kill landed.
            say("ready".into());
            for round in 0.. {
                let id = format!("{prefix}-{round}");
                say(format!("begin {round}"));
                one_lifecycle(driver, &id, base, expected)?;
                say(format!("end {round}"));
            }
            Ok(())
        }
        other => Err(format!("unknown worker task {other:?}")),
    }
}

fn read_write() -> CreateOptions {
    CreateOptions {
        read_write: true,
        ..Default::default()
    }
}

/// Entries in the tree below `root`, recursively.
pub fn count_entries(root: &Path) -> std::io::Result<usize> {
    let mut count = 0;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        count += 1;
        if entry.file_type()?.is_dir() {
            count += count_entries(&entry.path())?;
        }
    }
    Ok(count)
}

fn one_lifecycle(
    driver: &dyn GraphDriver,
    id: &str,
    base: &str,
    expected: usize,
) -> Result<(), String> {
    driver
        .create(id, Some(base), &read_write())
        .map_err(|e| format!("create {id}: {e}"))?;
    let path = driver
        .get(id, &MountOptions::default())
        .map_err(|e| format!("mount {id}: {e}"))?;
    let checked = (|| -> Result<(), String> {
        let found = count_entries(&path).map_err(|e| format!("read {id}: {e}"))?;
        if found != expected {
            return Err(format!(
                "{id} holds {found} entries, its base {base} {expected}"
            ));
        }
        fs::write(path.join("own"), id).map_err(|e| format!("write into {id}: {e}"))?;
        let back = fs::read(path.join("own")).map_err(|e| format!("read from {id}: {e}"))?;
        if back != id.as_bytes() {
            return Err(format!("{id} read back {back:?}"));
        }
        Ok(())
    })();
    let put = driver.put(id).map_err(|e| format!("unmount {id}: {e}"));
    checked?;
    put?;
    driver.remove(id).map_err(|e| format!("remove {id}: {e}"))
}
