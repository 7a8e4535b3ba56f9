//! OCI imports of hostile layouts: FIFOs and devices as blobs, symlinks out
//! of the layout, blobs that are not the size they declare, huge indexes and
//! manifests, JSON carrying terminal escapes. Each import runs as a
//! `strata image import` child with a deadline (a hang is killed and fails
//! the test), under GNU time for its peak RSS, which must stay under 64 MiB.
//! Each must be refused with an error naming the blob (or file) and what is
//! wrong, showing nothing of the content and no control character, and leave
//! nothing in the store. Beside them, layouts that are unusual but fine (a
//! symlink inside the layout, JSON at its size limits, annotation bombs)
//! must import within the same memory.

use strata_testkit::fixtures;

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fixtures::RawTar;
use fixtures::layout::{
    Layer, Written, add_to_index, blob_path, descriptor, digest, put_raw_blob, write_image,
    write_image_with_config, write_raw_manifest,
};
use strata_conformance::harness::start_driver;
use strata_core::store::Store;
use strata_testkit::plugins::build_plugin;

/// How long an import may take before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(20);
/// The most resident memory an import may reach, whatever the layout.
const MAX_PEAK_KIB: u64 = 64 * 1024;
/// A child past this is killed at once rather than at the deadline: it has
/// failed already, and memory growing without end must not take the machine.
const RUNAWAY_KIB: u64 = 512 * 1024;
/// Text planted in hostile content; no error may show it.
const SECRET: &str = "HOSTILE-SECRET-7c1e";

/// The worst peak RSS of any import this test binary ran.
static WORST_PEAK_KIB: AtomicU64 = AtomicU64::new(0);

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = RawTar::new();
    for (name, data) in files {
        tar.file(name, data.as_bytes());
    }
    tar.finish()
}

fn two_layers() -> Vec<Layer> {
    vec![
        Layer::gzip(&tar_of(&[
            ("etc/os-release", "ID=strata\n"),
            ("bin/sh", "#!"),
        ])),
        Layer::plain(&tar_of(&[("app/run", "run")])),
    ]
}

/// A scratch directory with a layout in `layout/` and, beside it (outside
/// the layout), whatever a case needs.
struct Case {
    scratch: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    fn layout(&self) -> PathBuf {
        self.scratch.path().join("layout")
    }

    fn blob(&self, digest: &str) -> PathBuf {
        blob_path(&self.layout(), digest)
    }

    /// Replaces blob `digest` with a symlink to `target`.
    fn link_blob(&self, digest: &str, target: &Path) {
        fs::remove_file(self.blob(digest)).unwrap();
        symlink(target, self.blob(digest)).unwrap();
    }

    /// Replaces `path` with a FIFO.
    fn fifo(&self, path: &Path) {
        let _ = fs::remove_file(path);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }

    /// Makes `path` a sparse file of `size` bytes (nothing written).
    fn sparse(&self, path: &Path, size: u64) {
        let file = fs::File::create(path).unwrap();
        file.set_len(size).unwrap();
    }

    /// Imports the layout's image tagged `tag` in a child process.
    fn import(&self, tag: &str) -> Outcome {
        import_in_child(
            self.scratch.path(),
            &format!("{}:{tag}", self.layout().display()),
        )
    }

