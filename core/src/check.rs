//! Keeping a store whole without looking inside the graph root: `check`
//! finds every inconsistency between records, driver and files, and what
//! `repair` would do about it; `prune` removes what nothing uses; `df` says
//! where the space goes.
//!
//! Repair keeps every image that is still whole (its layers all made, in
//! records and driver) and every container whose layer is whole; what is
//! broken beyond that goes, records first where the driver has nothing, the
//! driver's layer first where it has.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;

use rusqlite::params;
use serde::Serialize;

use crate::containers::read_containers;
use crate::db::Kind;
use crate::error::Result;
use crate::ids::LayerId;
use crate::images::read_images;
use crate::layers::{MADE, all_parents};
use crate::store::{Store, layers_in_use};

/// One inconsistency, and what repair does about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind of thing: "layer", "image", "container", "name", "file",
    /// "session", "mount".
    pub kind: &'static str,
    /// Its id, name or path.
    pub subject: String,
    /// What is wrong.
    pub problem: String,
    /// What `repair` does.
    pub repair: String,
}

/// What [`Store::check`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Every inconsistency found, in the order the check came upon them;
    /// empty for a store that is whole.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Whether nothing was found, so there is nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Space used, by kind, in bytes of file content (hard links once).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DiskUsage {
    /// The images; their size is that of every layer under any image,
    /// each layer once.
    pub images: UsageLine,
    /// The containers; their size is that of their own layers (what they
    /// wrote), not of the image layers beneath.
    pub containers: UsageLine,
    /// Every made layer, whoever uses it.
    pub layers: UsageLine,
}

/// The space one kind of thing uses, a line of `strata df`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UsageLine {
    /// How many.
    pub count: usize,
    /// How many nothing uses (images no container is made from, layers no
    /// image or container stands on).
    pub unused: usize,
    /// Bytes of file content they hold (hard links once).
    pub size: u64,
    /// What deleting the unused ones would free.
    pub reclaimable: u64,
}

/// The state of the records, read once for a check.
struct Snapshot {
    /// Layer id to (state, parent).
    layers: BTreeMap<String, (i64, Option<String>)>,
    images: Vec<(String, Option<String>)>,
    containers: Vec<(String, String)>,
    names: Vec<(String, String, String)>,
    import_sessions: BTreeSet<String>,
}

