//! `strata container ...`: a read-write layer on an image.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use strata_core::containers::ContainerRecord;
use strata_core::store::Store;
use strata_core::{Config, CoreError};
use strata_plugin_abi::{CreateOptions, MountOptions};

use crate::output::{outln, print_json, print_lines, print_list, short, utc};
use crate::{Cli, parse_key_value};

#[derive(Subcommand)]
pub(crate) enum ContainerCommand {
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
        /// Mount option the driver takes, such as ro (repeatable); one it
        /// cannot honour is refused, never ignored
        #[arg(long = "option", short = 'o', value_name = "OPTION")]
        options: Vec<String>,
    },
    /// Release one mount, by container id, name or mount path
    Unmount { container: String },
    /// Delete the container and its layer
    Delete { container: String },
    /// List the containers: id, image, created, mounts, names
    List {
        /// Only the ids, one a line
        #[arg(short, long)]
        quiet: bool,
    },
    /// A container's record, its image, its layer and its mounts, as JSON
    Inspect { container: String },
}

pub(crate) fn run(
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
                print_json(json!(record))?;
            } else {
                outln!("{}", record.id);
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
                }))?;
            } else {
                outln!("{}", path.display());
            }
        }
        ContainerCommand::Unmount { container } => {
            store.unmount_container(container)?;
        }
        ContainerCommand::Delete { container } => {
            let record = store.delete_container(container)?;
            if !cli.json {
                outln!("{}", record.id);
            } else {
                print_json(json!(record))?;
            }
        }
        ContainerCommand::List { quiet } => {
            let containers = store.containers.list()?;
            let mounts = store.layers.mounts()?;
            let count = |c: &ContainerRecord| mounts.get(c.layer.as_str()).map_or(0, |m| m.count);
            let objects = || {
                containers
                    .iter()
                    .map(|c| {
                        let mut value = json!(c);
                        value["mounts"] = json!(count(c));
                        value["mount_path"] =
                            json!(mounts.get(c.layer.as_str()).map(|m| m.path.clone()));
                        value
                    })
                    .collect()
            };
            if *quiet {
                print_lines(containers.iter().map(|c| c.id.to_string()))?;
            } else if !print_list(cli, objects)? {
                let header = format!(
                    "{:<12}  {:<12}  {:<20}  {:>6}  NAMES",
                    "ID", "IMAGE", "CREATED", "MOUNTS"
                );
                print_lines(std::iter::once(header).chain(containers.iter().map(|c| {
                    format!(
                        "{:<12}  {:<12}  {:<20}  {:>6}  {}",
                        short(&c.id),
                        short(&c.image),
                        utc(c.created),
                        count(c),
                        c.names.join(", ")
                    )
                })))?;
            }
        }
        ContainerCommand::Inspect { container } => {
            let record = store.container(container)?;
            let layer = store.layers.get(&record.layer)?;
            let mounts = store.layers.mounts()?;
            let mount = mounts.get(record.layer.as_str());
            let image_names = store
                .images
                .get(&record.image)?
                .map(|i| i.names)
                .unwrap_or_default();
            let mut value = json!(record);
            value["image_names"] = json!(image_names);
            value["layer_parent"] = json!(layer.as_ref().and_then(|l| l.parent.clone()));
            value["mount_label"] = json!(layer.as_ref().and_then(|l| l.mount_label.clone()));
            value["mounts"] = json!(mount.map_or(0, |m| m.count));
            value["mount_path"] = json!(mount.map(|m| m.path.clone()));
            value["mount_options"] = json!(mount.and_then(|m| m.options.clone()));
            print_json(value)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
