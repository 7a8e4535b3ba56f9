//! Records an older strata kept as JSON files, moved into the database once,
//! at the first open.
//!
//! The old layout: `<driver>-layers/layers.json`,
//! `<driver>-images/images.json` with each image's big data items in
//! `<driver>-images/<id>/=<base64url(key)>`, `<driver>-containers/
//! containers.json`, each guarded by a `lock` file beside it, and import
//! tickets in `<driver>-imports/`.
//!
//! Steps: (1) the old locks are taken, so no old strata is half way through a
//! write; (2) one transaction inserts every record and the marker
//! `migrated-from-json`; (3) each JSON file is renamed to `<file>.migrated`
//! (kept for the operator to compare; nothing reads it again), old making
//! locks and tickets are removed. Killed before (2) commits: nothing changed,
//! the next open migrates. Killed after: the marker says the records are
//! in, and the next open does (3) only.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use rusqlite::{OptionalExtension, params};
use serde::Deserialize;

use crate::db::{Database, Kind, give_names};
use crate::error::{CoreError, Result};
use crate::fsutil::FileLock;
use crate::layers::{DiffRecord, MADE, MAKING};

const MARKER: &str = "migrated-from-json";

/// The flag the JSON version put on an import's layers: its ticket.
const OLD_IMPORT_FLAG: &str = "strata.import";

#[derive(Deserialize, Default)]
struct OldLayers {
    #[serde(default)]
    layers: BTreeMap<String, OldLayer>,
}

#[derive(Deserialize)]
struct OldLayer {
    id: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    incomplete: bool,
    #[serde(default)]
    diff: Option<DiffRecord>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    mount_label: Option<String>,
    #[serde(default)]
    metadata: Option<String>,
    #[serde(default)]
    flags: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct OldImages {
    #[serde(default)]
    images: BTreeMap<String, OldImage>,
}

#[derive(Deserialize)]
struct OldImage {
    id: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    top_layer: Option<String>,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    metadata: Option<String>,
    #[serde(default)]
    big_data: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct OldContainers {
    #[serde(default)]
    containers: BTreeMap<String, OldContainer>,
}

#[derive(Deserialize)]
struct OldContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    image: String,
    layer: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    metadata: Option<String>,
}

struct OldFiles {
    layers: PathBuf,
    images: PathBuf,
    containers: PathBuf,
}

impl OldFiles {
    fn of(graphroot: &Path, driver: &str) -> OldFiles {
        OldFiles {
            layers: graphroot.join(format!("{driver}-layers/layers.json")),
            images: graphroot.join(format!("{driver}-images/images.json")),
            containers: graphroot.join(format!("{driver}-containers/containers.json")),
        }
    }

