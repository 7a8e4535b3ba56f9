//! The Snapshots service over a strata store.
//!
//! Every operation runs on a blocking thread, under the snapshotter lock
//! (`<graphroot>/<driver>-snapshots.lock`, an exclusive `flock`) when it
//! changes anything: snapshot keys are checked and taken in one go even with
//! several snapshotter processes on one store. The `strata` command and
//! other processes share the store as issue 8's guarantees say: the layer
//! operations below are the store's own, each crash-safe on its own.
//!
//! ## Each change, and why a kill at any instruction is safe
//!
//! - **Prepare / View**: one layer creation
//!   ([`LayerStore::create_layer`](strata_core::layers::LayerStore)) whose
//!   name and flags (the snapshot's key, kind and labels) are written with
//!   the layer's row; a kill before it is marked made leaves a row of a
//!   dead session, which the next open of the store removes with its
//!   driver layer. Either the snapshot exists whole or not at all.
//! - **Commit**: one transaction ([`LayerStore::revise`]) renames the
//!   layer from the key to the name, marks it committed and read-only, and
//!   sets its labels. Before it: still the active snapshot; after it:
//!   committed. (For a driver that cannot describe its mounts, the held
//!   mount is released after the transaction; a kill in between leaves one
//!   count too many, which the layer's removal clears.)
//! - **Update**: one transaction.
//! - **Remove**: the store's layer deletion (marked in one transaction,
//!   finished by whoever finds it if the process dies), after a check that
//!   no snapshot stands on it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use containerd_snapshots::Info;
use containerd_snapshots::api::types::Mount;
use strata_core::fsutil::FileLock;
use strata_core::layers::{LayerRecord, NewLayer, Revision};
use strata_core::{CoreError, CreateOptions, LayerId, OWNER_FLAG, Store};

use crate::error::SnapshotError;
use crate::filter::{self, Fields};
use crate::record::{self, SnapshotFacts, SnapshotKind};

mod mounts;
mod usage;

type Result<T> = std::result::Result<T, SnapshotError>;

/// containerd's snapshots, kept as layers of one strata store.
pub struct Snapshots {
    store: Store,
    lock_path: PathBuf,
}

/// A snapshot found by key: its layer and its facts.
pub(crate) struct Found {
    record: LayerRecord,
    facts: SnapshotFacts,
}

