//! Two, four and eight `strata` processes creating, mounting, writing,
//! unmounting and deleting layers in one store at once, on vfs and overlay,
//! all children of one shared base that every process also mounts and
//! unmounts: nothing fails, nothing is lost, and afterwards the store and
//! the driver's home hold exactly the base, unmounted.
//!
//! Every command is a process of its own, so every one starts the driver on
//! the shared home: what a start does must never disturb a live process's
//! work (the overlay driver used to delete other processes' layers being
//! built).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::Store;

/// Files in the shared base: enough that a copying driver (vfs) takes a
/// while to make each child, so starts and deletes land inside creates.
const BASE_FILES: usize = 300;

impl Store {
    fn new(driver: &'static str) -> Store {
        Store::on("strata-processes-", driver)
    }

    /// Runs a command; its stdout, or what it said on failure.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        common::outcome(args, self.command(args).output())
    }

    fn ok(&self, args: &[&str]) -> String {
        self.run(args).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A tar of `BASE_FILES` small files in a few directories.
fn base_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..BASE_FILES {
        let data = format!("file {i}\n");
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_600_000_000);
        builder
            .append_data(&mut header, format!("d{}/f{i}", i % 6), data.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// One worker's rounds: its own layers on the shared base, and the base
/// itself mounted and released around each.
fn worker(store: &Store, worker: usize, rounds: usize) -> Result<(), String> {
    for round in 0..rounds {
        let id = format!("w{worker}-r{round}");
        let base = PathBuf::from(store.run(&["layer", "mount", "base"])?);
        store.run(&["layer", "create", "--parent", "base", &id])?;
        let path = PathBuf::from(store.run(&["layer", "mount", &id])?);
        let seen = fs::read_to_string(path.join("d0/f0"))
            .map_err(|e| format!("{id}: read the base's file: {e}"))?;
        if seen != "file 0\n" {
            return Err(format!("{id} shows the base's d0/f0 as {seen:?}"));
        }
        fs::write(path.join("own"), &id).map_err(|e| format!("{id}: write: {e}"))?;
        let back = fs::read_to_string(path.join("own")).map_err(|e| format!("{id}: {e}"))?;
        if back != id {
            return Err(format!("{id} read back {back:?}"));
        }
        // The base stays readable while others mount and release it.
        fs::read_to_string(base.join("d5/f5"))
            .map_err(|e| format!("{id}: the shared base went away under a holder: {e}"))?;
        store.run(&["layer", "unmount", &id])?;
        store.run(&["layer", "delete", &id])?;
        store.run(&["layer", "unmount", "base"])?;
    }
    Ok(())
}

fn many_processes(driver: &'static str, processes: usize, rounds: usize) {
    let store = Store::new(driver);
    let tar = store.scratch.path().join("base.tar");
    fs::write(&tar, base_tar()).unwrap();
    store.ok(&["layer", "create", "base", "--diff", tar.to_str().unwrap()]);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..processes)
            .map(|w| {
                let store = &store;
                scope.spawn(move || worker(store, w, rounds))
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| w.join().expect("worker thread").err())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{processes} processes on {driver}: {}",
        failures.join("\n")
    );
    assert_eq!(
        store.ok(&["layer", "list", "-q"]).lines().count(),
        1,
        "only the base is left"
    );
    assert!(store.ok(&["layer", "list", "-q"]).contains("base"));
    // Every mount was released by the last holder, whichever process it was.
    let mounted = strata_driver_kit::mounts::mounted_beneath(&store.graph()).unwrap();
    assert!(mounted.is_empty(), "still mounted: {mounted:?}");
    // The base is whole.
    let base = PathBuf::from(store.ok(&["layer", "mount", "base"]));
    let files = count_files(&base);
    store.ok(&["layer", "unmount", "base"]);
    assert_eq!(files, BASE_FILES);
    store.ok(&["layer", "delete", "base"]);
    // Nothing half-made or half-deleted stays in the driver's home.
    let layers_dir = store.graph().join(driver).join("layers");
    let mut left: Vec<String> = fs::read_dir(&layers_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock" && n != ".staging")
        .collect();
    left.extend(
        fs::read_dir(layers_dir.join(".staging"))
            .unwrap()
            .flatten()
            .map(|e| format!(".staging/{}", e.file_name().to_string_lossy())),
    );
    assert!(
        left.is_empty(),
        "left in {}: {left:?}",
        layers_dir.display()
    );
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn two_processes_on_vfs() {
    many_processes("vfs", 2, 8);
}

#[test]
fn four_processes_on_vfs() {
    many_processes("vfs", 4, 6);
}

#[test]
fn eight_processes_on_vfs() {
    many_processes("vfs", 8, 4);
}

#[test]
fn two_processes_on_overlay() {
    many_processes("overlay", 2, 8);
}

#[test]
fn four_processes_on_overlay() {
    many_processes("overlay", 4, 6);
}

#[test]
fn eight_processes_on_overlay() {
    many_processes("overlay", 8, 4);
}

#[test]
fn two_processes_on_btrfs() {
    many_processes("btrfs", 2, 8);
}

#[test]
fn four_processes_on_btrfs() {
    many_processes("btrfs", 4, 6);
}

#[test]
fn two_processes_on_zfs() {
    many_processes("zfs", 2, 4);
}
