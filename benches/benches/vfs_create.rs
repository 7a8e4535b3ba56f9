//! vfs: creating a child of a Debian root filesystem layer against `cp -a` of
//! the same tree, interleaved in one run on a loop-mounted ext4 (mkfs.ext4
//! defaults); then the same on btrfs, where vfs reflinks.
//!
//! Target: vfs within 1.2x of `cp -a` on ext4; near-instant with reflinks.
//! Run: `cargo bench -p strata-benches --bench vfs_create` (root; debootstrap
//! runs once to make the fixture).

use std::process::Command;
use std::time::Duration;

use strata_benches::{debian_rootfs_tar, interleave, median, min, run, unpack};
use strata_plugin_abi::{CreateOptions, GraphDriver, InitArgs, MountOptions, load_driver};
use strata_testkit::mounts::{LoopFilesystem, LoopFsKind};
use strata_testkit::plugins::build_plugin_release;

const ROUNDS: usize = 7;

/// The two trees copied: many small files (a Debian root filesystem) and a few
/// big ones, where a reflink's independence from data size shows.
#[derive(Clone, Copy, Debug)]
enum Tree {
    DebianRootfs,
    BigFiles,
}

fn main() {
    // `cargo bench` passes --bench; a filter argument other than ours skips us.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "vfs_create".contains(a.as_str())) {
        return;
    }
    let tar = debian_rootfs_tar();
    let library = build_plugin_release("strata-driver-vfs");
    let mut report = Vec::new();
    let mut mins = Vec::new();
    for (tree, kind) in [
        (Tree::DebianRootfs, LoopFsKind::Ext4),
        (Tree::DebianRootfs, LoopFsKind::Btrfs),
        (Tree::BigFiles, LoopFsKind::Ext4),
        (Tree::BigFiles, LoopFsKind::Btrfs),
    ] {
        let fs = LoopFilesystem::new(kind, 4 << 30).expect("loop filesystem (needs root)");
        let vfs = load_driver(
            &library,
            &InitArgs {
                home: fs.path().join("vfs"),
                run_root: fs.path().join("run"),
                ..Default::default()
            },
        )
        .unwrap();
        vfs.create("base", None, &CreateOptions::default()).unwrap();
        let base = vfs.get("base", &MountOptions::default()).unwrap();
        match tree {
            Tree::DebianRootfs => unpack(&tar, &base),
            Tree::BigFiles => {
                for i in 0..4 {
                    let data: Vec<u8> = (0..256u32 << 20).map(|b| (b % 253) as u8).collect();
                    std::fs::write(base.join(format!("blob-{i}")), data).unwrap();
                }
            }
        }
        let files = count_entries(&base);
        rustix::fs::sync();

        let copy_dir = |round: usize| fs.path().join(format!("cp-{round}"));
        let (cp, strata) = interleave(
            ROUNDS,
            |round| run(Command::new("cp").arg("-a").arg(&base).arg(copy_dir(round))),
            |round| {
                vfs.create(
                    &format!("child-{round}"),
                    Some("base"),
                    &CreateOptions::default(),
                )
                .unwrap()
            },
            || {
                for round in 0..ROUNDS {
                    let _ = std::fs::remove_dir_all(copy_dir(round));
                    let _ = vfs.remove(&format!("child-{round}"));
                }
                // Twice: the first flushes the loop filesystem into its image
                // file, the second flushes the image file itself, so no
                // writeback from one run lands in the next.
                rustix::fs::sync();
                rustix::fs::sync();
            },
        );
        let fs_name = format!("{kind:?}").to_lowercase();
        let data_copy = vfs.status().get("data copy").unwrap_or("?").to_string();
        report.push((
            tree,
            fs_name,
            files,
            median(&cp),
            median(&strata),
            data_copy,
        ));
        mins.push((min(&cp), min(&strata)));
        vfs.remove("base").unwrap();
    }
    println!(
        "\nvfs create of a child layer against cp -a of the same tree, {ROUNDS} interleaved rounds, medians:"
    );
    println!(
        "{:<13} {:<6} {:>7} {:>10} {:>12} {:>7}  vfs data copy",
        "tree", "fs", "entries", "cp -a", "vfs create", "ratio"
    );
    for ((tree, fs, files, cp, strata, how), (cp_min, strata_min)) in report.iter().zip(&mins) {
        println!(
            "{:<13} {fs:<6} {files:>7} {:>10} {:>12} {:>6.2}x  {how} (fastest runs: {} / {} = {:.2}x)",
            format!("{tree:?}"),
            ms(*cp),
            ms(*strata),
            strata.as_secs_f64() / cp.as_secs_f64(),
            ms(*cp_min),
            ms(*strata_min),
            strata_min.as_secs_f64() / cp_min.as_secs_f64(),
        );
    }
    for pair in report.chunks(2) {
        if let [ext4, btrfs] = pair {
            println!(
                "{:?}: vfs on btrfs (reflink) takes {:.1}% of the time of vfs on ext4 (full copy)",
                ext4.0,
                100.0 * btrfs.4.as_secs_f64() / ext4.4.as_secs_f64()
            );
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn count_entries(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        n += 1;
        if entry.file_type().unwrap().is_dir() {
            n += count_entries(&entry.path());
        }
    }
    n
}