    fn all(&self) -> [&Path; 3] {
        [&self.layers, &self.images, &self.containers]
    }
}

fn read_old<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            CoreError::Setting(format!(
                "{}: cannot migrate records an older strata wrote: {e}; the file is left as it is",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(CoreError::io("read", path, e)),
    }
}

/// Moves JSON records under `graphroot` into `db`, once. Returns whether
/// there were any.
pub(crate) fn migrate_json_records(graphroot: &Path, driver: &str, db: &Database) -> Result<bool> {
    let files = OldFiles::of(graphroot, driver);
    if !files.all().iter().any(|p| p.exists()) {
        return Ok(false);
    }
    // Step 1: the old locks, in the old order.
    let mut locks = Vec::new();
    for path in files.all() {
        if let Some(dir) = path.parent()
            && dir.exists()
        {
            let lock = dir.join("lock");
            locks.push(FileLock::exclusive(&lock).map_err(|e| CoreError::io("lock", &lock, e))?);
        }
    }
    let layers: OldLayers = read_old(&files.layers)?;
    let images: OldImages = read_old(&files.images)?;
    let containers: OldContainers = read_old(&files.containers)?;
    let images_dir = files.images.parent().expect("has a parent").to_path_buf();
    // Step 2: every record, in one transaction.
    let migrated = db.write("migrate the JSON records", |tx| {
        let done = tx
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row(params![MARKER], |r| r.get::<_, String>(0))
            .optional()?
            .is_some();
        if done {
            return Ok(false);
        }
        for layer in layers.layers.values() {
            let mut flags = layer.flags.clone();
            let ticket = flags
                .remove(OLD_IMPORT_FLAG)
                .and_then(|v| v.as_str().map(str::to_string));
            tx.execute(
                "INSERT OR REPLACE INTO layers (id, parent, created, state, owner, import_session, read_only, mount_label, metadata, flags, diff)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    layer.id,
                    layer.parent,
                    layer.created as i64,
                    // A layer the old version left being made: no live
                    // process owns it now, so the open removes it.
                    if layer.incomplete { MAKING } else { MADE },
                    ticket,
                    layer.read_only,
                    layer.mount_label,
                    layer.metadata,
                    (!flags.is_empty()).then(|| serde_json::to_string(&flags).expect("serialise")),
                    layer.diff.as_ref().map(|d| serde_json::to_string(d).expect("serialise")),
                ],
            )?;
            give_names(tx, Kind::Layer, &layer.id, &layer.names, true)?;
        }
        for image in images.images.values() {
            tx.execute(
                "INSERT OR REPLACE INTO images (id, digest, top_layer, created, metadata) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![image.id, image.digest, image.top_layer, image.created as i64, image.metadata],
            )?;
            give_names(tx, Kind::Image, &image.id, &image.names, true)?;
            for key in image.big_data.keys() {
                let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
                let path = images_dir.join(&image.id).join(format!("={name}"));
                let bytes = match fs::read(&path) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        tracing::warn!(image = %image.id, key = %key, error = %e, "a big data item the JSON records list is missing; not migrated");
                        continue;
                    }
                };
                tx.execute(
                    "INSERT OR REPLACE INTO big_data (image, key, digest, size, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        image.id,
                        key,
                        crate::archive::Sha256Digest::of(&bytes).to_string(),
                        bytes.len() as i64,
                        bytes
                    ],
                )?;
            }
        }
        for container in containers.containers.values() {
            tx.execute(
                "INSERT OR REPLACE INTO containers (id, image, layer, created, metadata) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    container.id,
                    container.image,
                    container.layer,
                    container.created as i64,
                    container.metadata
                ],
            )?;
            give_names(tx, Kind::Container, &container.id, &container.names, true)?;
        }
        // Depths, from the layers without a (recorded) parent up.
        tx.execute_batch(
            "WITH RECURSIVE chain(id, depth) AS (
                 SELECT id, 1 FROM layers
                  WHERE parent IS NULL OR parent NOT IN (SELECT id FROM layers)
                 UNION ALL
                 SELECT layers.id, chain.depth + 1 FROM layers JOIN chain ON layers.parent = chain.id
             )
             UPDATE layers SET depth = (SELECT depth FROM chain WHERE chain.id = layers.id)
              WHERE id IN (SELECT id FROM chain);",
        )?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
            params![MARKER, crate::db::now().to_string()],
        )?;
        Ok(true)
    })?;
    // Step 3: the old files out of the way.
    for path in files.all() {
        if path.exists() {
            let kept = path.with_extension("json.migrated");
            fs::rename(path, &kept).map_err(|e| CoreError::io("rename", path, e))?;
        }
    }
    let layers_dir = files.layers.parent().expect("has a parent");
    if let Ok(entries) = fs::read_dir(layers_dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".making") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let _ = fs::remove_dir_all(graphroot.join(format!("{driver}-imports")));
    if migrated {
        tracing::info!(
            layers = layers.layers.len(),
            images = images.images.len(),
            containers = containers.containers.len(),
            database = %db.path().display(),
            "moved the JSON records of an older strata into the database"
        );
    }
    drop(locks);
    Ok(migrated)
}
