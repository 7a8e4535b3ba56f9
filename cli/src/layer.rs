//! `strata layer ...`: layers by hand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;
use strata_core::archive::ChangeKind;
use strata_core::store::Store;
use strata_core::{Config, CoreError, LayerId};
use strata_plugin_abi::{CreateOptions, MountOptions};

use crate::output::{
    diff_json, human_size, key_values_json, outln, print_json, print_lines, print_list, short, utc,
};
use crate::{Cli, open_input, parse_key_value};

#[derive(Subcommand)]
pub(crate) enum LayerCommand {
    /// Create a layer, empty or as a child of a parent
    Create(CreateArgs),
    /// Make a layer's tree available and print its path
    Mount {
        id: String,
        /// Mount option the driver takes, such as ro (repeatable); one it
        /// cannot honour is refused, never ignored
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
    /// List the layers: id, parent, names, created, size, mounts
    List {
        /// Only the ids, one a line
        #[arg(short, long)]
        quiet: bool,
    },
    /// A layer's record, diff, mounts, children and users, as JSON (as
    /// podman's inspect prints)
    Inspect { id: String },
    /// Exit 0 if the layer exists, 1 if not
    Exists { id: String },
}

#[derive(Args)]
pub(crate) struct CreateArgs {
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

pub(crate) fn run(
    cli: &Cli,
    config: &Config,
    command: &LayerCommand,
) -> Result<ExitCode, CoreError> {
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
                .map(|p| store.resolve(p))
                .transpose()?;
            let mut record = store.create(
                &LayerId::new(args.id.as_str())?,
                parent.as_ref(),
                &options,
                input.as_mut().map(|r| r as &mut dyn std::io::Read),
            )?;
            if !args.names.is_empty() {
                record = store.set_names(&record.id, &args.names)?;
            }
            if cli.json {
                print_json(
                    json!({ "id": record.id, "parent": record.parent, "diff": record.diff.map(diff_json) }),
                )?;
            } else {
                outln!("{}", record.id);
            }
        }
        LayerCommand::Apply { id, file } => {
            let id = &store.resolve(id)?;
            let mut input = open_input(file)?;
            let applied = full.apply_to_layer(id, &mut input)?;
            if cli.json {
                print_json(json!({ "id": id, "diff": diff_json(applied) }))?;
            } else {
                outln!(
                    "{} {} bytes ({} compressed)",
                    applied.uncompressed_digest,
                    applied.size,
                    applied.compression
                );
            }
        }
        LayerCommand::Changes { id } => {
            let id = &store.resolve(id)?;
            let changes = store.changes(id)?;
            let letter = |k: ChangeKind| match k {
                ChangeKind::Add => "A",
                ChangeKind::Modify => "M",
                ChangeKind::Delete => "D",
            };
            if cli.json {
                print_json(json!(changes
                    .iter()
                    .map(|c| json!({ "path": format!("/{}", c.path.display()), "kind": letter(c.kind) }))
                    .collect::<Vec<_>>()))?;
            } else {
                for change in changes {
                    outln!("{} /{}", letter(change.kind), change.path.display());
                }
            }
        }
        LayerCommand::Diff { id, from, output } => {
            let id = &store.resolve(id)?;
            let from = match from.as_deref() {
                None => store.get(id)?.and_then(|r| r.parent),
                Some("") => None,
                Some(other) => Some(store.resolve(other)?),
            };
            let from = from.as_ref();
            let source = match output {
                Some(path) => {
                    let partial = path.with_extension("partial");
                    let mut file = std::fs::File::create(&partial)
                        .map_err(|e| CoreError::io("create", &partial, e))?;
                    let source = store.diff_between(from, id, &mut file);
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
                    let source = store.diff_between(from, id, &mut out)?;
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
            let id = &store.resolve(id)?;
            let path = store.mount(id, &options)?;
            if cli.json {
                print_json(json!({ "id": id, "path": path, "mounts": store.mount_count(id)? }))?;
            } else {
                outln!("{}", path.display());
            }
        }
        LayerCommand::Unmount { id } => {
            // By id, name, prefix or mount path.
            let reference = if id.starts_with('/') {
                id.clone()
            } else {
                store.resolve(id)?.into_string()
            };
            store.unmount(&reference)?;
        }
        LayerCommand::Delete { id } => {
            let id = store.resolve(id)?;
            full.delete_layer(&id)?
        }
        LayerCommand::List { quiet } => {
            let mut rows = layer_rows(&full)?;
            rows.sort_by(|a, b| a.id.cmp(&b.id));
            if *quiet {
                print_lines(rows.into_iter().map(|r| r.id))?;
            } else if !print_list(cli, || rows.iter().map(LayerRow::json).collect())? {
                let header = format!(
                    "{:<12}  {:<12}  {:<20}  {:>9}  {:>6}  NAMES",
                    "ID", "PARENT", "CREATED", "SIZE", "MOUNTS"
                );
                print_lines(std::iter::once(header).chain(rows.iter().map(|r| {
                    format!(
                        "{:<12}  {:<12}  {:<20}  {:>9}  {:>6}  {}",
                        short(&r.id),
                        r.record
                            .as_ref()
                            .and_then(|l| l.parent.as_deref())
                            .map_or("-", short),
                        r.record.as_ref().map_or("-".into(), |l| utc(l.created)),
                        r.record
                            .as_ref()
                            .and_then(|l| l.diff.as_ref())
                            .map_or("-".into(), |d| human_size(d.size)),
                        r.mounts.as_ref().map_or(0, |m| m.count),
                        r.record
                            .as_ref()
                            .map_or(String::new(), |l| l.names.join(", "))
                    )
                })))?;
            }
        }
        LayerCommand::Inspect { id } => {
            let id = store.resolve(id)?;
            let row = layer_rows(&full)?
                .into_iter()
                .find(|r| r.id == id.as_str())
                .ok_or_else(|| CoreError::NotFound(format!("layer {id}: no such layer")))?;
            let mut value = row.json();
            let parents = store.parents()?;
            let mut children: Vec<&str> = parents
                .iter()
                .filter(|(_, parent)| parent.as_ref() == Some(&id))
                .map(|(child, _)| child.as_str())
                .collect();
            children.sort();
            value["children"] = json!(children);
            value["users"] = json!(full.layer_users(&id)?);
            value["driver_metadata"] = key_values_json(&driver.metadata(&id)?);
            print_json(value)?;
        }
        LayerCommand::Exists { id } => {
            let exists = store.resolve(id).is_ok();
            if cli.json {
                print_json(json!({ "id": id, "exists": exists }))?;
            } else {
                outln!("{exists}");
            }
            if !exists {
                return Ok(ExitCode::from(crate::output::EXIT_NO));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One layer as listings show it: its record (none for a layer the driver
/// has that the records do not) and its mount count.
struct LayerRow {
    id: String,
    record: Option<strata_core::layers::LayerRecord>,
    mounts: Option<strata_core::mounts::MountRecord>,
}

impl LayerRow {
    fn json(&self) -> serde_json::Value {
        let record = self.record.as_ref();
        json!({
            "id": self.id,
            "parent": record.and_then(|r| r.parent.clone()),
            "names": record.map(|r| r.names.clone()).unwrap_or_default(),
            "created": record.map(|r| r.created),
            "read_only": record.map(|r| r.read_only),
            "incomplete": record.is_some_and(|r| r.incomplete),
            "size": record.and_then(|r| r.diff.as_ref()).map(|d| d.size),
            "diff": record.and_then(|r| r.diff.clone()).map(diff_json),
            "mount_label": record.and_then(|r| r.mount_label.clone()),
            "metadata": record.and_then(|r| r.metadata.clone()),
            "mounts": self.mounts.as_ref().map_or(0, |m| m.count),
            "mount_path": self.mounts.as_ref().map(|m| m.path.clone()),
            "recorded": record.is_some(),
        })
    }
}

/// Every layer: the records', and any the driver has that they do not.
fn layer_rows(store: &Store) -> Result<Vec<LayerRow>, CoreError> {
    let mut mounts = store.layers.mounts()?;
    let mut rows: Vec<LayerRow> = store
        .layers
        .list()?
        .into_iter()
        .map(|record| LayerRow {
            id: record.id.to_string(),
            mounts: mounts.remove(record.id.as_str()),
            record: Some(record),
        })
        .collect();
    let known: std::collections::HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    for id in store.driver().list()? {
        if !known.contains(&id) {
            rows.push(LayerRow {
                mounts: mounts.remove(&id),
                id,
                record: None,
            });
        }
    }
    Ok(rows)
}