    /// Checks the store holds nothing: no image, no layer record, no
    /// driver layer.
    fn assert_nothing_left(&self) {
        let graph = self.scratch.path().join("graph");
        let driver = start_driver("strata-driver-vfs", &graph.join("vfs"), &[]).unwrap();
        let store =
            Store::with_driver(&graph, &self.scratch.path().join("run"), Box::new(driver)).unwrap();
        assert!(store.images.list().unwrap().is_empty(), "an image was left");
        assert!(
            store.layers.list().unwrap().is_empty(),
            "a layer record was left"
        );
        assert!(
            store.driver().list().unwrap().is_empty(),
            "a driver layer was left"
        );
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    peak_kib: u64,
    took: Duration,
}

impl Outcome {
    /// Checks the import failed, naming everything in `named`, with nothing
    /// on stdout, no control character and nothing of `hidden` on stderr.
    fn assert_refused(&self, named: &[&str], hidden: &[&str]) {
        let err = &self.stderr;
        assert_eq!(self.code, Some(2), "the import must fail: {err}");
        assert!(self.stdout.is_empty(), "stdout: {}", self.stdout);
        for name in named {
            assert!(
                err.contains(name),
                "the error does not name {name:?}: {err}"
            );
        }
        for text in hidden {
            assert!(!err.contains(text), "the error shows {text:?}: {err}");
        }
        assert!(
            !err.chars().any(|c| c.is_control() && c != '\n'),
            "the error holds a control character: {err:?}"
        );
        // One line: the error. Nothing else (no log lines quoting input).
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// The directory holding the vfs driver library, built once.
fn drivers() -> PathBuf {
    build_plugin("strata-driver-vfs")
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `strata image import LOCATION` on the scratch directory's store
/// under /usr/bin/time, killing it (and failing) past the deadline or past
/// `RUNAWAY_KIB`, and returns what it did and its peak RSS.
fn import_in_child(scratch: &Path, location: &str) -> Outcome {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "/usr/bin/time (Debian package 'time') measures the peak RSS"
    );
    let rss_file = tempfile::NamedTempFile::new_in(scratch).unwrap();
    let mut command = Command::new(time);
    for (key, _) in std::env::vars() {
        if key.starts_with("STRATA_") {
            command.env_remove(key);
        }
    }
    command
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss_file.path())
        .arg(env!("CARGO_BIN_EXE_strata"))
        .env("STRATA_DRIVER_PATH", drivers())
        .arg("--root")
        .arg(scratch.join("graph"))
        .arg("--run-root")
        .arg(scratch.join("run"))
        .args(["--driver", "vfs", "image", "import", location])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a hung import is killed with time.
        .process_group(0);
    let start = Instant::now();
    let mut child = command.spawn().unwrap();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let pipe = |mut from: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = from.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().unwrap()));
    let stderr = pipe(Box::new(child.stderr.take().unwrap()));
    let kill = |child: &mut std::process::Child, why: String| -> ! {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = child.wait();
        panic!("strata image import {location} {why}");
    };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            kill(
                &mut child,
                format!("did not finish in {DEADLINE:?}: killed"),
            );
        }
        if let Some(rss) = children_rss_kib(child.id())
            && rss > RUNAWAY_KIB
        {
            kill(&mut child, format!("grew to {rss} KiB resident: killed"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    // GNU time writes "Command exited with non-zero status N" before the
    // figure when the command fails: the figure is the last line.
    let report = fs::read_to_string(rss_file.path()).unwrap();
    let peak_kib: u64 = report
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS from time: {report:?}"));
    let worst = WORST_PEAK_KIB
        .fetch_max(peak_kib, Ordering::SeqCst)
        .max(peak_kib);
    let outcome = Outcome {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        peak_kib,
        took,
    };
    // The error shown escaped (a failing case may not have escaped it).
    println!(
        "import {location}: {:.1} MiB peak RSS, {took:.2?} (worst so far {:.1} MiB): {}",
        peak_kib as f64 / 1024.0,
        worst as f64 / 1024.0,
        outcome.stderr.trim_end().escape_debug()
    );
    assert!(
        outcome.peak_kib < MAX_PEAK_KIB,
        "peak RSS {} KiB is over {MAX_PEAK_KIB} KiB: {}",
        outcome.peak_kib,
        outcome.stderr
    );
    outcome
}

/// The resident memory of `time`'s children (strata), while they run.
fn children_rss_kib(pid: u32) -> Option<u64> {
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let mut total = 0;
    for child in children.split_whitespace() {
        let status = fs::read_to_string(format!("/proc/{child}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        total += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total)
}

#[test]
fn a_fifo_as_a_blob_is_refused_not_waited_on() {
    // A layer: the first one is applied, then the FIFO must not hang.
    let case = Case::new();
    let written = write_image(&case.layout(), "app", &two_layers(), "fifo");
    case.fifo(&case.blob(&written.layers[1]));
    case.import("app").assert_refused(
        &[
            &written.layers[1],
            "layer 2 of 2",
            "FIFO",
            "not a regular file",
        ],
        &[],
    );
    case.assert_nothing_left();

    // The config, the manifest, index.json and oci-layout.
    let case = Case::new();
    let written = write_image(&case.layout(), "app", &two_layers(), "fifo-config");
    case.fifo(&case.blob(&written.config));
    case.import("app")
        .assert_refused(&[&written.config, "config", "FIFO"], &[]);
    case.assert_nothing_left();

    let case = Case::new();
    let written = write_image(&case.layout(), "app", &two_layers(), "fifo-manifest");
    case.fifo(&case.blob(&written.manifest));
    case.import("app")
        .assert_refused(&[&written.manifest, "manifest", "FIFO"], &[]);
    case.assert_nothing_left();

    for file in ["index.json", "oci-layout"] {
        let case = Case::new();
        write_image(&case.layout(), "app", &two_layers(), file);
        case.fifo(&case.layout().join(file));
        case.import("app").assert_refused(&[file, "FIFO"], &[]);
        case.assert_nothing_left();
    }
}

#[test]
fn a_blob_linked_to_dev_zero_is_refused_not_read() {
    // Declared empty, so that a size check alone (/dev/zero's is 0) lets it
    // through: the layer applier would read zeros for ever.
    let case = Case::new();
    let empty = Layer {
        blob: Vec::new(),
        diff_id: digest(&tar_of(&[])),
        media_type: "application/vnd.oci.image.layer.v1.tar",
    };
    let mut layers = two_layers();
    layers[1] = empty;
    let written = write_image(&case.layout(), "app", &layers, "zero");
    case.link_blob(&written.layers[1], Path::new("/dev/zero"));
    case.import("app").assert_refused(
        &[
            &written.layers[1],
            "layer 2 of 2",
            "symbolic link",
            "/dev/zero",
            "leaves the layout",
        ],
        &[],
    );
    case.assert_nothing_left();

    // An empty config read whole would fill memory with zeros.
    let case = Case::new();
    let written = write_image_with_config(&case.layout(), "app", &two_layers(), b"");
    case.link_blob(&written.config, Path::new("/dev/zero"));
    case.import("app").assert_refused(
        &[
            &written.config,
            "config",
            "symbolic link",
            "leaves the layout",
        ],
        &[],
    );
    case.assert_nothing_left();

    // Declared at its real size, a layer linked to /dev/zero is refused
    // for the link, not for the size /dev/zero shows.
    let case = Case::new();
    let written = write_image(&case.layout(), "app", &two_layers(), "zero-sized");
    case.link_blob(&written.layers[1], Path::new("/dev/zero"));
    case.import("app").assert_refused(
        &[
            &written.layers[1],
            "layer 2 of 2",
            "symbolic link",
            "leaves the layout",
        ],
        &[],
    );
    case.assert_nothing_left();
}

/// A file of recognisable secret lines, like /etc/shadow's.
fn secret_lines() -> Vec<u8> {
    format!("root:{SECRET}:19000:0:99999:7:::\n")
        .repeat(30)
        .into_bytes()
}

#[test]
fn a_blob_linked_outside_the_layout_is_refused_and_never_shown() {
    for relative in [false, true] {
        let case = Case::new();
        let secret = case.scratch.path().join("shadow");
        fs::write(&secret, secret_lines()).unwrap();
        // Declared with the secret's own digest and size, so that nothing
        // but the link gives it away.
        let mut layers = two_layers();
        layers[1] = Layer {
            blob: secret_lines(),
            diff_id: digest(&tar_of(&[])),
            media_type: "application/vnd.oci.image.layer.v1.tar",
        };
        let written = write_image(&case.layout(), "app", &layers, "secret");
        let target = if relative {
            // layout/blobs/sha256/X -> ../../../shadow = scratch/shadow
            PathBuf::from("../../../shadow")
        } else {
            secret.clone()
        };
        case.link_blob(&written.layers[1], &target);
        case.import("app").assert_refused(
            &[
                &written.layers[1],
                "layer 2 of 2",
                "symbolic link",
                "leaves the layout",
            ],
            &[SECRET],
        );
        case.assert_nothing_left();
    }

    // A config linked out, its digest matching what it points at.
    let case = Case::new();
    let secret = case.scratch.path().join("shadow");
    fs::write(&secret, secret_lines()).unwrap();
    let written = write_image_with_config(&case.layout(), "app", &two_layers(), &secret_lines());
    case.link_blob(&written.config, &secret);
    case.import("app").assert_refused(
        &[
            &written.config,
            "config",
            "symbolic link",
            "leaves the layout",
        ],
        &[SECRET],
    );
    case.assert_nothing_left();

    // A link to a blob elsewhere in the layout is followed (beneath it).
    let case = Case::new();
    let written = write_image(&case.layout(), "app", &two_layers(), "inside");
    let moved = case.layout().join("elsewhere");
    fs::rename(case.blob(&written.layers[1]), &moved).unwrap();
    symlink("../../elsewhere", case.blob(&written.layers[1])).unwrap();
    let out = case.import("app");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn a_layer_that_is_not_a_tar_is_refused_without_quoting_it() {
    // A regular blob inside the layout whose digest matches: the tar reader
    // fails on its first header, whose fields are the secret's bytes.
    let case = Case::new();
    let mut layers = two_layers();
    layers[1] = Layer {
        blob: secret_lines(),
        diff_id: digest(&tar_of(&[])),
        media_type: "application/vnd.oci.image.layer.v1.tar",
    };
    let written = write_image(&case.layout(), "app", &layers, "junk");
    let out = case.import("app");
    out.assert_refused(
        &[&written.layers[1], "layer 2 of 2", "bad layer stream"],
        &[SECRET, "root:"],
    );
    case.assert_nothing_left();

    // A member whose name and mode hold terminal escapes: the name is shown
    // escaped, the mode field's bytes not at all.
    let case = Case::new();
    let mut tar = RawTar::new();
    tar.header(b"app/\x1b]0;PWNED\x07", b'0', b"", 0, 0o644);
    let mut bytes = tar.finish();
    bytes[100..108].copy_from_slice(b"\x1b[2J\x1b[1H");
    let sum: u32 = bytes[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                b' ' as u32
            } else {
                *b as u32
            }
        })
        .sum();
    bytes[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut layers = two_layers();
    layers[1] = Layer::plain(&bytes);
    let written = write_image(&case.layout(), "app", &layers, "escapes");
    case.import("app")
        .assert_refused(&[&written.layers[1], "layer 2 of 2"], &["[2J"]);
    case.assert_nothing_left();
}

#[test]
fn json_with_terminal_escapes_is_refused_without_showing_it() {
    let config = |rootfs_type: &str| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": rootfs_type, "diff_ids": two_layers().iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
        }))
        .unwrap()
    };
    let manifest_cases: [(&str, Vec<u8>); 3] = [
        // Not JSON: raw escapes inside a string.
        (
            "raw escapes",
            format!("{{\"schemaVersion\": 2, \"mediaType\": \"\x1b]0;{SECRET}\x07\x1b[2J")
                .into_bytes(),
        ),
        // JSON, but a string where a number belongs (a parser would quote it).
        (
            "a string for a number",
            format!("{{\"schemaVersion\": \"\\u001b[2J{SECRET}\", \"config\": {{}}}}").into_bytes(),
        ),
        // Cut short after content.
        (
            "cut short",
            format!("{{\"schemaVersion\": 2, \"layers\": [\"{SECRET}").into_bytes(),
        ),
    ];
    for (why, manifest) in manifest_cases {
        let case = Case::new();
        let digest = write_raw_manifest(&case.layout(), "app", &manifest);
        let out = case.import("app");
        out.assert_refused(&[&digest, "image manifest", "line 1 column"], &[SECRET]);
        case.assert_nothing_left();
        println!("({why})");
    }

    // Configs: invalid JSON with escapes, and valid JSON whose rootfs type
    // is an escape sequence.
    let bad_configs = [
        format!("{{\"rootfs\": \x1b[31m{SECRET}\x1b[0m").into_bytes(),
        config(&format!("\x1b]0;{SECRET}\x07")),
    ];
    for bytes in bad_configs {
        let case = Case::new();
        let written = write_image_with_config(&case.layout(), "app", &two_layers(), &bytes);
        case.import("app")
            .assert_refused(&[&written.config, "config"], &[SECRET]);
        case.assert_nothing_left();
    }

    // index.json: a value of the wrong type, and not JSON at all.
    for index in [
        format!("{{\"schemaVersion\": \"\\u001b[2J{SECRET}\"}}").into_bytes(),
        format!("{{\"schemaVersion\": 2, \x1b[2J{SECRET}").into_bytes(),
    ] {
        let case = Case::new();
        write_image(&case.layout(), "app", &two_layers(), "index");
        fs::write(case.layout().join("index.json"), index).unwrap();
        case.import("app")
            .assert_refused(&["index.json", "line 1 column"], &[SECRET]);
        case.assert_nothing_left();
    }

    // Names that must be shown (a tag, a media type) are shown escaped.
    let case = Case::new();
    write_image(&case.layout(), "\x1b]0;evil\x07", &two_layers(), "tag");
    case.import("nope")
        .assert_refused(&["'nope'", "\\u{1b}]0;evil\\u{7}"], &[]);
    case.assert_nothing_left();

    let case = Case::new();
    let written = write_image(&case.layout(), "app", &two_layers(), "media");
    let index = fs::read_to_string(case.layout().join("index.json")).unwrap();
    fs::write(
        case.layout().join("index.json"),
        index.replace(
            "application/vnd.oci.image.manifest.v1+json",
            "\\u001b[5mapplication/x-evil",
        ),
    )
    .unwrap();
    case.import("app").assert_refused(
        &[
            &written.manifest,
            "not an image manifest",
            "\\u{1b}[5mapplication/x-evil",
        ],
        &[],
    );
    case.assert_nothing_left();
}

#[test]
fn oversized_index_layout_marker_manifest_and_config_are_refused_unread() {
    const GIB: u64 = 1 << 30;
    let fast = |out: &Outcome| assert!(out.took < Duration::from_secs(10), "took {:?}", out.took);

    // A 1 GiB index.json and oci-layout (sparse: nothing is written).
    for (file, limit) in [("index.json", "4 MiB"), ("oci-layout", "4 KiB")] {
        let case = Case::new();
        write_image(&case.layout(), "app", &two_layers(), file);
        case.sparse(&case.layout().join(file), GIB);
        let out = case.import("app");
        out.assert_refused(&[file, "1073741824 bytes", limit], &[]);
        fast(&out);
        case.assert_nothing_left();
    }

    // A manifest declared (and made) 1 GiB: refused from its descriptor.
    let case = Case::new();
    let fake = digest(b"a manifest of 1 GiB");
    fs::create_dir_all(case.layout().join("blobs/sha256")).unwrap();
    case.sparse(&case.blob(&fake), GIB);
    add_to_index(
        &case.layout(),
        "app",
        descriptor("application/vnd.oci.image.manifest.v1+json", &fake, GIB),
    );
    let out = case.import("app");
    out.assert_refused(&[&fake, "manifest", "4 MiB"], &[]);
    fast(&out);
    case.assert_nothing_left();

    // 8 MiB of zeros with the right digest: over the limit, not read.
    let case = Case::new();
    let zeros = vec![0u8; 8 << 20];
    let eight = write_raw_manifest(&case.layout(), "app", &zeros);
    let out = case.import("app");
    out.assert_refused(&[&eight, "manifest", "4 MiB"], &[]);
    fast(&out);
    case.assert_nothing_left();

    // A manifest declared small whose file is 1 GiB.
    let case = Case::new();
    let written = write_image(&case.layout(), "app", &two_layers(), "grown");
    let size = fs::metadata(case.blob(&written.manifest)).unwrap().len();
    case.sparse(&case.blob(&written.manifest), GIB);
    let out = case.import("app");
    out.assert_refused(
        &[
            &written.manifest,
            "manifest",
            "longer than",
            &format!("{size} bytes"),
        ],
        &[],
    );
    fast(&out);
    case.assert_nothing_left();

    // A config of 32 MiB.
    let case = Case::new();
    let big = digest(b"a config of 32 MiB");
    fs::create_dir_all(case.layout().join("blobs/sha256")).unwrap();
    case.sparse(&case.blob(&big), 32 << 20);
    let layers: Vec<serde_json::Value> = two_layers()
        .iter()
        .map(|l| {
            descriptor(
                l.media_type,
                &put_raw_blob(&case.layout(), &l.blob),
                l.blob.len() as u64,
            )
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &big, 32 << 20),
        "layers": layers,
    });
    write_raw_manifest(
        &case.layout(),
        "app",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    let out = case.import("app");
    out.assert_refused(&[&big, "config", "16 MiB"], &[]);
    fast(&out);
    case.assert_nothing_left();

    // Each just under its limit, the image imports, in the same memory.
    let case = Case::new();
    let layers = two_layers();
    let entry = format!(r#"{{"created_by":"{}"}},"#, "x".repeat(1000));
    let history = entry.repeat(((16 << 20) - 4096) / entry.len());
    let config = format!(
        r#"{{"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}},"history":[{}]}}"#,
        layers[0].diff_id,
        layers[1].diff_id,
        history.trim_end_matches(',')
    );
    let config_digest = put_raw_blob(&case.layout(), config.as_bytes());
    let layer_json: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            descriptor(
                l.media_type,
                &put_raw_blob(&case.layout(), &l.blob),
                l.blob.len() as u64,
            )
        })
        .collect();
    let padding = "p".repeat((4 << 20) - 4096);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len() as u64),
        "layers": layer_json,
        "annotations": { "padding": padding },
    }))
    .unwrap();
    write_raw_manifest(&case.layout(), "app", &manifest);
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(case.layout().join("index.json")).unwrap()).unwrap();
    index["annotations"] = serde_json::json!({ "padding": padding });
    fs::write(
        case.layout().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let out = case.import("app");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

/// `{"0":"","1":"",...}`: a few bytes of JSON per entry, each of which
/// would parse to a map entry of over 100 bytes.
fn annotation_bomb(entries: usize) -> String {
    let mut text = String::from("{");
    for i in 0..entries {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!("\"{i:x}\":\"\""));
    }
    text.push('}');
    text
}

