//! Runs the conformance suite against a driver library.
//!
//! ```text
//! strata-conformance --driver PATH.so [--home DIR] [--backend NAME] [-o key=value]...
//!                    [--restart-option key=value]... [--umasks LIST]
//!                    [--filter TEXT] [--list] [--junit FILE]
//! ```
//!
//! For the process checks it runs itself again as a worker on the same home
//! (`--worker TASK...`, not for people).
//!
//! Exit status: 0 every check that ran passed; 1 a check failed; 2 the
//! suite could not run at all (the driver would not load or start, the
//! backend could not be set up, bad arguments), with `--junit` still
//! written, holding one failing case that says why.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
#[cfg(unix)]
use strata_conformance::backend::{LoopFilesystem, LoopFsKind, ScratchTmpfs, ZfsFusePool};
use strata_conformance::{Outcome, SuiteOptions, checks, run_with};
use strata_plugin_abi::{GraphDriver, InitArgs, KeyValues, PluginLibrary};

#[derive(Parser)]
#[command(
    name = "strata-conformance",
    version,
    about = "Certify a strata storage driver"
)]
struct Cli {
    /// The driver library (libstrata_driver_<name>.so)
    #[arg(long, value_name = "PATH", required_unless_present = "list")]
    driver: Option<PathBuf>,
    /// The driver's home; a fresh temporary directory if not given
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Driver option KEY=VALUE (repeatable)
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    options: Vec<(String, String)>,
    /// Only the checks whose name contains TEXT
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// List the checks and exit
    #[arg(long)]
    list: bool,
    /// Also write the results as JUnit XML to FILE
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Set up the backend the driver needs and put its home there, torn down
    /// afterwards: none, tmpfs, loop-ext4, loop-btrfs, loop-xfs, zfs-fuse;
    /// qemu-dm runs the whole suite in a VM booting Debian's kernel (which
    /// has device-mapper thin pools), the home on the VM's own ext4 disk
    #[arg(long, value_name = "NAME", default_value = "none")]
    backend: String,
    /// Another documented driver option to restart the driver with
    /// (KEY=VALUE, repeatable), for the restart/with-other-documented-options check
    #[arg(long = "restart-option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    restart_options: Vec<(String, String)>,
    /// The umasks every check runs under, comma-separated octal; "default"
    /// is the runner's own (Linux only: on Windows only "default")
    #[arg(long, value_name = "LIST", default_value = DEFAULT_UMASKS, value_parser = parse_umasks)]
    umasks: Umasks,
    /// Run one worker task on the home given with --home and exit
    #[arg(long, hide = true, num_args = 1.., allow_hyphen_values = true, value_name = "TASK")]
    worker: Option<Vec<String>>,
}

/// A check failed.
const EXIT_FAILED: u8 = 1;
/// The suite could not run (see the module's documentation).
const EXIT_NOT_RUN: u8 = 2;

/// The suite could not run: says why on stderr and in the JUnit file if
/// one was asked for, and exits [`EXIT_NOT_RUN`].
fn not_run(cli: &Cli, why: String) -> ExitCode {
    eprintln!("strata-conformance: {why}");
    if let Some(path) = &cli.junit {
        let name = format!(
            "strata-conformance {}",
            cli.driver
                .as_deref()
                .unwrap_or(std::path::Path::new("?"))
                .display()
        );
        if let Err(e) = std::fs::write(path, strata_conformance::Report::junit_not_run(&name, &why))
        {
            eprintln!("strata-conformance: write {}: {e}", path.display());
        }
    }
    ExitCode::from(EXIT_NOT_RUN)
}

#[derive(Clone, Debug)]
struct Umasks(Vec<Option<u32>>);

/// Every check runs under the process's umask and the two extremes: a
/// driver that lets the umask decide modes fails one of them.
#[cfg(unix)]
const DEFAULT_UMASKS: &str = "default,000,077";
/// Windows has no umask.
#[cfg(not(unix))]
const DEFAULT_UMASKS: &str = "default";