impl Store {
    fn snapshot(&self) -> Result<Snapshot> {
        self.db().read("read the records for a check", |tx| {
            let mut layers = BTreeMap::new();
            let mut statement = tx.prepare_cached("SELECT id, state, parent FROM layers")?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                layers.insert(row.get(0)?, (row.get(1)?, row.get(2)?));
            }
            let images = read_images(tx)?
                .into_iter()
                .map(|i| (i.id.into_string(), i.top_layer.map(LayerId::into_string)))
                .collect();
            let containers = read_containers(tx)?
                .into_iter()
                .map(|c| (c.id.into_string(), c.layer.into_string()))
                .collect();
            let names = tx
                .prepare_cached("SELECT kind, name, owner FROM names")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let import_sessions = crate::layers::import_sessions(tx)?.into_iter().collect();
            Ok(Snapshot {
                layers,
                images,
                containers,
                names,
                import_sessions,
            })
        })
    }

    /// Every inconsistency between the records, the driver and the files
    /// beside them, with what [`repair`](Self::repair) would do. Reads only.
    pub fn check(&self) -> Result<CheckReport> {
        let (snapshot, in_driver) = self.survey()?;
        let mut findings = Vec::new();
        let mut finding = |kind, subject: &str, problem: String, repair: &str| {
            findings.push(Finding {
                kind,
                subject: subject.to_string(),
                problem,
                repair: repair.to_string(),
            })
        };

        // Layers: whole when made, in the driver, and their parent whole.
        let whole = whole_layers(&snapshot, &in_driver);
        for (id, (state, parent)) in &snapshot.layers {
            if *state != MADE {
                let owner_alive = self.layer_owner_alive(id)?;
                if !owner_alive {
                    finding(
                        "layer",
                        id,
                        format!(
                            "left {} by a process that died",
                            if *state == crate::layers::MAKING {
                                "part made"
                            } else {
                                "part deleted"
                            }
                        ),
                        "remove it (driver layer and record)",
                    );
                }
                continue;
            }
            if !in_driver.contains(id) {
                finding(
                    "layer",
                    id,
                    "recorded, but the driver has no such layer".into(),
                    "remove its record, the layers above it and the images and containers on them",
                );
            } else if !whole.contains(id) {
                finding(
                    "layer",
                    id,
                    format!(
                        "its parent {} is missing or broken",
                        parent.as_deref().unwrap_or("?")
                    ),
                    "remove it, with the images and containers on it",
                );
            }
        }
        for id in &in_driver {
            if !snapshot.layers.contains_key(id)
                && !is_parent(&snapshot, id)
                && self.driver_only_orphan(id)?
            {
                finding(
                    "layer",
                    id,
                    "the driver has it, but no record does".into(),
                    "remove it from the driver",
                );
            }
        }
        for (id, top) in &snapshot.images {
            if let Some(top) = top
                && !whole.contains(top)
            {
                finding(
                    "image",
                    id,
                    format!("its layer chain is broken (top layer {top})"),
                    "delete the image record",
                );
            }
        }
        for (id, layer) in &snapshot.containers {
            if !whole.contains(layer) {
                finding(
                    "container",
                    id,
                    format!("its layer {layer} is missing or broken"),
                    "delete the container record",
                );
            }
        }
        let image_ids: BTreeSet<&str> = snapshot.images.iter().map(|(i, _)| i.as_str()).collect();
        let container_ids: BTreeSet<&str> = snapshot
            .containers
            .iter()
            .map(|(c, _)| c.as_str())
            .collect();
        for (kind, name, owner) in &snapshot.names {
            let owned = match kind.as_str() {
                "layer" => snapshot.layers.contains_key(owner),
                "image" => image_ids.contains(owner.as_str()),
                "container" => container_ids.contains(owner.as_str()),
                _ => false,
            };
            if !owned {
                finding(
                    "name",
                    name,
                    format!("names {kind} {owner}, which does not exist"),
                    "remove the name",
                );
            }
        }
        for session in &snapshot.import_sessions {
            if !self.sessions().is_alive(session)? {
                finding(
                    "session",
                    session,
                    "an import whose process died left layers no image records".into(),
                    "remove those of its layers nothing uses",
                );
            }
        }
        for leftover in self.leftover_files(&snapshot)? {
            finding(
                "file",
                &leftover.display().to_string(),
                "left by an interrupted or deleted layer".into(),
                "remove it",
            );
        }
        for (layer, record) in self.layers.counts().all()? {
            if !snapshot.layers.contains_key(&layer) && !in_driver.contains(&layer) {
                finding(
                    "mount",
                    &layer,
                    "a mount count for a layer that no longer exists".into(),
                    "forget the count",
                );
            } else if record.is_stale() {
                finding(
                    "mount",
                    &layer,
                    format!(
                        "counted {} times, but {} is no longer mounted",
                        record.count,
                        record.path.display()
                    ),
                    "forget the count (the next mount mounts it again)",
                );
            }
        }
        Ok(CheckReport { findings })
    }

    /// The records, then the driver's layers. Other processes go on
    /// meanwhile: a layer recorded as made that the driver lacks is asked
    /// about again (deleted since, it is not missing); a driver layer
    /// without a record is asked about again where it is reported.
    fn survey(&self) -> Result<(Snapshot, BTreeSet<String>)> {
        let snapshot = self.snapshot()?;
        let mut in_driver: BTreeSet<String> = self.driver().list()?.into_iter().collect();
        for (id, (state, _)) in &snapshot.layers {
            if *state == MADE && !in_driver.contains(id) && !self.confirmed_missing(id)? {
                in_driver.insert(id.clone());
            }
        }
        Ok((snapshot, in_driver))
    }

    /// Layer `id` is recorded as made and the driver does not have it, now.
    fn confirmed_missing(&self, id: &str) -> Result<bool> {
        let row = self
            .db()
            .read("read layer", |tx| crate::layers::row_state(tx, id))?;
        Ok(row.is_some_and(|r| r.state == MADE) && !self.driver().exists(id)?)
    }

    fn layer_owner_alive(&self, id: &str) -> Result<bool> {
        let row = self
            .db()
            .read("read layer", |tx| crate::layers::row_state(tx, id))?;
        Ok(match row.and_then(|r| r.owner) {
            Some(owner) => self.sessions().is_alive(&owner)?,
            None => false,
        })
    }

    /// A driver layer without a row, still so when asked again (a layer
    /// deleted meanwhile is not an orphan).
    fn driver_only_orphan(&self, id: &str) -> Result<bool> {
        let row = self
            .db()
            .read("read layer", |tx| crate::layers::row_state(tx, id))?;
        Ok(row.is_none() && self.driver().exists(id)?)
    }

    /// Tar-split records of layers without a row, and partial ones no live
    /// maker is writing.
    fn leftover_files(&self, snapshot: &Snapshot) -> Result<Vec<std::path::PathBuf>> {
        let mut leftovers = Vec::new();
        let Ok(entries) = fs::read_dir(self.layers.tar_splits().dir()) else {
            return Ok(leftovers);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let record = crate::layers::TarSplits::layer_of(&name);
            let layer = if let Some((partial, true)) = record {
                // Being written while its layer is being made by a live process.
                if self.layer_owner_alive(partial)? {
                    continue;
                }
                if snapshot
                    .layers
                    .get(partial)
                    .is_some_and(|(state, _)| *state == MADE)
                {
                    leftovers.push(entry.path());
                    continue;
                }
                partial
            } else if let Some((id, false)) = record {
                id
            } else if name.ends_with(".making") {
                // Making locks of the JSON version.
                leftovers.push(entry.path());
                continue;
            } else {
                continue;
            };
            let row = self
                .db()
                .read("read layer", |tx| crate::layers::row_state(tx, layer))?;
            if row.is_none() {
                leftovers.push(entry.path());
            }
        }
        Ok(leftovers)
    }

    /// Does what [`check`](Self::check) says, keeping every image that is
    /// still whole; returns what it found (and did). Waits until no other
    /// process builds on layers, and holds them off while it works.
    pub fn repair(&self) -> Result<CheckReport> {
        let _exclusive = self.hold_layers_exclusively()?;
        let report = self.check()?;
        if report.is_clean() {
            return Ok(report);
        }
        // Leftovers of dead processes first: the ordinary recovery.
        self.layers.recover()?;
        self.collect_dead_imports(true)?;
        let (snapshot, in_driver) = self.survey()?;
        let whole = whole_layers(&snapshot, &in_driver);
        // Records that stand on broken layers: images and containers go.
        self.db().write("repair the records", |tx| {
            for (id, top) in &snapshot.images {
                if top.as_ref().is_some_and(|t| !whole.contains(t)) {
                    tracing::warn!(image = %id, "repair: deleting an image whose layers are broken");
                    crate::images::delete_image_rows(tx, id)?;
                }
            }
            for (id, layer) in &snapshot.containers {
                if !whole.contains(layer) {
                    tracing::warn!(container = %id, "repair: deleting a container whose layer is broken");
                    tx.execute("DELETE FROM containers WHERE id = ?1", params![id])?;
                    crate::db::drop_names(tx, Kind::Container, id)?;
                }
            }
            // Names of records that do not exist.
            tx.execute_batch(
                "DELETE FROM names WHERE kind = 'layer' AND owner NOT IN (SELECT id FROM layers);
                 DELETE FROM names WHERE kind = 'image' AND owner NOT IN (SELECT id FROM images);
                 DELETE FROM names WHERE kind = 'container' AND owner NOT IN (SELECT id FROM containers);",
            )?;
            Ok(())
        })?;
        // Broken layers, children first: each is marked and removed the way
        // a delete does it (a layer the driver no longer has counts as
        // removed).
        // (A row whose id is not a layer id cannot have been written by
        // strata, and no driver could hold it: such rows are not walked.)
        let broken: Vec<LayerId> = snapshot
            .layers
            .iter()
            .filter(|(id, (state, _))| *state == MADE && !whole.contains(*id))
            .filter_map(|(id, _)| LayerId::new(id.as_str()).ok())
            .collect();
        let me = self.layers.session()?;
        for id in self.children_first(&broken)? {
            let marked = self.db().write(&format!("repair layer {id}"), |tx| {
                self.layers.mark_in(tx, &id, &me)?;
                Ok(())
            });
            match marked.and_then(|()| self.layers.finish_delete(&id, true)) {
                Ok(()) => tracing::warn!(layer = %id, "repair: removed a broken layer"),
                Err(e) => {
                    tracing::warn!(layer = %id, error = %e, "repair: could not remove a broken layer")
                }
            }
        }
        // Driver layers no record knows.
        for id in &in_driver {
            if !snapshot.layers.contains_key(id)
                && !is_parent(&snapshot, id)
                && self.driver_only_orphan(id)?
            {
                match self.driver().remove(id) {
                    Ok(()) => {
                        tracing::warn!(layer = %id, "repair: removed a driver layer no record knows")
                    }
                    Err(e) => {
                        tracing::warn!(layer = %id, error = %e, "repair: could not remove a driver layer no record knows")
                    }
                }
            }
        }
        let snapshot = self.snapshot()?;
        for path in self.leftover_files(&snapshot)? {
            let _ = fs::remove_file(&path);
        }
        for (layer, record) in self.layers.counts().all()? {
            let gone = !snapshot.layers.contains_key(&layer) && !self.driver().exists(&layer)?;
            if gone || record.is_stale() {
                self.layers.counts().forget(&layer)?;
            }
        }
        Ok(report)
    }

    /// Deletes every made layer no image or container stands on (children
    /// first) and what dead processes left; returns the layers deleted.
    /// With `dry_run`, only lists them.
    pub fn prune(&self, dry_run: bool) -> Result<Vec<LayerId>> {
        let _exclusive = self.hold_layers_exclusively()?;
        let unused: Vec<LayerId> = self.db().read("list unused layers", |tx| {
            let used = layers_in_use(tx)?;
            let mut statement =
                tx.prepare_cached("SELECT id FROM layers WHERE state = 0 ORDER BY id")?;
            let ids = statement
                .query_map([], |r| r.get::<_, LayerId>(0))?
                .collect::<rusqlite::Result<Vec<LayerId>>>()?;
            Ok(ids.into_iter().filter(|id| !used.contains(id)).collect())
        })?;
        let ordered = self.children_first(&unused)?;
        if dry_run {
            return Ok(ordered);
        }
        self.layers.recover()?;
        self.collect_dead_imports(true)?;
        let mut deleted = Vec::new();
        for id in ordered {
            if self.delete_if_unused(&id)? {
                deleted.push(id);
            }
        }
        let snapshot = self.snapshot()?;
        for path in self.leftover_files(&snapshot)? {
            let _ = fs::remove_file(&path);
        }
        Ok(deleted)
    }

    /// Space used by images, containers and layers, and what deleting the
    /// unused ones would free.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let (layers, images, containers, parents) = self.db().read("read the records", |tx| {
            let mut statement = tx.prepare_cached("SELECT id, diff FROM layers WHERE state = 0")?;
            let layers: Vec<(String, Option<String>)> = statement
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok((
                layers,
                read_images(tx)?,
                read_containers(tx)?,
                all_parents(tx)?,
            ))
        })?;
        let mut size: HashMap<String, u64> = HashMap::new();
        for (id, diff) in &layers {
            let recorded = diff
                .as_deref()
                .and_then(|d| serde_json::from_str::<crate::layers::DiffRecord>(d).ok())
                .map(|d| d.size);
            let bytes = match recorded {
                Some(bytes) => bytes,
                // A layer written in place (a container's): what its diff
                // holds now.
                None => LayerId::new(id.as_str())
                    .and_then(|id| self.layers.diff_size(&id))
                    .unwrap_or(0),
            };
            size.insert(id.clone(), bytes);
        }
        let chain = |top: Option<&str>| {
            let mut ids = Vec::new();
            let mut cursor = top.map(str::to_string);
            while let Some(layer) = cursor {
                cursor = parents
                    .get(layer.as_str())
                    .cloned()
                    .flatten()
                    .map(LayerId::into_string);
                ids.push(layer);
            }
            ids
        };
        let mut usage = DiskUsage::default();
        let used_by_containers: BTreeSet<&str> =
            containers.iter().map(|c| c.image.as_str()).collect();
        let mut image_layers: BTreeSet<String> = BTreeSet::new();
        let mut kept_by_containers: BTreeSet<String> = BTreeSet::new();
        for container in &containers {
            for layer in chain(Some(&container.layer)) {
                kept_by_containers.insert(layer);
            }
        }
        usage.images.count = images.len();
        for image in &images {
            let layers = chain(image.top_layer.as_deref());
            if !used_by_containers.contains(image.id.as_str()) {
                usage.images.unused += 1;
            }
            image_layers.extend(layers);
        }
        usage.images.size = image_layers
            .iter()
            .map(|l| size.get(l).copied().unwrap_or(0))
            .sum();
        // What deleting the images no container uses frees: their layers
        // that no container stands on.
        usage.images.reclaimable = image_layers
            .iter()
            .filter(|l| !kept_by_containers.contains(*l))
            .map(|l| size.get(l).copied().unwrap_or(0))
            .sum();
        usage.containers.count = containers.len();
        usage.containers.size = containers
            .iter()
            .map(|c| size.get(c.layer.as_str()).copied().unwrap_or(0))
            .sum();
        usage.layers.count = layers.len();
        usage.layers.size = size.values().sum();
        let mut used: BTreeSet<String> = image_layers;
        used.extend(kept_by_containers);
        for (id, _) in &layers {
            if !used.contains(id) {
                usage.layers.unused += 1;
                usage.layers.reclaimable += size.get(id).copied().unwrap_or(0);
            }
        }
        Ok(usage)
    }
}