#[test]
fn json_that_would_parse_huge_is_read_small_or_refused() {
    // An image whose manifest's descriptors carry annotation bombs, listed
    // last in an index of 65,000 entries each with a one-entry annotations
    // map (a map allocates room for eleven entries at its first): what
    // import needs of them is a few strings.
    let case = Case::new();
    let layers = two_layers();
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
    }))
    .unwrap();
    let config_digest = put_raw_blob(&case.layout(), &config);
    let bomb = annotation_bomb(100_000);
    let layer_json: Vec<String> = layers
        .iter()
        .map(|l| {
            let d = put_raw_blob(&case.layout(), &l.blob);
            format!(
                r#"{{"mediaType":"{}","digest":"{d}","size":{},"annotations":{bomb}}}"#,
                l.media_type,
                l.blob.len()
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{},"annotations":{bomb}}},"layers":[{}]}}"#,
        config.len(),
        layer_json.join(",")
    );
    assert!(manifest.len() < 4 << 20, "{}", manifest.len());
    let manifest_digest = put_raw_blob(&case.layout(), manifest.as_bytes());
    let mut index = String::from(r#"{"schemaVersion":2,"manifests":["#);
    for _ in 0..65_000 {
        index.push_str(r#"{"mediaType":"m","digest":"d","size":0,"annotations":{"a":"b"}},"#);
    }
    index.push_str(&format!(
        r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"app"}}}}]}}"#,
        manifest.len()
    ));
    assert!(index.len() < 4 << 20, "{}", index.len());
    fs::write(case.layout().join("index.json"), index).unwrap();
    fs::write(
        case.layout().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let out = case.import("app");
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    // More layers than any image may have, and more diff ids: refused as
    // soon as the one too many is parsed.
    let case = Case::new();
    let one = Layer::plain(&tar_of(&[("app/run", "run")]));
    let mut many: Vec<Layer> = (0..1025)
        .map(|_| Layer {
            blob: one.blob.clone(),
            diff_id: one.diff_id.clone(),
            media_type: one.media_type,
        })
        .collect();
    let written = write_image(&case.layout(), "app", &many, "many");
    case.import("app")
        .assert_refused(&[&written.manifest, "manifest", "at most 1024"], &[]);
    case.assert_nothing_left();

    let case = Case::new();
    many.truncate(2);
    let ids: Vec<String> = (0..100_000).map(|i| format!("sha256:{i:064x}")).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": { "type": "layers", "diff_ids": ids },
    }))
    .unwrap();
    let written = write_image_with_config(&case.layout(), "app", &many, &config);
    case.import("app")
        .assert_refused(&[&written.config, "config", "at most 1024"], &[]);
    case.assert_nothing_left();
}