fn parse_umasks(text: &str) -> Result<Umasks, String> {
    text.split(',')
        .map(|m| match m.trim() {
            "default" => Ok(None),
            _ if cfg!(not(unix)) => Err("a umask exists only on Linux: give 'default'".into()),
            octal => u32::from_str_radix(octal, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .map(Some)
                .ok_or_else(|| format!("'{octal}' is not an octal umask or 'default'")),
        })
        .collect::<Result<_, _>>()
        .map(Umasks)
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.list {
        let checks = checks::all();
        let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for check in checks {
            println!("{:<width$}  {}", check.name, check.contract);
        }
        return ExitCode::SUCCESS;
    }
    let library_path = cli
        .driver
        .clone()
        .expect("clap requires --driver without --list");
    if let Some(task) = &cli.worker {
        return run_worker(&cli, &library_path, task);
    }
    #[cfg(unix)]
    if cli.backend == "qemu-dm" {
        return run_in_vm(&cli);
    }
    // The backend lives until the end of main, after the driver's cleanup.
    let backend = match Backend::set_up(&cli.backend) {
        Ok(backend) => backend,
        Err(e) => return not_run(&cli, format!("backend {}: {e}", cli.backend)),
    };
    let scratch = match (&cli.home, backend.path()) {
        (Some(_), _) | (None, Some(_)) => None,
        (None, None) => match tempfile::tempdir() {
            Ok(dir) => Some(dir),
            Err(e) => return not_run(&cli, format!("cannot make a scratch home: {e}")),
        },
    };
    let base = cli
        .home
        .clone()
        .or_else(|| backend.path().map(PathBuf::from))
        .unwrap_or_else(|| scratch.as_ref().expect("made above").path().to_path_buf());
    let args = InitArgs {
        home: base.join("home"),
        run_root: base.join("run"),
        options: cli.options.iter().cloned().collect::<KeyValues>(),
        ..Default::default()
    };
    for dir in [&args.home, &args.run_root] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return not_run(&cli, format!("create {}: {e}", dir.display()));
        }
    }
    let library = match PluginLibrary::open(&library_path) {
        Ok(library) => library,
        Err(e) => {
            return not_run(
                &cli,
                format!("the driver would not load, so no check ran: {e}"),
            );
        }
    };
    let driver = match library.init(&args) {
        Ok(driver) => driver,
        Err(e) => {
            return not_run(
                &cli,
                format!(
                    "the driver in {} cannot run here, so no check ran: {e}",
                    library_path.display()
                ),
            );
        }
    };
    // Inside the VM the backend is a plain directory on the VM's disk; the
    // line names the backend the user asked for.
    let backend_label = std::env::var(VM_BACKEND_LABEL).unwrap_or_else(|_| cli.backend.clone());
    println!(
        "driver {} from {} (backend: {backend_label})",
        driver.name(),
        library_path.display(),
    );
    let library = std::sync::Arc::new(library);
    let (reopen_library, reopen_args) = (library.clone(), args.clone());
    let (reopen_with_library, reopen_with_args) = (library.clone(), args.clone());
    let worker_exe = std::env::current_exe();
    let (worker_library, worker_base) = (library_path.clone(), base.clone());
    let worker_options = cli.options.clone();
    let options = SuiteOptions {
        home: Some(args.home.clone()),
        run_root: Some(args.run_root.clone()),
        filter: cli.filter.clone(),
        reopen: Some(Box::new(move || {
            reopen_library
                .init(&reopen_args)
                .map(|d| Box::new(d) as Box<dyn GraphDriver>)
                .map_err(driver_error)
        })),
        reopen_with: Some(Box::new(move |options: &KeyValues| {
            let mut args = reopen_with_args.clone();
            args.options = options.clone();
            reopen_with_library
                .init(&args)
                .map(|d| Box::new(d) as Box<dyn GraphDriver>)
                .map_err(driver_error)
        })),
        driver_options: args.options.clone(),
        restart_options: cli.restart_options.clone(),
        worker: worker_exe
            .ok()
            .map(|exe| -> strata_conformance::SpawnWorker {
                Box::new(move |task: &[String]| {
                    let mut command = std::process::Command::new(&exe);
                    command.arg("--driver").arg(&worker_library);
                    command.arg("--home").arg(&worker_base);
                    for (key, value) in &worker_options {
                        command.arg("-o").arg(format!("{key}={value}"));
                    }
                    command.arg("--worker").args(task);
                    command
                })
            }),
        umasks: cli.umasks.0.clone(),
    };
    let report = run_with(&driver, &options, |result| {
        let ms = result.duration.as_secs_f64() * 1000.0;
        match &result.outcome {
            Outcome::Passed => println!("passed   {} ({ms:.0} ms)", result.label()),
            Outcome::Failed(why) => println!("FAILED   {}: {why}", result.label()),
            Outcome::Skipped(why) => println!("skipped  {}: {why}", result.label()),
        }
    });
    let _ = driver.cleanup();
    drop(driver);
    println!("{}", report.summary());
    if let Some(path) = &cli.junit
        && let Err(e) = std::fs::write(
            path,
            report.junit(&format!("strata-conformance {}", library_path.display())),
        )
    {
        eprintln!("strata-conformance: write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    // Torn down after the driver's cleanup (a no-op where it owns nothing).
    #[cfg_attr(not(unix), allow(clippy::drop_non_drop))]
    drop(backend);
    if report.results.is_empty() {
        eprintln!(
            "strata-conformance: no check matched{}",
            cli.filter
                .as_deref()
                .map(|f| format!(" --filter {f:?}"))
                .unwrap_or_default()
        );
        ExitCode::from(EXIT_NOT_RUN)
    } else if report.failed() > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Set in the VM: the backend the user asked for, for the first line.
const VM_BACKEND_LABEL: &str = "STRATA_CONFORMANCE_BACKEND";

/// `--backend qemu-dm`: this runner again, with the same arguments but the
/// backend `none`, inside a VM (testkit's `vm`, `scripts/in-vm.sh`). The
/// VM's lines are this run's lines and its exit status this run's; a VM
/// that could not start or run exits with a failure saying so.
#[cfg(unix)]
fn run_in_vm(cli: &Cli) -> ExitCode {
    if let Some(why) = strata_testkit::vm::unavailable() {
        return not_run(cli, format!("backend qemu-dm cannot run here: {why}"));
    }
    if cli.home.is_some() {
        return not_run(
            cli,
            "backend qemu-dm: the home is on the VM's own disk; --home cannot be given".to_string(),
        );
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return not_run(cli, format!("backend qemu-dm: find this runner: {e}"));
        }
    };
    // The same arguments, with the backend replaced and paths made
    // absolute: the guest sees the host's root at the same paths, but its
    // own /tmp and /var/tmp.
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut raw = std::env::args_os().skip(1);
    let absolute = |path: std::ffi::OsString| -> std::ffi::OsString {
        std::path::absolute(&path).map_or(path, |p| p.into_os_string())
    };
    while let Some(arg) = raw.next() {
        match arg.to_str() {
            Some("--backend") => {
                raw.next();
                args.extend(["--backend".into(), "none".into()]);
            }
            Some(text) if text.starts_with("--backend=") => args.push("--backend=none".into()),
            Some(flag @ ("--driver" | "--junit")) => {
                args.push(flag.into());
                if let Some(path) = raw.next() {
                    args.push(absolute(path));
                }
            }
            _ => args.push(arg),
        }
    }
    let runner = match strata_testkit::vm::InVm::new() {
        Ok(runner) => runner,
        Err(e) => {
            return not_run(cli, format!("backend qemu-dm: write the VM runner: {e}"));
        }
    };
    let mut command = runner.command(&exe, &args);
    command.env(VM_BACKEND_LABEL, "qemu-dm");
    // The guest has no udev: the devicemapper crate must not wait for it.
    command.env("DM_DISABLE_UDEV", "1");
    if let Some(parent) = cli
        .junit
        .as_ref()
        .and_then(|p| std::path::absolute(p).ok())
        .and_then(|p| p.parent().map(PathBuf::from))
    {
        command.env("STRATA_VM_SHARE", parent);
    }
    match command.status() {
        Ok(status) => match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(125) => not_run(
                cli,
                "backend qemu-dm: the VM did not run the suite".to_string(),
            ),
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => ExitCode::FAILURE,
        },
        Err(e) => not_run(cli, format!("backend qemu-dm: start the VM: {e}")),
    }
}

