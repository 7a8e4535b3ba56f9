//! Runs the conformance suite against a driver library.
//!
//! ```text
//! strata-conformance --driver target/debug/libstrata_driver_vfs.so [--home DIR] [-o key=value]... [--filter TEXT] [--list]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use strata_conformance::{Outcome, SuiteOptions, checks, run_with};
use strata_plugin_abi::{InitArgs, KeyValues, load_driver};

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
    let library = cli.driver.expect("clap requires --driver without --list");
    let scratch = match &cli.home {
        Some(_) => None,
        None => match tempfile::tempdir() {
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
    let driver = match load_driver(&library, &args) {
        Ok(driver) => driver,
        Err(e) => {
            eprintln!("strata-conformance: {e}");
            return ExitCode::FAILURE;
        }
    };
    use strata_plugin_abi::GraphDriver;
    println!("driver {} from {}", driver.name(), library.display());
    let options = SuiteOptions {
        home: Some(args.home.clone()),
        filter: cli.filter,
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
    println!("{}", report.summary());
    if report.failed() > 0 || report.results.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
