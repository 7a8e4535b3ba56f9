//! Applying a layer tar against GNU `tar -x` of the same tar, interleaved in one
//! run on a loop-mounted ext4 (mkfs.ext4 defaults). strata also computes the
//! compressed and uncompressed sha256 and writes the gzip'd tar-split record;
//! tar only extracts. Target: within 1.2x of tar.
//!
//! Also: peak RSS of `strata layer create --diff` on a 1 GiB layer (target:
//! under 64 MiB, not growing with the layer).
//!
//! Run: `cargo bench -p strata-benches --bench archive_apply` (root).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_benches::{debian_rootfs_tar, interleave, median, min, run};
use strata_core::archive::{ApplyOptions, apply_layer};
use strata_testkit::mounts::{LoopFilesystem, LoopFsKind};

const ROUNDS: usize = 9;

/// The tar `name` in `dir`, made once from a tree `fill` writes.
fn cached_tar(dir: &Path, name: &str, fill: impl FnOnce(&Path)) -> PathBuf {
    let tar = dir.join(format!("{name}.tar"));
    if !tar.exists() {
        let src = dir.join(name);
        let _ = fs::remove_dir_all(&src);
        fs::create_dir_all(&src).unwrap();
        fill(&src);
        let partial = dir.join(format!("{name}.tar.partial"));
        run(Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&src)
            .arg("-cf")
            .arg(&partial)
            .arg("."));
        fs::rename(&partial, &tar).unwrap();
        fs::remove_dir_all(&src).unwrap();
    }
    tar
}

/// Many small files, like a node_modules tree: 30,000 files of 0-8 KiB in
/// 1,500 directories.
fn small_files_tar(dir: &Path) -> PathBuf {
    cached_tar(dir, "small-files", |src| {
        for d in 0..1500 {
            let sub = src.join(format!("pkg-{d:04}/lib"));
            fs::create_dir_all(&sub).unwrap();
            for f in 0..20 {
                let len = (d * 31 + f * 977) % 8192;
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + d + f) as u8).collect();
                fs::write(sub.join(format!("module-{f}.js")), data).unwrap();
            }
        }
    })
}

/// 1 GiB in 4 files of incompressible-looking data.
fn big_files_tar(dir: &Path) -> PathBuf {
    cached_tar(dir, "big-files", |src| {
        for i in 0..4u32 {
            let data: Vec<u8> = (0..256u32 << 20)
                .map(|b| (b.wrapping_mul(2_654_435_761) >> 24) as u8 ^ i as u8)
                .collect();
            fs::write(src.join(format!("blob-{i}")), data).unwrap();
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "archive_apply".contains(a.as_str())) {
        return;
    }
    let fixtures = strata_testkit::workspace_root().join("target/bench-fixtures");
    fs::create_dir_all(&fixtures).unwrap();
    let cases = [
        ("debian-rootfs", debian_rootfs_tar()),
        ("30k-small-files", small_files_tar(&fixtures)),
        ("1GiB-in-4-files", big_files_tar(&fixtures)),
    ];
    let fs = LoopFilesystem::new(LoopFsKind::Ext4, 6 << 30).expect("loop ext4 (needs root)");
    let mut rows = Vec::new();
    for (name, tar) in &cases {
        let bytes = fs::metadata(tar).unwrap().len();
        let tar_dest = fs.path().join("by-tar");
        let strata_dest = fs.path().join("by-strata");
        let record = fs.path().join("record.tar-split.gz");
        let (by_tar, by_strata) = interleave(
            ROUNDS,
            |_| {
                fs::create_dir(&tar_dest).unwrap();
                run(Command::new("tar")
                    .args(["--numeric-owner", "-xpf"])
                    .arg(tar)
                    .arg("-C")
                    .arg(&tar_dest));
            },
            |_| {
                fs::create_dir(&strata_dest).unwrap();
                let input =
                    std::io::BufReader::with_capacity(1 << 20, fs::File::open(tar).unwrap());
                let out = fs::File::create(&record).unwrap();
                let mut gz = flate2::write::GzEncoder::new(
                    std::io::BufWriter::new(out),
                    flate2::Compression::fast(),
                );
                apply_layer(&strata_dest, input, &ApplyOptions::default(), Some(&mut gz)).unwrap();
                gz.finish().unwrap();
            },
            || {
                let _ = fs::remove_dir_all(&tar_dest);
                let _ = fs::remove_dir_all(&strata_dest);
                let _ = fs::remove_file(&record);
                rustix::fs::sync();
                rustix::fs::sync();
            },
        );
        rows.push((
            *name,
            bytes,
            median(&by_tar),
            median(&by_strata),
            min(&by_tar),
            min(&by_strata),
        ));
    }
    println!(
        "\napply of a layer tar against GNU tar -x, {ROUNDS} interleaved rounds on loop ext4:"
    );
    println!(
        "{:<16} {:>9} {:>11} {:>13} {:>7}   fastest runs",
        "tar", "MiB", "tar -x", "strata apply", "ratio"
    );
    for (name, bytes, t, s, tmin, smin) in &rows {
        println!(
            "{name:<16} {:>9.1} {:>11} {:>13} {:>6.2}x   {} / {} = {:.2}x",
            *bytes as f64 / (1 << 20) as f64,
            ms(*t),
            ms(*s),
            s.as_secs_f64() / t.as_secs_f64(),
            ms(*tmin),
            ms(*smin),
            smin.as_secs_f64() / tmin.as_secs_f64()
        );
    }
    peak_rss(&fs, &cases[2].1);
}

/// Peak RSS of the strata command applying the 1 GiB tar, from /usr/bin/time.
fn peak_rss(fs: &LoopFilesystem, tar: &Path) {
    let strata = strata_testkit::workspace_root().join("target/release/strata");
    run(strata_testkit::cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "strata-cli",
        "-p",
        "strata-driver-vfs",
    ]));
    let root = fs.path().join("rss");
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(&strata)
        .arg("--root")
        .arg(root.join("graph"))
        .arg("--run-root")
        .arg(root.join("run"))
        .args(["--driver", "vfs", "layer", "create", "--diff"])
        .arg(tar)
        .arg("big")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kib: u64 = String::from_utf8_lossy(&out.stderr)
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    println!(
        "peak RSS of `strata layer create --diff` on a {:.0} MiB tar: {:.1} MiB",
        fs::metadata(tar).unwrap().len() as f64 / (1 << 20) as f64,
        kib as f64 / 1024.0
    );
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
