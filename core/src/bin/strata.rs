//! The `strata` command: drivers, status and layers from the shell.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use strata_core::archive::ChangeKind;
use strata_core::layers::DiffRecord;
use strata_core::oci::{ImageLocation, ImportProgress, NoProgress};
use strata_core::store::Store;
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

#[derive(Subcommand)]
enum SystemCommand {
    /// Space used by images, containers and layers, and what is reclaimable
    Df,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an image from an OCI layout directory, DIR or DIR:TAG
    Import {
        #[arg(value_name = "DIR[:TAG]")]
        location: String,
        /// A name for the image (repeatable); default: the tag
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
    },
    /// Write an image to an OCI layout directory, DIR or DIR:TAG
    Export {
        image: String,
        #[arg(value_name = "DIR[:TAG]")]
        location: String,
    },
    /// List the images
    List,
    /// An image's record, layers, relations, manifest and config
    Inspect { image: String },
    /// Delete an image and the layers nothing else uses
    Delete { image: String },
    /// Give an image more names (a name another image has moves here)
    Tag {
        image: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Take a name away from an image
    Untag { image: String, name: String },
}

#[derive(Subcommand)]
enum ContainerCommand {
    /// Make a container on an image and print its id
    Create {
        image: String,
        /// A name for the container
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Per-layer storage option, KEY=VALUE (repeatable)
        #[arg(long = "opt", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        storage_opts: Vec<(String, String)>,
        /// SELinux label for the container's mounts
        #[arg(long, value_name = "LABEL")]
        mount_label: Option<String>,
    },
    /// Mount the container's tree and print its path
    Mount {
        container: String,
        /// Mount option such as nodev (repeatable)
        #[arg(long = "option", short = 'o', value_name = "OPTION")]
        options: Vec<String>,
    },
    /// Release one mount, by container id, name or mount path
    Unmount { container: String },
    /// Delete the container and its layer
    Delete { container: String },
    /// List the containers
    List,
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
        /// Diff against this layer instead of the parent (generated); "" for an empty tree
        #[arg(long, value_name = "LAYER")]
        from: Option<String>,
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
        Command::Image(command) => image(cli, &config, command),
        Command::Container(command) => container(cli, &config, command),
        Command::Check { repair } => check(cli, &config, *repair),
        Command::Prune { dry_run } => prune(cli, &config, *dry_run),
        Command::System(SystemCommand::Df) => disk_usage(cli, &config),
    }
}

