//! The `strata` command: drivers, status and layers from the shell.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use strata_core::archive::ChangeKind;
use strata_core::layers::{DiffRecord, LayerStore};
use strata_core::{Config, CoreError, Overrides, open_driver, survey};
use strata_plugin_abi::{CreateOptions, GraphDriver, KeyValues, MountOptions};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Container image and root filesystem storage in copy-on-write layers"
)]
struct Cli {
    /// Graph root: where layers and images are stored [env: STRATA_ROOT]
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Run root: state that does not survive a reboot [env: STRATA_RUN_ROOT]
    #[arg(long, global = true, value_name = "DIR")]
    run_root: Option<PathBuf>,
    /// Storage driver; "" chooses the first that works here [env: STRATA_DRIVER]
    #[arg(long, global = true, value_name = "NAME")]
    driver: Option<String>,
    /// Configuration file [env: STRATA_CONFIG; default: /etc/strata/storage.toml if present]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON
    #[arg(long, global = true)]
    json: bool,
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
}

#[derive(Subcommand)]
enum LayerCommand {
    /// Create a layer, empty or as a child of a parent
    Create(CreateArgs),
    /// Make a layer's tree available and print its path
    Mount {
        id: String,
        /// Mount option such as ro or nodev (repeatable)
        #[arg(long = "option", short = 'o', value_name = "OPTION")]
        options: Vec<String>,
    },
    /// Release what mount made available
    Unmount { id: String },
    /// Remove a layer and its contents (refused while it has children)
    Delete { id: String },
    /// Apply a layer tar (plain, gzip or zstd) to an existing layer
    Apply {
        id: String,
        /// The tar file, or - for standard input
        file: PathBuf,
    },
    /// What the layer changed against its parent (A added, M modified, D deleted)
    Changes { id: String },
    /// Write the layer's diff against its parent as a tar: the exact original
    /// stream for a layer made from one
    Diff {
        id: String,
        /// Where to write; standard output if not given
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List the layers
    List,
    /// Exit 0 if the layer exists, 1 if not
    Exists { id: String },
}

#[derive(Args)]
struct CreateArgs {
    id: String,
    /// The layer to start from
    #[arg(long, value_name = "ID")]
    parent: Option<String>,
    /// An image layer that is not written to once made
    #[arg(long)]
    read_only: bool,
    /// SELinux label for the layer's mounts
    #[arg(long, value_name = "LABEL")]
    mount_label: Option<String>,
    /// Per-layer storage option, KEY=VALUE (repeatable), such as size=10G
    #[arg(long = "opt", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    storage_opts: Vec<(String, String)>,
    /// A layer tar (plain, gzip or zstd) to fill the layer from; - for standard input
    #[arg(long, value_name = "FILE")]
    diff: Option<PathBuf>,
    /// A name to find the layer by (repeatable); a name another layer has moves here
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
}

/// Opens FILE, or standard input for `-`.
fn open_input(path: &std::path::Path) -> Result<Box<dyn std::io::Read>, CoreError> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    std::fs::File::open(path)
        .map(|f| Box::new(f) as Box<dyn std::io::Read>)
        .map_err(|e| CoreError::io("open", path, e))
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_max_level(cli.log_level)
        .with_writer(std::io::stderr)
        .with_target(true)
        .init();
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("strata: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode, CoreError> {
    let config = Config::load(&Overrides {
        config: cli.config.clone(),
        driver: cli.driver.clone(),
        graphroot: cli.root.clone(),
        runroot: cli.run_root.clone(),
    })?;
    match &cli.command {
        Command::Drivers => drivers(cli, &config),
        Command::Status => status(cli, &config),
        Command::Layer(command) => layer(cli, &config, command),
    }
}

fn print_json(value: serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("JSON values serialise")
    );
}