#[test]
fn blobs_longer_or_shorter_than_declared_are_refused() {
    fn spoiled(spoil: impl FnOnce(&Case, &Written)) -> (Case, Written) {
        let case = Case::new();
        // A layer of some size, so that a real apply is measured too.
        let data: String = (0..400_000u32)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let layers = vec![
            Layer::gzip(&tar_of(&[("etc/os-release", "ID=strata\n")])),
            Layer::plain(&tar_of(&[("app/data", &data), ("app/run", "run")])),
        ];
        let written = write_image(&case.layout(), "app", &layers, "sizes");
        spoil(&case, &written);
        (case, written)
    }
    let grow = |path: PathBuf| {
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 512]);
        fs::write(path, bytes).unwrap();
    };
    let shrink = |path: PathBuf| {
        let bytes = fs::read(&path).unwrap();
        fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    };

    let (case, written) = spoiled(|case, w| grow(case.blob(&w.layers[1])));
    case.import("app")
        .assert_refused(&[&written.layers[1], "layer 2 of 2", "longer than"], &[]);
    case.assert_nothing_left();

    let (case, written) = spoiled(|case, w| shrink(case.blob(&w.layers[1])));
    case.import("app")
        .assert_refused(&[&written.layers[1], "layer 2 of 2", "shorter than"], &[]);
    case.assert_nothing_left();

    let (case, written) = spoiled(|case, w| grow(case.blob(&w.config)));
    case.import("app")
        .assert_refused(&[&written.config, "config", "longer than"], &[]);
    case.assert_nothing_left();

    let (case, written) = spoiled(|case, w| shrink(case.blob(&w.manifest)));
    case.import("app")
        .assert_refused(&[&written.manifest, "manifest", "shorter than"], &[]);
    case.assert_nothing_left();

    // The same layout unspoiled imports, within the same memory bound.
    let (case, _) = spoiled(|_, _| {});
    let out = case.import("app");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    println!(
        "worst peak RSS of any import in this run so far: {:.1} MiB",
        WORST_PEAK_KIB.load(Ordering::SeqCst) as f64 / 1024.0
    );
}