fn check(cli: &Cli, config: &Config, repair: bool) -> Result<ExitCode, CoreError> {
    let store = Store::open(config)?;
    let report = if repair {
        store.repair()?
    } else {
        store.check()?
    };
    // After a repair, what is left is what it could not fix.
    let left = if repair && !report.is_clean() {
        store.check()?
    } else {
        report.clone()
    };
    if cli.json {
        print_json(json!({
            "findings": report.findings,
            "repaired": repair,
            "left": left.findings,
        }));
    } else if report.is_clean() {
        println!("no inconsistencies found");
    } else {
        for f in &report.findings {
            let verb = if repair { "repaired" } else { "repair would" };
            println!(
                "{} {}: {} ({verb}: {})",
                f.kind, f.subject, f.problem, f.repair
            );
        }
        if repair {
            println!(
                "{} found, {} left",
                report.findings.len(),
                left.findings.len()
            );
        }
    }
    Ok(if left.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn prune(cli: &Cli, config: &Config, dry_run: bool) -> Result<ExitCode, CoreError> {
    let store = Store::open(config)?;
    let layers = store.prune(dry_run)?;
    if cli.json {
        print_json(json!({ "dry_run": dry_run, "layers": layers }));
    } else {
        for layer in &layers {
            println!("{layer}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn disk_usage(cli: &Cli, config: &Config) -> Result<ExitCode, CoreError> {
    let store = Store::open(config)?;
    let usage = store.disk_usage()?;
    if cli.json {
        print_json(json!(usage));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12}{:>8}{:>8}{:>14}{:>14}",
        "TYPE", "TOTAL", "UNUSED", "SIZE", "RECLAIMABLE"
    );
    for (name, line) in [
        ("Images", &usage.images),
        ("Containers", &usage.containers),
        ("Layers", &usage.layers),
    ] {
        println!(
            "{:<12}{:>8}{:>8}{:>14}{:>14}",
            name,
            line.count,
            line.unused,
            human_size(line.size),
            human_size(line.reclaimable)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Prints `lines` through one buffer: a listing of thousands of lines in
/// one write, not one each.
fn print_lines(lines: impl IntoIterator<Item = String>) -> Result<(), CoreError> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in lines {
        writeln!(out, "{line}").map_err(|e| CoreError::io("write", "standard output", e))?;
    }
    out.flush()
        .map_err(|e| CoreError::io("write", "standard output", e))
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
    let full = Store::open(config)?;
    let driver = full.driver();
    let store = &full.layers;
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
            let applied = full.apply_to_layer(id, &mut input)?;
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
        LayerCommand::Diff { id, from, output } => {
            let id = &store.resolve(driver, id)?;
            let from = match from.as_deref() {
                None => store.get(id)?.and_then(|r| r.parent),
                Some("") => None,
                Some(other) => Some(store.resolve(driver, other)?),
            };
            let from = from.as_deref();
            let source = match output {
                Some(path) => {
                    let partial = path.with_extension("partial");
                    let mut file = std::fs::File::create(&partial)
                        .map_err(|e| CoreError::io("create", &partial, e))?;
                    let source = store.diff_between(driver, from, id, &mut file);
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
                    let source = store.diff_between(driver, from, id, &mut out)?;
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
            full.delete_layer(&id)?
        }
        LayerCommand::List => {
            let mut ids = driver.list()?;
            ids.sort();
            if cli.json {
                print_json(json!(ids));
            } else {
                print_lines(ids)?;
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

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn image(cli: &Cli, config: &Config, command: &ImageCommand) -> Result<ExitCode, CoreError> {
    let store = Store::open(config)?;
    match command {
        ImageCommand::Import { location, names } => {
            let location = ImageLocation::parse(location);
            let bars;
            let progress: &dyn ImportProgress =
                if !cli.json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    bars = ProgressBars::default();
                    &bars
                } else {
                    &NoProgress
                };
            let report = strata_core::oci::import_image(&store, &location, names, progress)?;
            if cli.json {
                print_json(json!({
                    "id": report.image.id,
                    "names": report.image.names,
                    "top_layer": report.image.top_layer,
                    "created_layers": report.created_layers,
                    "reused_layers": report.reused_layers,
                    "already_present": report.already_present,
                }));
            } else {
                println!("{}", report.image.id);
            }
        }
        ImageCommand::Export { image, location } => {
            let location = ImageLocation::parse(location);
            let report = strata_core::oci::export_image(&store, image, &location)?;
            if cli.json {
                print_json(json!({
                    "image": report.image,
                    "manifest": report.manifest,
                    "config": report.config_digest,
                    "config_rewritten": report.config_rewritten,
                    "layers": report.layers.iter().map(|l| json!({
                        "layer": l.layer,
                        "blob": l.blob,
                        "diff_id": l.diff_id,
                        "original": l.original,
                    })).collect::<Vec<_>>(),
                }));
            } else {
                println!("{}", report.manifest.digest);
            }
        }
        ImageCommand::List if !cli.json => {
            let images = store.image_summaries()?;
            let header = format!("{:<12}  {:<6}  NAMES", "ID", "LAYERS");
            print_lines(
                std::iter::once(header).chain(images.iter().map(|(i, layers)| {
                    format!(
                        "{:<12}  {:<6}  {}",
                        short(&i.id),
                        layers,
                        i.names.join(", ")
                    )
                })),
            )?;
        }
        ImageCommand::List => {
            let (images, family) = store.image_family()?;
            print_json(json!(
                images
                    .iter()
                    .map(|i| json!({
                        "id": i.id,
                        "digest": i.digest,
                        "names": i.names,
                        "top_layer": i.top_layer,
                        "created": i.created,
                        "layers": family.layer_count(&i.id),
                        "parent": family.parent(&i.id),
                        "head": family.children(&i.id).next().is_none(),
                    }))
                    .collect::<Vec<_>>()
            ));
        }
        ImageCommand::Inspect { image } => {
            let record = store.image(image)?;
            let (parent, children) = store.image_relations(&record.id)?;
            let layers = store.image_layers(&record)?;
            let item = |key: &str| {
                store
                    .images
                    .big_data(&record.id, key)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            };
            print_json(json!({
                "id": record.id,
                "digest": record.digest,
                "names": record.names,
                "created": record.created,
                "top_layer": record.top_layer,
                "parent": parent,
                "children": children,
                "layers": layers.iter().map(|l| json!({
                    "id": l.id,
                    "diff": l.diff.clone().map(diff_json),
                })).collect::<Vec<_>>(),
                "big_data": record.big_data,
                "metadata": record.metadata,
                "manifest": item(strata_core::images::MANIFEST_KEY),
                "config": item(strata_core::images::CONFIG_KEY),
            }));
        }
        ImageCommand::Delete { image } => {
            let (deleted, layers) = store.delete_image(image)?;
            if cli.json {
                print_json(json!({ "id": deleted.id, "deleted_layers": layers }));
            } else {
                println!("{}", deleted.id);
            }
        }
        ImageCommand::Tag { image, names } => {
            let id = store.images.resolve(image)?;
            store.images.add_names(&id, names)?;
        }
        ImageCommand::Untag { image, name } => {
            let id = store.images.resolve(image)?;
            let record = store.images.get(&id)?;
            if !record.is_some_and(|r| r.names.contains(name)) {
                return Err(CoreError::Image(format!("image {id} has no name '{name}'")));
            }
            store.images.remove_name(&id, name)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn container(
    cli: &Cli,
    config: &Config,
    command: &ContainerCommand,
) -> Result<ExitCode, CoreError> {
    let store = Store::open(config)?;
    match command {
        ContainerCommand::Create {
            image,
            names,
            storage_opts,
            mount_label,
        } => {
            let options = CreateOptions {
                read_write: true,
                mount_label: mount_label.clone(),
                storage_opts: storage_opts.iter().cloned().collect(),
            };
            let record = store.create_container(image, names, &options)?;
            if cli.json {
                print_json(json!(record));
            } else {
                println!("{}", record.id);
            }
        }
        ContainerCommand::Mount { container, options } => {
            let options = MountOptions {
                options: options.clone(),
                ..Default::default()
            };
            let path = store.mount_container(container, &options)?;
            if cli.json {
                let record = store.container(container)?;
                print_json(json!({
                    "id": record.id,
                    "path": path,
                    "mounts": store.layers.mount_count(&record.layer)?,
                }));
            } else {
                println!("{}", path.display());
            }
        }
        ContainerCommand::Unmount { container } => {
            store.unmount_container(container)?;
        }
        ContainerCommand::Delete { container } => {
            let record = store.delete_container(container)?;
            if !cli.json {
                println!("{}", record.id);
            } else {
                print_json(json!(record));
            }
        }
        ContainerCommand::List => {
            let containers = store.containers.list()?;
            if cli.json {
                print_json(json!(containers));
            } else {
                let header = format!("{:<12}  {:<12}  NAMES", "ID", "IMAGE");
                print_lines(std::iter::once(header).chain(containers.iter().map(|c| {
                    format!(
                        "{:<12}  {:<12}  {}",
                        short(&c.id),
                        short(&c.image),
                        c.names.join(", ")
                    )
                })))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One progress bar per layer on standard error.
#[derive(Default)]
struct ProgressBars {
    multi: indicatif::MultiProgress,
    bars: std::sync::Mutex<Vec<Option<indicatif::ProgressBar>>>,
}

impl ImportProgress for ProgressBars {
    fn layer_started(&self, index: usize, count: usize, digest: &str, size: u64) {
        let bar = self.multi.add(indicatif::ProgressBar::new(size));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        let hex = digest.trim_start_matches("sha256:");
        bar.set_prefix(format!("layer {}/{count} {}", index + 1, short(hex)));
        let mut bars = self.bars.lock().expect("progress lock");
        if bars.len() <= index {
            bars.resize(index + 1, None);
        }
        bars[index] = Some(bar);
    }

    fn layer_advanced(&self, index: usize, bytes: u64) {
        if let Some(Some(bar)) = self.bars.lock().expect("progress lock").get(index) {
            bar.inc(bytes);
        }
    }

    fn layer_finished(&self, index: usize, reused: bool) {
        if let Some(Some(bar)) = self.bars.lock().expect("progress lock").get(index) {
            bar.finish_with_message(if reused { "already present" } else { "done" });
        }
    }
}