/// Whether a recorded layer has `id` as its parent.
fn is_parent(snapshot: &Snapshot, id: &str) -> bool {
    snapshot
        .layers
        .values()
        .any(|(_, parent)| parent.as_deref() == Some(id))
}

/// The made layers whose whole chain is made and in the driver.
fn whole_layers(snapshot: &Snapshot, in_driver: &BTreeSet<String>) -> BTreeSet<String> {
    let mut whole = BTreeSet::new();
    let mut broken = BTreeSet::new();
    for id in snapshot.layers.keys() {
        let mut path = Vec::new();
        let mut cursor = Some(id.clone());
        let verdict = loop {
            let Some(layer) = cursor else { break true };
            if whole.contains(&layer) {
                break true;
            }
            if broken.contains(&layer) {
                break false;
            }
            match snapshot.layers.get(&layer) {
                Some((state, parent)) if *state == MADE && in_driver.contains(&layer) => {
                    path.push(layer);
                    cursor = parent.clone();
                }
                // A parent the driver has without a record (made before
                // records were kept, or by the driver directly): layers may
                // be made on such a parent, and it is whole as far as the
                // records can tell.
                None if in_driver.contains(&layer) => {
                    path.push(layer);
                    break true;
                }
                _ => {
                    path.push(layer);
                    break false;
                }
            }
        };
        for layer in path {
            if verdict {
                whole.insert(layer);
            } else {
                broken.insert(layer);
            }
        }
    }
    whole
}