fn drivers(cli: &Cli, config: &Config) -> Result<ExitCode, CoreError> {
    let reports = survey(config)?;
    if cli.json {
        print_json(json!({
            "host_abi_version": strata_plugin_abi::HOST_ABI_VERSION,
            "drivers": reports,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    if reports.is_empty() {
        println!(
            "no driver libraries found (searched {})",
            strata_core::discovery::describe(&strata_core::discovery::search_dirs(config))
        );
        return Ok(ExitCode::SUCCESS);
    }
    for r in &reports {
        println!("{}", r.name);
        println!("  path:        {}", r.path.display());
        println!("  found via:   {}", r.origin);
        if let Some(abi) = &r.abi_version {
            println!("  ABI:         strata-plugin-abi {abi}");
        }
        if let Some(description) = &r.description {
            println!("  description: {description}");
        }
        match &r.detail {
            Some(detail) => println!("  here:        {}: {detail}", r.state),
            None => println!("  here:        {}", r.state),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(cli: &Cli, config: &Config) -> Result<ExitCode, CoreError> {
    let selected = open_driver(config)?;
    let driver = &selected.driver;
    let status = driver.status();
    let capabilities = driver.capabilities().names();
    let layers = driver.list()?.len();
    if cli.json {
        print_json(json!({
            "driver": selected.name,
            "library": selected.library,
            "reason": selected.reason,
            "passed_over": selected.passed_over,
            "graphroot": config.graphroot,
            "runroot": config.runroot,
            "config_file": config.source,
            "capabilities": capabilities,
            "layers": layers,
            "status": key_values_json(&status),
        }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("driver:       {}", selected.name);
    println!("chosen:       {}", selected.reason);
    for p in &selected.passed_over {
        println!("  passed over {}: {}", p.driver, p.reason);
    }
    println!("library:      {}", selected.library.display());
    println!("graph root:   {}", config.graphroot.display());
    println!("run root:     {}", config.runroot.display());
    match &config.source {
        Some(path) => println!("config file:  {}", path.display()),
        None => println!("config file:  none (built-in defaults)"),
    }
    println!(
        "capabilities: {}",
        if capabilities.is_empty() {
            "none".to_string()
        } else {
            capabilities.join(", ")
        }
    );
    println!("layers:       {layers}");
    for (key, value) in status.iter() {
        println!("{key}: {value}");
    }
    Ok(ExitCode::SUCCESS)
}

fn key_values_json(values: &KeyValues) -> serde_json::Value {
    values
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn layer(cli: &Cli, config: &Config, command: &LayerCommand) -> Result<ExitCode, CoreError> {
    let selected = open_driver(config)?;
    let driver = &selected.driver;
    let store = LayerStore::open(&config.graphroot, &config.runroot, driver)?;
    match command {
        LayerCommand::Create(args) => {
            let options = CreateOptions {
                read_write: !args.read_only,
                mount_label: args.mount_label.clone(),
                storage_opts: args.storage_opts.iter().cloned().collect(),
            };
            let mut input = args.diff.as_deref().map(open_input).transpose()?;
            let parent = args
                .parent
                .as_deref()
                .map(|p| store.resolve(driver, p))
                .transpose()?;
            let mut record = store.create(
                driver,
                &args.id,
                parent.as_deref(),
                &options,
                input.as_mut().map(|r| r as &mut dyn std::io::Read),
            )?;
            if !args.names.is_empty() {
                record = store.set_names(&record.id, &args.names)?;
            }
            if cli.json {
                print_json(
                    json!({ "id": record.id, "parent": record.parent, "diff": record.diff.map(diff_json) }),
                );
            } else {
                println!("{}", record.id);
            }
        }
        LayerCommand::Apply { id, file } => {
            let id = &store.resolve(driver, id)?;
            let mut input = open_input(file)?;
            let applied = store.apply(driver, id, &mut input)?;
            if cli.json {
                print_json(json!({ "id": id, "diff": diff_json(applied) }));
            } else {
                println!(
                    "{} {} bytes ({} compressed)",
                    applied.uncompressed_digest, applied.size, applied.compression
                );
            }
        }
        LayerCommand::Changes { id } => {
            let id = &store.resolve(driver, id)?;
            let changes = store.changes(driver, id)?;
            let letter = |k: ChangeKind| match k {
                ChangeKind::Add => "A",
                ChangeKind::Modify => "M",
                ChangeKind::Delete => "D",
            };
            if cli.json {
                print_json(json!(changes
                    .iter()
                    .map(|c| json!({ "path": format!("/{}", c.path.display()), "kind": letter(c.kind) }))
                    .collect::<Vec<_>>()));
            } else {
                for change in changes {
                    println!("{} /{}", letter(change.kind), change.path.display());
                }
            }
        }
        LayerCommand::Diff { id, output } => {
            let id = &store.resolve(driver, id)?;
            let source = match output {
                Some(path) => {
                    let partial = path.with_extension("partial");
                    let mut file = std::fs::File::create(&partial)
                        .map_err(|e| CoreError::io("create", &partial, e))?;
                    let source = store.diff(driver, id, &mut file);
                    match source {
                        Ok(source) => {
                            std::fs::rename(&partial, path)
                                .map_err(|e| CoreError::io("write", path, e))?;
                            source
                        }
                        Err(e) => {
                            let _ = std::fs::remove_file(&partial);
                            return Err(e);
                        }
                    }
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut out = std::io::BufWriter::new(stdout.lock());
                    let source = store.diff(driver, id, &mut out)?;
                    use std::io::Write;
                    out.flush()
                        .map_err(|e| CoreError::io("write", "standard output", e))?;
                    source
                }
            };
            tracing::info!(layer = %id, ?source, "diff written");
        }
        LayerCommand::Mount { id, options } => {
            let options = MountOptions {
                options: options.clone(),
                ..Default::default()
            };
            let id = &store.resolve(driver, id)?;
            let path = store.mount(driver, id, &options)?;
            if cli.json {
                print_json(json!({ "id": id, "path": path, "mounts": store.mount_count(id)? }));
            } else {
                println!("{}", path.display());
            }
        }
        LayerCommand::Unmount { id } => {
            // By id, name, prefix or mount path.
            let reference = if id.starts_with('/') {
                id.clone()
            } else {
                store.resolve(driver, id)?
            };
            store.unmount(driver, &reference)?;
        }
        LayerCommand::Delete { id } => {
            let id = store.resolve(driver, id)?;
            store.delete(driver, &id)?
        }
        LayerCommand::List => {
            let mut ids = driver.list()?;
            ids.sort();
            if cli.json {
                print_json(json!(ids));
            } else {
                for id in ids {
                    println!("{id}");
                }
            }
        }
        LayerCommand::Exists { id } => {
            let exists = store.resolve(driver, id).is_ok();
            if cli.json {
                print_json(json!({ "id": id, "exists": exists }));
            } else {
                println!("{exists}");
            }
            if !exists {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn diff_json(diff: DiffRecord) -> serde_json::Value {
    json!({
        "compressed_digest": diff.compressed_digest,
        "compressed_size": diff.compressed_size,
        "uncompressed_digest": diff.uncompressed_digest,
        "uncompressed_size": diff.uncompressed_size,
        "compression": diff.compression,
        "size": diff.size,
    })
}