impl Snapshots {
    /// Serves the snapshots of `store` (its graph root and driver).
    pub fn new(store: Store) -> Snapshots {
        let lock_path = store
            .graphroot()
            .join(format!("{}-snapshots.lock", store.driver().name()));
        Snapshots { store, lock_path }
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> Result<FileLock> {
        FileLock::exclusive(&self.lock_path).map_err(|e| {
            SnapshotError::store("take the snapshotter lock")(CoreError::io(
                "lock",
                &self.lock_path,
                e,
            ))
        })
    }

    fn find(&self, key: &str, operation: &str) -> Result<Found> {
        let missing =
            || SnapshotError::NotFound(format!("{operation} snapshot {key:?}: not found"));
        if key.is_empty() {
            return Err(missing());
        }
        let id = match self.store.layers.resolve(&record::layer_name(key)) {
            Ok(id) => id,
            Err(CoreError::NotFound(_)) => return Err(missing()),
            Err(e) => {
                return Err(SnapshotError::store(format!(
                    "{operation} snapshot {key:?}"
                ))(e));
            }
        };
        let record = self
            .store
            .layers
            .get(&id)
            .map_err(SnapshotError::store(format!(
                "{operation} snapshot {key:?}"
            )))?
            .ok_or_else(missing)?;
        // A layer still being made is no snapshot yet: a Prepare killed
        // half way left it (every Prepare holds the snapshotter lock, so no
        // live one is under way when a key is checked), and the next open
        // of the store removes it. Its key is free meanwhile.
        if record.incomplete {
            return Err(missing());
        }
        let facts = SnapshotFacts::of(&record).ok_or_else(missing)?;
        Ok(Found { record, facts })
    }

    fn key_of(record: &LayerRecord) -> String {
        record
            .names
            .iter()
            .find_map(|n| record::key_of(n))
            .unwrap_or_default()
            .to_string()
    }

    fn parent_name(&self, record: &LayerRecord) -> Result<String> {
        let Some(parent) = &record.parent else {
            return Ok(String::new());
        };
        let parent = self
            .store
            .layers
            .get(parent)
            .map_err(SnapshotError::store("read a snapshot's parent"))?;
        Ok(parent.map(|p| Self::key_of(&p)).unwrap_or_default())
    }

    fn info_of(&self, found: &Found) -> Result<Info> {
        Ok(found.facts.info(
            Self::key_of(&found.record),
            self.parent_name(&found.record)?,
        ))
    }

    /// Stat: the snapshot's info.
    pub fn stat(&self, key: &str) -> Result<Info> {
        let found = self.find(key, "stat")?;
        self.info_of(&found)
    }

    /// Prepare (`kind` active) or View (`kind` view): a new snapshot on
    /// committed `parent` (empty: none), and its mounts.
    pub fn create(
        &self,
        kind: SnapshotKind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let operation = if kind == SnapshotKind::View {
            "view"
        } else {
            "prepare"
        };
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument(format!(
                "{operation}: the snapshot key is empty"
            )));
        }
        record::check_labels(&labels)
            .map_err(|why| SnapshotError::InvalidArgument(format!("{operation} {key:?}: {why}")))?;
        let _lock = self.lock()?;
        match self.find(key, operation) {
            Ok(_) => {
                return Err(SnapshotError::AlreadyExists(format!(
                    "{operation} snapshot {key:?}: a snapshot with that key exists"
                )));
            }
            Err(SnapshotError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let parent_id = if parent.is_empty() {
            None
        } else {
            let found = self.find(parent, &format!("{operation} {key:?} on parent"))?;
            if found.facts.kind != SnapshotKind::Committed {
                return Err(SnapshotError::InvalidArgument(format!(
                    "{operation} snapshot {key:?}: parent {parent:?} is {}, not a committed snapshot",
                    found.facts.kind.as_str()
                )));
            }
            Some(found.record.id)
        };
        let context = format!("{operation} snapshot {key:?}");
        // Shared: no layer is deleted while one is built on it.
        let building = self
            .store
            .hold_layers()
            .map_err(SnapshotError::store(&context))?;
        let facts = SnapshotFacts::new(kind, labels);
        let new = NewLayer {
            parent: parent_id,
            // Views too: their tree is made read-only by the mount's `ro`,
            // and a driver needs no second kind of layer for them.
            options: CreateOptions {
                read_write: true,
                ..Default::default()
            },
            names: vec![record::layer_name(key)],
            flags: [
                (record::FLAG.to_string(), facts.to_flag()),
                (OWNER_FLAG.to_string(), record::owner(key).into()),
            ]
            .into(),
            ..NewLayer::new(LayerId::random().map_err(SnapshotError::store(&context))?)
        };
        let record = self
            .store
            .layers
            .create_layer(&new, None)
            .map_err(SnapshotError::store(&context))?;
        // Let go before anything below may delete (which waits for every
        // builder to finish, this one included).
        drop(building);
        tracing::debug!(key, layer = %record.id, kind = kind.as_str(), "snapshot made");
        let id = record.id.clone();
        let found = Found { record, facts };
        let mounts = match self.described(&found, &context) {
            Ok(Some(mounts)) => Ok(mounts),
            Ok(None) => self.held_bind(found, &context),
            Err(e) => Err(e),
        };
        match mounts {
            Ok(mounts) => Ok(mounts),
            Err(e) => {
                // containerd drops a snapshot whose Prepare failed: so does
                // the store, or the key would stay taken by a snapshot
                // nobody knows of.
                if let Err(undo) = self.store.delete_owned_layer(&id, &record::owner(key)) {
                    tracing::warn!(key, layer = %id, error = %undo, "could not remove a snapshot whose mounts failed");
                }
                Err(e)
            }
        }
    }

    /// Commit: active snapshot `key` becomes committed snapshot `name`.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let context = format!("commit snapshot {key:?} as {name:?}");
        if name.is_empty() {
            return Err(SnapshotError::InvalidArgument(format!(
                "{context}: the name is empty"
            )));
        }
        record::check_labels(&labels)
            .map_err(|why| SnapshotError::InvalidArgument(format!("{context}: {why}")))?;
        let _lock = self.lock()?;
        let found = self.find(key, "commit")?;
        if found.facts.kind != SnapshotKind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "{context}: it is a {} snapshot; only an active one can be committed",
                found.facts.kind.as_str()
            )));
        }
        match self.find(name, "commit") {
            Ok(_) => {
                return Err(SnapshotError::AlreadyExists(format!(
                    "{context}: a snapshot named {name:?} exists"
                )));
            }
            Err(SnapshotError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let committed = SnapshotFacts::new(SnapshotKind::Committed, labels);
        self.store
            .layers
            .revise(&found.record.id, "commit", |record| {
                let mut revision = Revision::of(record);
                revision.names.retain(|n| record::key_of(n).is_none());
                revision.names.push(record::layer_name(name));
                revision
                    .flags
                    .insert(record::FLAG.into(), committed.to_flag());
                revision
                    .flags
                    .insert(OWNER_FLAG.into(), record::owner(name).into());
                revision.read_only = true;
                Ok(revision)
            })
            .map_err(SnapshotError::store(&context))?;
        self.release_held_mount(&found, &context);
        tracing::debug!(key, name, layer = %found.record.id, "snapshot committed");
        Ok(())
    }

    /// Remove: the snapshot and its layer; refused while a snapshot stands
    /// on it.
    pub fn remove(&self, key: &str) -> Result<()> {
        let context = format!("remove snapshot {key:?}");
        let _lock = self.lock()?;
        let found = self.find(key, "remove")?;
        let parents = self
            .store
            .layers
            .parents()
            .map_err(SnapshotError::store(&context))?;
        let mut children: Vec<&LayerId> = parents
            .iter()
            .filter(|(_, parent)| parent.as_ref() == Some(&found.record.id))
            .map(|(child, _)| child)
            .collect();
        if !children.is_empty() {
            children.sort();
            return Err(SnapshotError::FailedPrecondition(format!(
                "{context}: cannot remove a snapshot that others are made on (layers {})",
                children
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.release_held_mount(&found, &context);
        let owner = found
            .record
            .flags
            .get(OWNER_FLAG)
            .and_then(|o| o.as_str())
            .map(String::from)
            .unwrap_or_else(|| record::owner(key));
        self.store
            .delete_owned_layer(&found.record.id, &owner)
            .map_err(SnapshotError::store(&context))?;
        tracing::debug!(key, layer = %found.record.id, "snapshot removed");
        Ok(())
    }

    /// Update: the snapshot's labels, as `paths` says (`labels` replaces
    /// them all, `labels.KEY` one of them; no paths: all of them).
    pub fn update(&self, info: Info, paths: Option<Vec<String>>) -> Result<Info> {
        let key = info.name.clone();
        let context = format!("update snapshot {key:?}");
        let _lock = self.lock()?;
        let found = self.find(&key, "update")?;
        let mut facts = found.facts.clone();
        let given: BTreeMap<String, String> = info.labels.into_iter().collect();
        let paths = paths.unwrap_or_default();
        if paths.is_empty() {
            facts.labels = given;
        } else {
            for path in &paths {
                if path == "labels" {
                    facts.labels = given.clone();
                } else if let Some(label) = path.strip_prefix("labels.") {
                    match given.get(label) {
                        Some(value) => {
                            facts.labels.insert(label.to_string(), value.clone());
                        }
                        None => {
                            facts.labels.remove(label);
                        }
                    }
                } else {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "{context}: cannot update field {path:?} (only labels and labels.KEY)"
                    )));
                }
            }
        }
        record::check_labels(&facts.labels)
            .map_err(|why| SnapshotError::InvalidArgument(format!("{context}: {why}")))?;
        facts.updated_ns = record::now_ns().max(facts.updated_ns + 1);
        let record = self
            .store
            .layers
            .revise(&found.record.id, "update", |record| {
                let mut revision = Revision::of(record);
                revision.flags.insert(record::FLAG.into(), facts.to_flag());
                Ok(revision)
            })
            .map_err(SnapshotError::store(&context))?;
        self.info_of(&Found { record, facts })
    }

    /// List: every snapshot that passes `filters`.
    pub fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = filter::parse_all(filters).map_err(SnapshotError::InvalidArgument)?;
        let records = self
            .store
            .layers
            .list()
            .map_err(SnapshotError::store("list snapshots"))?;
        let keys: BTreeMap<&LayerId, String> =
            records.iter().map(|r| (&r.id, Self::key_of(r))).collect();
        let mut infos = Vec::new();
        for record in records.iter().filter(|r| !r.incomplete) {
            let Some(facts) = SnapshotFacts::of(record) else {
                continue;
            };
            let parent = record
                .parent
                .as_ref()
                .and_then(|p| keys.get(p).cloned())
                .unwrap_or_default();
            let info = facts.info(Self::key_of(record), parent);
            if filter::admits(&filters, &InfoFields(&info)) {
                infos.push(info);
            }
        }
        Ok(infos)
    }

    /// Cleanup: finishes or undoes what killed processes left part done.
    pub fn cleanup(&self) -> Result<()> {
        let done = self
            .store
            .layers
            .recover()
            .map_err(SnapshotError::store("clean up"))?;
        for what in done {
            tracing::info!("cleanup: {what}");
        }
        Ok(())
    }
}

struct InfoFields<'a>(&'a Info);

impl Fields for InfoFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let info = self.0;
        match path {
            [one] if one == "name" => Some(info.name.clone()).filter(|n| !n.is_empty()),
            [one] if one == "parent" => Some(info.parent.clone()).filter(|p| !p.is_empty()),
            [one] if one == "kind" => Some(
                match info.kind {
                    containerd_snapshots::Kind::Active => "active",
                    containerd_snapshots::Kind::View => "view",
                    containerd_snapshots::Kind::Committed => "committed",
                    containerd_snapshots::Kind::Unknown => "unknown",
                }
                .to_string(),
            ),
            [labels, rest @ ..] if labels == "labels" && !rest.is_empty() => {
                info.labels.get(&rest.join(".")).cloned()
            }
            _ => None,
        }
    }
}