/// The driver's own error when it refused to start, else the load error as
/// one.
fn driver_error(e: strata_plugin_abi::LoadError) -> strata_plugin_abi::DriverError {
    e.driver_error()
        .cloned()
        .unwrap_or_else(|| strata_plugin_abi::DriverError::other(e.to_string()))
}

/// Worker mode: the driver started on the same home as the suite's, one
/// task run, the driver cleaned up; failures on stderr and exit code 1.
fn run_worker(cli: &Cli, library_path: &std::path::Path, task: &[String]) -> ExitCode {
    let Some(base) = &cli.home else {
        eprintln!("strata-conformance worker: --home is required");
        return ExitCode::FAILURE;
    };
    let args = InitArgs {
        home: base.join("home"),
        run_root: base.join("run"),
        options: cli.options.iter().cloned().collect::<KeyValues>(),
        ..Default::default()
    };
    let driver = match PluginLibrary::open(library_path).and_then(|library| library.init(&args)) {
        Ok(driver) => driver,
        Err(e) => {
            eprintln!("strata-conformance worker: start the driver: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = strata_conformance::worker::run_task(&driver, task);
    let cleaned = driver.cleanup();
    match (result, cleaned) {
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        (Err(e), _) => {
            eprintln!("strata-conformance worker {task:?}: {e}");
            ExitCode::FAILURE
        }
        (Ok(()), Err(e)) => {
            eprintln!("strata-conformance worker {task:?}: cleanup: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A backend the runner set up for the driver, torn down when dropped.
enum Backend {
    None,
    #[cfg(unix)]
    Tmpfs(ScratchTmpfs),
    #[cfg(unix)]
    Loop(LoopFilesystem),
    #[cfg(unix)]
    Zfs(ZfsFusePool),
}

impl Backend {
    /// Elsewhere the driver's home is a plain directory: every backend the
    /// runner can make (tmpfs, loop devices, zfs-fuse, the VM) is Linux's.
    #[cfg(not(unix))]
    fn set_up(name: &str) -> std::io::Result<Backend> {
        match name {
            "none" => Ok(Backend::None),
            other => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("backend '{other}' exists only on Linux; on this platform only 'none'"),
            )),
        }
    }

    #[cfg(unix)]
    fn set_up(name: &str) -> std::io::Result<Backend> {
        Ok(match name {
            "none" => Backend::None,
            "tmpfs" => Backend::Tmpfs(ScratchTmpfs::new(4 << 30)?),
            "loop-ext4" => Backend::Loop(LoopFilesystem::new(LoopFsKind::Ext4, 4 << 30)?),
            "loop-btrfs" => Backend::Loop(LoopFilesystem::new(LoopFsKind::Btrfs, 4 << 30)?),
            "loop-xfs" => Backend::Loop(LoopFilesystem::new(LoopFsKind::Xfs, 4 << 30)?),
            "zfs-fuse" => Backend::Zfs(ZfsFusePool::new(2 << 30)?),
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "unknown backend '{other}' (known: none, tmpfs, loop-ext4, loop-btrfs, loop-xfs, zfs-fuse, qemu-dm)"
                    ),
                ));
            }
        })
    }

    fn path(&self) -> Option<&std::path::Path> {
        match self {
            Backend::None => None,
            #[cfg(unix)]
            Backend::Tmpfs(fs) => Some(fs.path()),
            #[cfg(unix)]
            Backend::Loop(fs) => Some(fs.path()),
            #[cfg(unix)]
            Backend::Zfs(pool) => Some(pool.path()),
        }
    }
}
