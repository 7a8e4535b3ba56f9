//! `strata image ...`: importing, exporting, listing and naming images.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use strata_core::images::ImageRecord;
use strata_core::oci::{ImageLocation, ImportProgress, NoProgress};
use strata_core::store::{ImageRemoval, Store};
use strata_core::{Config, CoreError};

use crate::Cli;
use crate::output::{
    diff_json, human_size, outln, print_json, print_lines, print_list, short, utc,
};
use crate::progress::ProgressBars;

#[derive(Subcommand)]
pub(crate) enum ImageCommand {
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
    /// How the image was built, newest first: each step's layer, when, its
    /// size and the command that made it (from the image's config)
    History { image: String },
    /// Delete an image and the layers nothing else uses; named by one of
    /// several names, only that name goes (as podman's rmi)
    Delete {
        image: String,
        /// Delete the image whichever of its names is given
        #[arg(long, short)]
        force: bool,
    },
    /// Give an image more names (a name another image has moves here)
    Tag {
        image: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Take a name away from an image
    Untag { image: String, name: String },
}

pub(crate) fn run(
    cli: &Cli,
    config: &Config,
    command: &ImageCommand,
) -> Result<ExitCode, CoreError> {
    let store = Store::open(config)?;
    match command {
        ImageCommand::Import { location, names } => {
            let location = ImageLocation::from_transport(location)?;
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
                }))?;
            } else {
                outln!("{}", report.image.id);
            }
        }
        ImageCommand::Export { image, location } => {
            let location = ImageLocation::from_transport(location)?;
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
                }))?;
            } else {
                outln!("{}", report.manifest.digest());
            }
        }
        ImageCommand::List if !cli.json && cli.format.is_none() => {
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
            print_list(cli, || {
                images
                    .iter()
                    .map(|i| {
                        json!({
                            "id": i.id,
                            "digest": i.digest,
                            "names": i.names,
                            "top_layer": i.top_layer,
                            "created": i.created,
                            "layers": family.layer_count(&i.id),
                            "parent": family.parent(&i.id),
                            "head": family.children(&i.id).next().is_none(),
                        })
                    })
                    .collect::<Vec<_>>()
            })?;
        }
        ImageCommand::History { image } => {
            let record = store.image(image)?;
            let steps = history(&store, &record)?;
            if cli.json {
                print_json(json!(steps))?;
            } else {
                let header = format!(
                    "{:<12}  {:<20}  {:>9}  CREATED BY",
                    "LAYER", "CREATED", "SIZE"
                );
                print_lines(std::iter::once(header).chain(steps.iter().map(|step| {
                    format!(
                        "{:<12}  {:<20}  {:>9}  {}",
                        step["layer"].as_str().map_or("-", short),
                        step["created"].as_str().unwrap_or("-"),
                        step["size"].as_u64().map_or("-".into(), human_size),
                        crate::output::one_line(step["created_by"].as_str().unwrap_or(""), 80)
                    )
                })))?;
            }
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
            }))?;
        }
        ImageCommand::Delete { image, force } => match store.remove_image(image, *force)? {
            ImageRemoval::Untagged { id, name } => {
                if cli.json {
                    print_json(json!({ "id": id, "untagged": name }))?;
                } else {
                    outln!("untagged: {name}");
                }
            }
            ImageRemoval::Deleted(deleted, layers) => {
                if cli.json {
                    print_json(json!({ "id": deleted.id, "deleted_layers": layers }))?;
                } else {
                    outln!("{}", deleted.id);
                }
            }
        },
        ImageCommand::Tag { image, names } => {
            let id = store.images.resolve(image)?;
            store.images.add_names(&id, names)?;
        }
        ImageCommand::Untag { image, name } => {
            let id = store.images.resolve(image)?;
            let record = store.images.get(&id)?;
            if !record.is_some_and(|r| r.names.contains(name)) {
                return Err(CoreError::NotFound(format!(
                    "image {id} has no name '{name}'"
                )));
            }
            store.images.remove_name(&id, name)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The image's build steps, newest first: its config's history entries, each
/// non-empty one paired with the next layer up from the bottom; without a
/// history, one step a layer.
fn history(store: &Store, image: &ImageRecord) -> Result<Vec<serde_json::Value>, CoreError> {
    let layers = store.image_layers(image)?;
    let config: Option<serde_json::Value> = store
        .images
        .big_data(&image.id, strata_core::images::CONFIG_KEY)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let entries: Vec<serde_json::Value> = config
        .as_ref()
        .and_then(|c| c["history"].as_array().cloned())
        .unwrap_or_default();
    let layer_step = |layer: &strata_core::layers::LayerRecord,
                      entry: Option<&serde_json::Value>| {
        json!({
            "layer": layer.id,
            "created": entry
                .and_then(|e| e["created"].as_str().map(str::to_string))
                .unwrap_or_else(|| utc(layer.created)),
            "size": layer.diff.as_ref().map(|d| d.size),
            "created_by": entry.and_then(|e| e["created_by"].as_str()),
            "comment": entry.and_then(|e| e["comment"].as_str()),
        })
    };
    let mut steps = Vec::new();
    let mut below = layers.iter();
    for entry in &entries {
        if entry["empty_layer"].as_bool() == Some(true) {
            steps.push(json!({
                "layer": null,
                "created": entry["created"],
                "size": 0,
                "created_by": entry["created_by"],
                "comment": entry["comment"],
            }));
        } else if let Some(layer) = below.next() {
            steps.push(layer_step(layer, Some(entry)));
        }
    }
    // Layers the history does not account for (or no history at all).
    steps.extend(below.map(|layer| layer_step(layer, None)));
    steps.reverse();
    Ok(steps)
}
