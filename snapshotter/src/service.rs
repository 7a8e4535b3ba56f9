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
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Usage};
use strata_core::fsutil::FileLock;
use strata_core::layers::{LayerRecord, NewLayer, Revision};
use strata_core::{
    CoreError, CreateOptions, DriverErrorKind, LayerId, MountOptions, OWNER_FLAG, Store,
};
use strata_driver_kit::mounts::read_only_asked;

use crate::error::SnapshotError;
use crate::filter::{self, Fields};
use crate::record::{self, SnapshotFacts, SnapshotKind};
use crate::usage::disk_usage;

type Result<T> = std::result::Result<T, SnapshotError>;

/// containerd's snapshots, kept as layers of one strata store.
pub struct Snapshots {
    store: Store,
    lock_path: PathBuf,
}

/// A snapshot found by key: its layer and its facts.
struct Found {
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
        match self.mounts_of(Found { record, facts }, &context) {
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

    /// Mounts: how to mount the snapshot's tree.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let found = self.find(key, "mounts of")?;
        if !self.describes_mounts(&found)? {
            // The fallback may take a mount and record it: under the lock,
            // with the snapshot found again.
            let _lock = self.lock()?;
            let found = self.find(key, "mounts of")?;
            return self.mounts_of(found, &format!("mounts of snapshot {key:?}"));
        }
        self.mounts_of(found, &format!("mounts of snapshot {key:?}"))
    }

    fn mount_options(facts: &SnapshotFacts) -> MountOptions {
        MountOptions {
            options: if facts.kind.is_writable() {
                Vec::new()
            } else {
                vec!["ro".into()]
            },
            ..Default::default()
        }
    }

    fn describes_mounts(&self, found: &Found) -> Result<bool> {
        match self
            .store
            .driver()
            .describe_mount(found.record.id.as_str(), &Self::mount_options(&found.facts))
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == DriverErrorKind::NotSupported => Ok(false),
            Err(e) => Err(SnapshotError::store("describe a snapshot's mount")(
                e.into(),
            )),
        }
    }

    /// The snapshot's mounts: the driver's description, or a bind of the
    /// store's counted mount of the layer for a driver that gives none
    /// (taken once, held until Commit or Remove; the caller holds the lock).
    fn mounts_of(&self, found: Found, context: &str) -> Result<Vec<Mount>> {
        let driver = self.store.driver();
        let options = Self::mount_options(&found.facts);
        match driver.describe_mount(found.record.id.as_str(), &options) {
            Ok(specs) => return Ok(specs.into_iter().map(to_mount).collect()),
            Err(e) if e.kind() == DriverErrorKind::NotSupported => {}
            Err(e) => return Err(SnapshotError::store(context)(e.into())),
        }
        let read_only = read_only_asked(found.record.id.as_str(), &options.options)
            .map_err(|e| SnapshotError::store(context)(e.into()))?;
        let id = &found.record.id;
        if let Some(path) = &found.facts.held_mount {
            let count = self
                .store
                .layers
                .mount_count(id)
                .map_err(SnapshotError::store(context))?;
            if count > 0 {
                return Ok(vec![bind(path, read_only)]);
            }
        }
        // The store's mount comes first, then the record of it: a kill in
        // between leaves a count without a record, which the layer's removal
        // clears; the reverse would give containerd an unmounted directory.
        let path = self
            .store
            .layers
            .mount(id, &MountOptions::default())
            .map_err(SnapshotError::store(context))?;
        self.store
            .layers
            .revise(id, "hold a mount of", |record| {
                // From the record as it is now, not as it was read.
                let mut facts = SnapshotFacts::of(record).unwrap_or_else(|| found.facts.clone());
                facts.held_mount = Some(path.clone());
                let mut revision = Revision::of(record);
                revision.flags.insert(record::FLAG.into(), facts.to_flag());
                Ok(revision)
            })
            .map_err(SnapshotError::store(context))?;
        Ok(vec![bind(&path, read_only)])
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

    fn release_held_mount(&self, found: &Found, context: &str) {
        if found.facts.held_mount.is_none() {
            return;
        }
        match self.store.layers.unmount(found.record.id.as_str()) {
            Ok(_) | Err(CoreError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(layer = %found.record.id, error = %e, "{context}: could not release the held mount");
            }
        }
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

    /// Usage: the bytes and inodes the snapshot's own changes take (the
    /// driver's native diff where it keeps one, else the layer's tree).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let found = self.find(key, "usage of")?;
        let context = format!("usage of snapshot {key:?}");
        let id = found.record.id.as_str();
        let driver = self.store.driver();
        let native = driver
            .native_diff(id)
            .map_err(|e| SnapshotError::store(&context)(e.into()))?;
        let measured = match native {
            Some(native) => measure(&native.path, &context)?,
            None => {
                let described = driver
                    .describe_mount(id, &Self::mount_options(&found.facts))
                    .ok()
                    .and_then(|specs| match specs.as_slice() {
                        [one] if one.kind == "bind" => Some(PathBuf::from(&one.source)),
                        _ => None,
                    });
                match described.or(found.facts.held_mount.clone()) {
                    Some(tree) => measure(&tree, &context)?,
                    None => {
                        let tree = self
                            .store
                            .layers
                            .mount(&found.record.id, &MountOptions::default())
                            .map_err(SnapshotError::store(&context))?;
                        let measured = measure(&tree, &context);
                        let _ = self.store.layers.unmount(id);
                        measured?
                    }
                }
            }
        };
        // A driver that keeps its own account of a layer's bytes says so in
        // its `used` fact (zfs: the dataset's used property, what
        // containerd's zfs snapshotter reports); reading blocks through a
        // FUSE mount would give its cached, stale attributes.
        let used = driver
            .metadata(id)
            .ok()
            .and_then(|facts| facts.get("used").and_then(|v| v.parse::<u64>().ok()));
        Ok(Usage {
            size: used.unwrap_or(measured.0) as i64,
            inodes: measured.1 as i64,
        })
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

fn measure(tree: &Path, context: &str) -> Result<(u64, u64)> {
    disk_usage(tree).map_err(|e| SnapshotError::store(context)(CoreError::io("measure", tree, e)))
}

fn to_mount(spec: strata_core::MountSpec) -> Mount {
    Mount {
        r#type: spec.kind,
        source: spec.source,
        target: String::new(),
        options: spec.options,
    }
}

fn bind(path: &Path, read_only: bool) -> Mount {
    to_mount(strata_core::MountSpec::bind(path, read_only))
}

/// The service containerd calls, shared by the gRPC server's tasks.
pub type Shared = Arc<Snapshots>;
