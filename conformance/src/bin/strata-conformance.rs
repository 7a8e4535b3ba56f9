//! Runs the conformance suite against a driver library.
//!
//! ```text
//! strata-conformance --driver PATH.so [--home DIR] [--backend NAME] [-o key=value]...
//!                    [--filter TEXT] [--list] [--junit FILE]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
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
    /// afterwards: none, tmpfs, loop-ext4, loop-btrfs, loop-xfs, zfs-fuse
    #[arg(long, value_name = "NAME", default_value = "none")]
    backend: String,
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
        for check in checks::all() {
            println!("{}", check.name);
        }
        return ExitCode::SUCCESS;
    }
    let library_path = cli.driver.expect("clap requires --driver without --list");
    // The backend lives until the end of main, after the driver's cleanup.
    let backend = match Backend::set_up(&cli.backend) {
        Ok(backend) => backend,
        Err(e) => {
            eprintln!("strata-conformance: backend {}: {e}", cli.backend);
            return ExitCode::FAILURE;
        }
    };
    let scratch = match (&cli.home, backend.path()) {
        (Some(_), _) | (None, Some(_)) => None,
        (None, None) => match tempfile::tempdir() {
            Ok(dir) => Some(dir),
            Err(e) => {
                eprintln!("strata-conformance: cannot make a scratch home: {e}");
                return ExitCode::FAILURE;
            }
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
        options: cli.options.into_iter().collect::<KeyValues>(),
        ..Default::default()
    };
    for dir in [&args.home, &args.run_root] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("strata-conformance: create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    let library = match PluginLibrary::open(&library_path) {
        Ok(library) => library,
        Err(e) => {
            eprintln!("strata-conformance: {e}");
            return ExitCode::FAILURE;
        }
    };
    let driver = match library.init(&args) {
        Ok(driver) => driver,
        Err(e) => {
            eprintln!("strata-conformance: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "driver {} from {} (backend: {})",
        driver.name(),
        library_path.display(),
        cli.backend
    );
    let reopen_args = args.clone();
    let options = SuiteOptions {
        home: Some(args.home.clone()),
        filter: cli.filter,
        reopen: Some(Box::new(move || {
            library
                .init(&reopen_args)
                .map(|d| Box::new(d) as Box<dyn GraphDriver>)
                .map_err(|e| e.to_string())
        })),
    };
    let report = run_with(&driver, &options, |result| {
        let ms = result.duration.as_secs_f64() * 1000.0;
        match &result.outcome {
            Outcome::Passed => println!("passed   {} ({ms:.0} ms)", result.name),
            Outcome::Failed(why) => println!("FAILED   {}: {why}", result.name),
            Outcome::Skipped(why) => println!("skipped  {}: {why}", result.name),
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
    drop(backend);
    if report.failed() > 0 || report.results.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A backend the runner set up for the driver, torn down when dropped.
enum Backend {
    None,
    Tmpfs(ScratchTmpfs),
    Loop(LoopFilesystem),
    Zfs(ZfsFusePool),
}

impl Backend {
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
                        "unknown backend '{other}' (known: none, tmpfs, loop-ext4, loop-btrfs, loop-xfs, zfs-fuse)"
                    ),
                ));
            }
        })
    }

    fn path(&self) -> Option<&std::path::Path> {
        match self {
            Backend::None => None,
            Backend::Tmpfs(fs) => Some(fs.path()),
            Backend::Loop(fs) => Some(fs.path()),
            Backend::Zfs(pool) => Some(pool.path()),
        }
    }
}
