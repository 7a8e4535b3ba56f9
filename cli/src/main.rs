//! The `strata` command: drivers, status, layers, images and containers from
//! the shell. One module per command group; this file parses the command
//! line and hands each group its arguments.

#![forbid(unsafe_code)]

mod container;
mod generate;
mod image;
mod layer;
mod output;
mod progress;
mod system;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata_core::{Config, CoreError, Overrides};

use container::ContainerCommand;
use image::ImageCommand;
use layer::LayerCommand;
use system::SystemCommand;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Container image and root filesystem storage in copy-on-write layers"
)]
pub(crate) struct Cli {
    /// Graph root: where layers and images are stored [env: STRATA_ROOT]
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Run root: state that does not survive a reboot [env: STRATA_RUN_ROOT]
    #[arg(long, global = true, value_name = "DIR")]
    run_root: Option<PathBuf>,
    /// Storage driver; "" chooses the first that works here [env: STRATA_DRIVER]
    #[arg(long, global = true, value_name = "NAME")]
    driver: Option<String>,
    /// Configuration file [env: STRATA_CONFIG; default: /etc/strata/storage.toml if present;
    /// on Windows C:\ProgramData\strata\storage.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// For a list: only these fields of each item, tab-separated, one item a
    /// line (a field list, as ps -o takes; the names --json gives)
    #[arg(long, global = true, value_name = "FIELD,...")]
    pub(crate) format: Option<String>,
    /// error, warn, info, debug or trace
    #[arg(long, global = true, env = "STRATA_LOG_LEVEL", default_value = "warn")]
    log_level: tracing::Level,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every driver library found: path, ABI version, whether it works here
    Drivers,
    /// The driver in use, why it was chosen, and what it reports
    Status,
    /// Create, mount, list and remove layers
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Import, export, list, inspect, tag and delete images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Containers: a read-write layer on an image
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Find every inconsistency between records, driver and files (exit 1 if any)
    Check {
        /// Fix what is found, keeping every image that is still whole
        #[arg(long)]
        repair: bool,
    },
    /// Delete the layers no image or container uses, and what dead processes left
    Prune {
        /// Only list what would be deleted
        #[arg(long)]
        dry_run: bool,
    },
    /// The store as a whole
    #[command(subcommand)]
    System(SystemCommand),
}

/// Opens FILE, or standard input for `-`.
pub(crate) fn open_input(path: &std::path::Path) -> Result<Box<dyn std::io::Read>, CoreError> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    std::fs::File::open(path)
        .map(|f| Box::new(f) as Box<dyn std::io::Read>)
        .map_err(|e| CoreError::io("open", path, e))
}

pub(crate) fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colour only for a person at a terminal, and never when NO_COLOR is
    // set (https://no-color.org): a log file or a CI log gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_max_level(cli.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(true)
        .init();
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("strata: {err}");
            ExitCode::from(output::EXIT_ERROR)
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode, CoreError> {
    // What needs no store (nor a configuration that loads).
    match &cli.command {
        Command::System(SystemCommand::Completions { shell }) => {
            generate::completions(*shell)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::System(SystemCommand::Man { dir }) => {
            generate::man_pages(dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let config = Config::load(&Overrides {
        config: cli.config.clone(),
        driver: cli.driver.clone(),
        graphroot: cli.root.clone(),
        runroot: cli.run_root.clone(),
    })?;
    match &cli.command {
        Command::Drivers => system::drivers(cli, &config),
        Command::Status => system::status(cli, &config),
        Command::Layer(command) => layer::run(cli, &config, command),
        Command::Image(command) => image::run(cli, &config, command),
        Command::Container(command) => container::run(cli, &config, command),
        Command::Check { repair } => system::check(cli, &config, *repair),
        Command::Prune { dry_run } => system::prune(cli, &config, *dry_run),
        Command::System(SystemCommand::Df) => system::disk_usage(cli, &config),
        Command::System(SystemCommand::Completions { .. } | SystemCommand::Man { .. }) => {
            unreachable!("answered above, without a store")
        }
    }
}
