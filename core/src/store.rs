//! The store a container runtime uses: one driver, and the layer, image and
//! container records above it, with the operations that span them (a
//! container on an image, deleting an image and the layers only it used).
//!
//! Layers are shared: two images with the same first layers share them, and
//! a container's layer sits on its image's top layer. So that a layer is never
//! deleted while some process is about to build on it, anything that builds
//! on existing layers (an import, a container create) holds the graph root's
//! `layers-in-use` lock shared for as long as it works, and anything that
//! deletes layers another record might want (image delete, layer delete, the
//! clean-up of a failed or abandoned import) holds it exclusively.
//!
//! Every change spanning records and driver is ordered so that a process
//! killed at any instruction leaves a state the next open finishes or undoes
//! (see `layers` for layers; each operation here says its steps).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use strata_plugin_abi::{CreateOptions, GraphDriver, MountOptions};

use crate::config::Config;
use crate::containers::{ContainerRecord, ContainerStore, containers_of_image, insert_container};
use crate::db::{Database, Kind, names_of, now};
use crate::error::{CoreError, Result};
use crate::fsutil::FileLock;
use crate::ids::{ContainerId, ImageId, LayerId};
use crate::images::{
    ImageFamily, ImageRecord, ImageStore, NewImage, delete_image_rows, read_image, resolve_image,
};
use crate::layers::{
    DiffRecord, LayerRecord, LayerStore, MADE, NewLayer, all_parents, children_of, import_sessions,
    row_state,
};
use crate::sessions::Sessions;

/// Takes a lock with `take`, logging a wait (another process holds it) at
/// debug with how long it was, and every take at trace.
fn logged_wait<T>(lock: &str, take: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    let started = std::time::Instant::now();
    tracing::trace!(lock, "taking a lock");
    let taken = take();
    let waited = started.elapsed();
    if waited >= std::time::Duration::from_millis(10) {
        tracing::debug!(
            lock,
            waited_ms = waited.as_millis() as u64,
            "lock taken after waiting"
        );
    }
    taken
}

/// What [`Store::remove_image`] did.
#[derive(Debug)]
pub enum ImageRemoval {
    /// The image had other names: only this one was taken away.
    Untagged {
        /// The image, which stays.
        id: ImageId,
        /// The name taken away.
        name: String,
    },
    /// The image was deleted, and the layers nothing else used (those the
    /// driver removed).
    Deleted(ImageRecord, Vec<LayerId>),
}

/// A store: one running driver and the records of its layers, images and
/// containers, in the graph root's database. Any number of processes may
/// have the same store open at once.
pub struct Store {
    // Declared first so it is dropped first: the layers hold the driver,
    // which shuts down before the session file and the database go.
    /// The layers, and the driver they are in. Its operations know nothing
    /// of images and containers: to delete or write a layer one may stand
    /// on, use [`Store::delete_layer`] and [`Store::apply_to_layer`], which
    /// check.
    pub layers: LayerStore<'static>,
    graphroot: PathBuf,
    db: Arc<Database>,
    sessions: Arc<Sessions>,
    /// The image records (names, big data items, top layers).
    pub images: ImageStore,
    /// The container records.
    pub containers: ContainerStore,
}

/// A hold on the graph root's `layers-in-use` lock.
pub struct LayersInUse(#[allow(dead_code)] FileLock);

impl Store {
    /// Starts the configured (or chosen) driver and opens its records.
    pub fn open(config: &Config) -> Result<Store> {
        let selected = crate::open_driver(config)?;
        Store::with_driver(
            &config.graphroot,
            &config.runroot,
            Box::new(selected.driver),
        )
    }

    /// Opens the records of a driver already started on `graphroot`,
    /// migrating records an older strata kept as JSON files, and finishing
    /// or undoing what dead processes left part done.
    pub fn with_driver(
        graphroot: &Path,
        runroot: &Path,
        driver: Box<dyn GraphDriver>,
    ) -> Result<Store> {
        let name = driver.name();
        let db = Arc::new(Database::open(graphroot, &name)?);
        crate::migrate::migrate_json_records(graphroot, &name, &db)?;
        let sessions = Arc::new(Sessions::open(graphroot, &name));
        let store = Store {
            layers: LayerStore::with_records(
                driver,
                graphroot,
                runroot,
                db.clone(),
                sessions.clone(),
            )?,
            images: ImageStore::with_records(db.clone()),
            containers: ContainerStore::with_records(db.clone()),
            graphroot: graphroot.to_path_buf(),
            db,
            sessions,
        };
        store.layers.recover()?;
        store.collect_abandoned_imports()?;
        Ok(store)
    }

    /// The driver the store's layers are in.
    pub fn driver(&self) -> &dyn GraphDriver {
        self.layers.driver()
    }

    /// Imports the image at `location` (an OCI layout directory, and the
    /// tag to take from it if it holds several), giving it `names`; see
    /// [`crate::oci::import_image`].
    pub fn import_image(
        &self,
        location: &crate::oci::ImageLocation,
        names: &[String],
        progress: &dyn crate::oci::ImportProgress,
    ) -> Result<crate::oci::ImportReport> {
        crate::oci::import_image(self, location, names, progress)
    }

    /// Writes image `reference` to the OCI layout at `location`; see
    /// [`crate::oci::export_image`].
    pub fn export_image(
        &self,
        reference: &str,
        location: &crate::oci::ImageLocation,
    ) -> Result<crate::oci::ExportReport> {
        crate::oci::export_image(self, reference, location)
    }

    /// The graph root the store was opened on.
    pub fn graphroot(&self) -> &Path {
        &self.graphroot
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Removes the layers of imports whose process died before recording
    /// their image (unless something has come to use them), and retires
    /// dead sessions. Skipped, to be done at a later open, while another
    /// process builds on layers.
    pub(crate) fn collect_abandoned_imports(&self) -> Result<Vec<LayerId>> {
        self.collect_dead_imports(false)
    }

    /// [`collect_abandoned_imports`](Self::collect_abandoned_imports);
    /// `exclusive_held`: the caller already holds the layers-in-use lock
    /// exclusively (repair, prune), so it is not tried for.
    pub(crate) fn collect_dead_imports(&self, exclusive_held: bool) -> Result<Vec<LayerId>> {
        let dead_files = self.sessions.dead()?;
        let marks = self
            .db
            .read("list imports in progress", |tx| import_sessions(tx))?;
        let mut dead_marks = Vec::new();
        for session in marks {
            // A dead session found above is locked by this process, so it
            // would look alive: asked by name first.
            if dead_files.iter().any(|d| d.name == session) || !self.sessions.is_alive(&session)? {
                dead_marks.push(session);
            }
        }
        let mut removed = Vec::new();
        if !dead_marks.is_empty() {
            let _exclusive = if exclusive_held {
                None
            } else {
                match self.try_hold_layers_exclusively()? {
                    Some(hold) => Some(hold),
                    None => return Ok(removed),
                }
            };
            for session in dead_marks {
                removed.extend(self.release_import(&session)?);
            }
        }
        for session in dead_files {
            tracing::debug!(session = %session.name, "a dead process's session retired");
            session.retire();
        }
        if !removed.is_empty() {
            tracing::info!(layers = ?removed, "removed the layers of imports whose process died");
        }
        Ok(removed)
    }

    /// Removes the layers dead import `session` made that nothing uses,
    /// and ends the tie of the rest to it. Call with the layers-in-use lock
    /// held exclusively.
    pub(crate) fn release_import(&self, session: &str) -> Result<Vec<LayerId>> {
        let marked: Vec<LayerId> = self.db.read("list an import's layers", |tx| {
            let ids = tx
                .prepare_cached("SELECT id FROM layers WHERE import_session = ?1")?
                .query_map(params![session], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<LayerId>>>()?;
            Ok(ids)
        })?;
        let ordered = self.children_first(&marked)?;
        let deleted = self.release_layers(&ordered)?;
        tracing::warn!(session = %session, layers = ?deleted, "removed the layers of an import whose process died");
        // What stays is used by something now: no longer the import's.
        self.db.write("settle an import's layers", |tx| {
            tx.prepare_cached("UPDATE layers SET import_session = NULL WHERE import_session = ?1")?
                .execute(params![session])?;
            Ok(())
        })?;
        Ok(deleted)
    }

    /// `ids` ordered so that a layer comes before its parent.
    pub(crate) fn children_first(&self, ids: &[LayerId]) -> Result<Vec<LayerId>> {
        let parents = self.layers.parents()?;
        let depth = |id: &str| {
            let mut depth = 0usize;
            let mut cursor = parents.get(id).cloned().flatten();
            while let Some(parent) = cursor {
                depth += 1;
                cursor = parents.get(parent.as_str()).cloned().flatten();
            }
            depth
        };
        let mut ordered = ids.to_vec();
        ordered.sort_by_key(|id| std::cmp::Reverse(depth(id)));
        Ok(ordered)
    }

    fn in_use_path(&self) -> PathBuf {
        self.graphroot
            .join(format!("{}-layers-in-use.lock", self.driver().name()))
    }

    /// Held while building on layers that exist: none of them is deleted
    /// until it is dropped. Drop it before deleting an image or a layer:
    /// those wait for every hold, this one included.
    pub fn hold_layers(&self) -> Result<LayersInUse> {
        let path = self.in_use_path();
        logged_wait("layers-in-use (shared)", || FileLock::shared(&path))
            .map(LayersInUse)
            .map_err(|e| CoreError::io("lock", path, e))
    }

    /// Held while deleting layers: waits until nobody builds on any.
    pub(crate) fn hold_layers_exclusively(&self) -> Result<LayersInUse> {
        let path = self.in_use_path();
        logged_wait("layers-in-use (exclusive)", || FileLock::exclusive(&path))
            .map(LayersInUse)
            .map_err(|e| CoreError::io("lock", path, e))
    }

    pub(crate) fn try_hold_layers_exclusively(&self) -> Result<Option<LayersInUse>> {
        let path = self.in_use_path();
        FileLock::try_exclusive(&path)
            .map(|lock| lock.map(LayersInUse))
            .map_err(|e| CoreError::io("lock", path, e))
    }

    /// Every layer an image or a container stands on (top layers, container
    /// layers and all their ancestors).
    pub fn layers_in_use(&self) -> Result<BTreeSet<LayerId>> {
        self.db
            .read("list the layers in use", |tx| layers_in_use(tx))
    }

    /// The image's layers, bottom first.
    pub fn image_layers(&self, image: &ImageRecord) -> Result<Vec<LayerRecord>> {
        let mut chain = Vec::new();
        let mut cursor = image.top_layer.clone();
        while let Some(id) = cursor {
            let record = self.layers.get(&id)?.ok_or_else(|| {
                CoreError::Corrupt(format!(
                    "image {}: its layer {id} is missing from the store",
                    image.id
                ))
            })?;
            cursor = record.parent.clone();
            chain.push(record);
        }
        chain.reverse();
        Ok(chain)
    }

    /// Parent, child and head relations between the images, and how many
    /// layers each image has, from one read of the records.
    pub fn image_family(&self) -> Result<(Vec<ImageRecord>, ImageFamily)> {
        let (images, parents) = self.db.read("list images", |tx| {
            Ok((crate::images::read_images(tx)?, all_parents(tx)?))
        })?;
        let family = ImageFamily::new(&images, |l| parents.get(l).cloned().flatten());
        Ok((images, family))
    }

    /// Image `id`'s parent image and child images, as
    /// [`image_family`](Self::image_family) works them out, but reading only the layers
    /// between it and its relations (indexed lookups, whatever the store's
    /// size): what `strata image inspect` shows.
    pub fn image_relations(&self, id: &ImageId) -> Result<(Option<ImageId>, Vec<ImageId>)> {
        self.db
            .read(&format!("read the relations of image {id}"), |tx| {
                let Some(top) = read_image(tx, id)?.and_then(|i| i.top_layer) else {
                    return Ok((None, Vec::new()));
                };
                let first_on = |layer: &str| -> Result<Option<ImageId>> {
                    Ok(tx
                        .prepare_cached(
                            "SELECT id FROM images WHERE top_layer = ?1 ORDER BY id LIMIT 1",
                        )?
                        .query_row(params![layer], |r| r.get(0))
                        .optional()?)
                };
                // The parent: the first image on the nearest layer below the top
                // that is some image's top.
                let mut parent = None;
                let mut cursor = row_parent(tx, &top)?;
                while let Some(layer) = cursor {
                    if let Some(owner) = first_on(&layer)? {
                        parent = Some(owner);
                        break;
                    }
                    cursor = row_parent(tx, &layer)?;
                }
                // The children: images whose top is above this one's with no
                // image's top in between; they are the first image's on a layer.
                if first_on(&top)?.as_ref() != Some(id) {
                    return Ok((parent, Vec::new()));
                }
                let children = tx
                    .prepare_cached(
                        "WITH RECURSIVE above(id) AS (
                         SELECT id FROM layers WHERE parent = ?1
                         UNION ALL
                         SELECT layers.id FROM layers JOIN above ON layers.parent = above.id
                          WHERE NOT EXISTS (SELECT 1 FROM images WHERE top_layer = above.id)
                     )
                     SELECT images.id FROM images JOIN above ON images.top_layer = above.id
                      ORDER BY images.id",
                    )?
                    .query_map(params![top], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<ImageId>>>()?;
                Ok((parent, children))
            })
    }

    /// Every image with how many layers it has, from one read that touches
    /// only the images, their names and their top layers' rows (what
    /// `strata image list` shows).
    pub fn image_summaries(&self) -> Result<Vec<(ImageRecord, usize)>> {
        self.db.read("list images", |tx| {
            let mut statement = tx.prepare_cached(
                "SELECT images.id, images.digest, images.top_layer, images.created, images.metadata,
                        COALESCE(layers.depth, 0)
                   FROM images LEFT JOIN layers ON layers.id = images.top_layer
                  ORDER BY images.id",
            )?;
            let mut rows = statement.query([])?;
            let mut names = crate::db::all_names(tx, Kind::Image)?;
            let mut summaries = Vec::new();
            while let Some(row) = rows.next()? {
                let id: ImageId = row.get(0)?;
                summaries.push((
                    ImageRecord {
                        names: names.remove(id.as_str()).unwrap_or_default(),
                        id,
                        digest: row.get(1)?,
                        top_layer: row.get(2)?,
                        created: row.get::<_, i64>(3)? as u64,
                        metadata: row.get(4)?,
                        big_data: Default::default(),
                    },
                    row.get::<_, i64>(5)? as usize,
                ));
            }
            Ok(summaries)
        })
    }

    /// Deletes layers of `candidates` (a child before its parent) that no
    /// image or container uses and no other layer stands on; returns the
    /// ones deleted. Call with the layers-in-use lock held exclusively.
    fn release_layers(&self, candidates: &[LayerId]) -> Result<Vec<LayerId>> {
        let mut deleted = Vec::new();
        for id in candidates {
            if self.delete_if_unused(id)? {
                deleted.push(id.clone());
            }
        }
        Ok(deleted)
    }

    /// Deletes layer `id` if it is made and nothing stands on it. Call with
    /// the layers-in-use lock held exclusively.
    pub(crate) fn delete_if_unused(&self, id: &str) -> Result<bool> {
        let me = self.layers.session()?;
        let marked = self.db.write(&format!("delete layer {id}"), |tx| {
            if !unused(tx, id)? {
                return Ok(false);
            }
            self.layers.mark_in(tx, id, &me)?;
            Ok(true)
        })?;
        if marked {
            self.layers.finish_delete(id, true)?;
        }
        Ok(marked)
    }

    /// Takes back layers an import made before it failed, unless another
    /// import or container has come to use them meanwhile.
    pub(crate) fn discard_made_layers(&self, hold: LayersInUse, made: &[LayerId]) {
        drop(hold);
        let result = self.hold_layers_exclusively().and_then(|_exclusive| {
            let top_first: Vec<LayerId> = made.iter().rev().cloned().collect();
            self.release_layers(&top_first)
        });
        match result {
            Ok(deleted) => {
                tracing::info!(layers = ?deleted, "removed the layers of a failed import")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not remove the layers of a failed import")
            }
        }
    }

    /// Records an imported image, and in the same transaction ends its
    /// layers' tie to the import (they no longer go if this process dies).
    pub(crate) fn record_imported_image(&self, new: &NewImage) -> Result<ImageRecord> {
        self.images
            .create_then(new, |tx| settle_import(tx, new.top_layer.as_deref()))
    }

    /// Adds names to an image another import recorded first, settling this
    /// import's layers as [`record_imported_image`](Self::record_imported_image) does.
    pub(crate) fn name_imported_image(
        &self,
        id: &ImageId,
        names: &[String],
        top_layer: Option<&str>,
    ) -> Result<ImageRecord> {
        let image = self.images.add_names(id, names)?;
        self.db.write("settle an import's layers", |tx| {
            settle_import(tx, top_layer)
        })?;
        Ok(image)
    }

    /// Deletes image `reference` and then the layers no other image or
    /// container uses; refused while a container uses the image. Returns the
    /// image and the layers deleted.
    ///
    /// Steps: (1) one transaction deletes the image's rows and marks its
    /// layers that nothing else stands on as being deleted; (2) each marked
    /// layer, top first, is removed from the driver and its row deleted. A
    /// kill after (1) leaves layers being deleted by a dead session: the
    /// next open finishes them.
    pub fn delete_image(&self, reference: &str) -> Result<(ImageRecord, Vec<LayerId>)> {
        match self.remove_image_or_name(reference, false)? {
            ImageRemoval::Deleted(image, layers) => Ok((image, layers)),
            ImageRemoval::Untagged { .. } => unreachable!("only a name is untagged"),
        }
    }

    /// Removes an image as podman's `rmi` does: named by one of its several
    /// names, only that name goes; by its last name, by its id, or with
    /// `force`, the image goes ([`delete_image`](Self::delete_image)). The
    /// choice is made in the same transaction as the change, so a name
    /// added meanwhile by another process is seen.
    pub fn remove_image(&self, reference: &str, force: bool) -> Result<ImageRemoval> {
        self.remove_image_or_name(reference, !force)
    }

    fn remove_image_or_name(&self, reference: &str, name_only: bool) -> Result<ImageRemoval> {
        let _exclusive = self.hold_layers_exclusively()?;
        let me = self.layers.session()?;
        let decided = self.db.write(&format!("delete image {reference}"), |tx| {
            let id = resolve_image(tx, reference)?;
            let image = read_image(tx, &id)?
                .ok_or_else(|| CoreError::NotFound(format!("delete image {id}: no such image")))?;
            if name_only && image.names.len() > 1 && image.names.iter().any(|n| n == reference) {
                tx.prepare_cached(
                    "DELETE FROM names WHERE kind = 'image' AND owner = ?1 AND name = ?2",
                )?
                .execute(params![id, reference])?;
                return Ok(ImageRemoval::Untagged {
                    id,
                    name: reference.to_string(),
                });
            }
            let users = containers_of_image(tx, &id)?;
            if !users.is_empty() {
                return Err(CoreError::InUse(format!(
                    "delete image {id}: containers {} use it",
                    users.join(", ")
                )));
            }
            delete_image_rows(tx, &id)?;
            let mut marked: Vec<LayerId> = Vec::new();
            let mut cursor = image.top_layer.clone();
            while let Some(layer) = cursor {
                // Its only child, if any, is the layer marked just before.
                let children = children_of(tx, &layer)?;
                let only_marked = children.iter().all(|c| marked.last() == Some(c));
                if !only_marked || !unused_but_for_children(tx, &layer)? {
                    break;
                }
                self.layers.mark_in(tx, &layer, &me)?;
                cursor = row_parent(tx, &layer)?;
                marked.push(layer);
            }
            Ok(ImageRemoval::Deleted(image, marked))
        })?;
        let ImageRemoval::Deleted(image, marked) = decided else {
            return Ok(decided);
        };
        let mut deleted = Vec::new();
        for (index, layer) in marked.iter().enumerate() {
            if let Err(e) = self.layers.finish_delete(layer, true) {
                // The image is gone; this layer and those below it stay, made
                // again, for `strata prune` once the driver lets them go.
                self.unmark(&marked[index + 1..]);
                tracing::warn!(image = %image.id, layer = %layer, error = %e, "the image is deleted, but its layers stay: the driver refused to remove one");
                break;
            }
            deleted.push(layer.clone());
        }
        Ok(ImageRemoval::Deleted(image, deleted))
    }

    /// Marks layers this process marked for deletion as made again.
    fn unmark(&self, layers: &[LayerId]) {
        let Ok(me) = self.sessions.own() else { return };
        let result = self.db.write("keep layers", |tx| {
            for layer in layers {
                tx.prepare_cached(
                    "UPDATE layers SET state = ?1, owner = NULL WHERE id = ?2 AND owner = ?3",
                )?
                .execute(params![MADE, layer, me])?;
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not mark layers as kept");
        }
    }

    /// The images and containers that stand on layer `id` (it is their top
    /// layer or below it), as "image NAME" / "container NAME".
    pub fn layer_users(&self, id: &LayerId) -> Result<Vec<String>> {
        self.db
            .read(&format!("list the users of layer {id}"), |tx| {
                layer_users(tx, id)
            })
    }

    /// Deletes layer `id`, refused while an image or container stands on it
    /// (delete those instead) or another layer has it as parent.
    pub fn delete_layer(&self, id: &LayerId) -> Result<()> {
        let _exclusive = self.hold_layers_exclusively()?;
        self.layers.delete_checked(id, |tx| {
            let users = layer_users(tx, id)?;
            if users.is_empty() {
                return Ok(());
            }
            Err(CoreError::InUse(format!(
                "delete layer {id}: used by {}",
                users.join(", ")
            )))
        })
    }

    /// Deletes layer `id`, held by `owner` (the value of its
    /// [`OWNER_FLAG`]): refused, as [`delete_layer`](Self::delete_layer)
    /// is, while anything else uses it; its own owner does not count.
    pub fn delete_owned_layer(&self, id: &LayerId, owner: &str) -> Result<()> {
        let _exclusive = self.hold_layers_exclusively()?;
        self.layers.delete_checked(id, |tx| {
            let mut users = layer_users(tx, id)?;
            if layer_owner(tx, id)?.as_deref() == Some(owner)
                && let Some(at) = users.iter().position(|u| u == owner)
            {
                users.remove(at);
            }
            if users.is_empty() {
                return Ok(());
            }
            Err(CoreError::InUse(format!(
                "delete layer {id}: used by {}",
                users.join(", ")
            )))
        })
    }

    /// Applies a layer tar to the existing layer `id`. A read-only layer
    /// (an image's) is refused, naming the images and containers that stand
    /// on it: writing it would change all of them at once, while their mounts
    /// still show it read-only.
    pub fn apply_to_layer(&self, id: &LayerId, diff: &mut dyn Read) -> Result<DiffRecord> {
        match self.layers.apply(id, diff) {
            // The layer store refuses a read-only layer; say who stands on it.
            Err(refused) if self.layers.get(id)?.is_some_and(|r| r.read_only) => {
                let users = self.layer_users(id)?;
                if users.is_empty() {
                    return Err(refused);
                }
                Err(CoreError::InvalidInput(format!(
                    "apply to layer {id}: the layer is read-only; used by {}",
                    users.join(", ")
                )))
            }
            other => other,
        }
    }

    /// Makes a container on image `image_ref`: a read-write layer on the
    /// image's top layer. The container's row is written in the transaction
    /// that marks its layer made (see `layers`): a kill leaves both or
    /// neither.
    pub fn create_container(
        &self,
        image_ref: &str,
        names: &[String],
        options: &CreateOptions,
    ) -> Result<ContainerRecord> {
        let _hold = self.hold_layers()?;
        let image = self.image(image_ref)?;
        // Checked again in the transaction; here so that a taken name costs
        // no layer.
        self.db.read("check container names", |tx| {
            for name in names {
                if let Some(other) = crate::db::name_owner(tx, Kind::Container, name)? {
                    return Err(CoreError::AlreadyExists(format!(
                        "container name '{name}' is taken by container {other}"
                    )));
                }
            }
            Ok(())
        })?;
        let id = ContainerId::random()?;
        let record = ContainerRecord {
            id: id.clone(),
            names: names.to_vec(),
            image: image.id,
            layer: id.layer(),
            created: now(),
            metadata: None,
        };
        let options = CreateOptions {
            read_write: true,
            ..options.clone()
        };
        self.layers.create_layer_then(
            &NewLayer {
                parent: image.top_layer.clone(),
                options,
                ..NewLayer::new(id.layer())
            },
            None,
            |tx, _| insert_container(tx, &record),
        )?;
        Ok(record)
    }

    /// Mounts the container's layer (counted) and returns the path.
    pub fn mount_container(&self, reference: &str, options: &MountOptions) -> Result<PathBuf> {
        let container = self.container(reference)?;
        self.layers.mount(&container.layer, options)
    }

    /// Releases one mount of the container named by id, name, prefix or mount
    /// path; returns the container's id.
    pub fn unmount_container(&self, reference: &str) -> Result<LayerId> {
        if reference.starts_with('/') {
            let layer = self.layers.unmount(reference)?;
            return Ok(layer);
        }
        let container = self.container(reference)?;
        self.layers.unmount(&container.layer)
    }

    /// Deletes the container and its layer (the driver takes down its
    /// mount as it removes the layer; its mount count goes). Its layer is
    /// marked as being deleted, removed from the driver, and then one
    /// transaction deletes the layer's row and the container's: a kill
    /// between leaves a layer being deleted that the next open finishes,
    /// with the container's row. A container whose layer is already gone is
    /// deleted all the same.
    pub fn delete_container(&self, reference: &str) -> Result<ContainerRecord> {
        let container = self.container(reference)?;
        match self.layers.delete(&container.layer) {
            Ok(()) => Ok(container),
            Err(e) if e.kind() == crate::error::Kind::NotFound => {
                self.db
                    .write(&format!("delete container {}", container.id), |tx| {
                        tx.prepare_cached("DELETE FROM containers WHERE id = ?1")?
                            .execute(params![container.id])?;
                        crate::db::drop_names(tx, Kind::Container, &container.id)
                    })?;
                Ok(container)
            }
            Err(e) => Err(e),
        }
    }

    /// The container `reference` names: its id, a name, or a unique id
    /// prefix. NotFound if none does; InvalidInput if a prefix fits several.
    pub fn container(&self, reference: &str) -> Result<ContainerRecord> {
        self.containers.find(reference)
    }

    /// The image `reference` names: its id (or `sha256:` and the id), a
    /// name, or a unique id prefix. NotFound if none does; InvalidInput if a
    /// prefix fits several.
    pub fn image(&self, reference: &str) -> Result<ImageRecord> {
        let id = self.images.resolve(reference)?;
        self.images
            .get(&id)?
            .ok_or_else(|| CoreError::NotFound(format!("image {id}: no such image")))
    }
}

/// The layer's parent, as its row says.
fn row_parent(tx: &Connection, id: &str) -> Result<Option<LayerId>> {
    Ok(tx
        .prepare_cached("SELECT parent FROM layers WHERE id = ?1")?
        .query_row(params![id], |r| r.get::<_, Option<LayerId>>(0))
        .optional()?
        .flatten())
}

/// Layer `id` is made and no image has it as top layer and no container as
/// its layer (children are the caller's to check).
fn unused_but_for_children(tx: &Connection, id: &str) -> Result<bool> {
    if row_state(tx, id)?.is_none_or(|r| r.state != MADE) {
        return Ok(false);
    }
    let top = tx
        .prepare_cached("SELECT 1 FROM images WHERE top_layer = ?1 LIMIT 1")?
        .query_row(params![id], |_| Ok(()))
        .optional()?
        .is_some();
    let container = tx
        .prepare_cached("SELECT 1 FROM containers WHERE layer = ?1 LIMIT 1")?
        .query_row(params![id], |_| Ok(()))
        .optional()?
        .is_some();
    Ok(!top && !container && layer_owner(tx, id)?.is_none())
}

/// Who outside strata holds layer `id`: its [`OWNER_FLAG`] flag, if it has
/// one.
fn layer_owner(tx: &Connection, id: &str) -> Result<Option<String>> {
    Ok(tx
        .prepare_cached(
            "SELECT json_extract(flags, '$.\"strata.owner\"') FROM layers
             WHERE id = ?1 AND json_type(flags, '$.\"strata.owner\"') = 'text'",
        )?
        .query_row(params![id], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten())
}

/// Layer `id` is made and nothing stands on it.
fn unused(tx: &Connection, id: &str) -> Result<bool> {
    Ok(unused_but_for_children(tx, id)? && children_of(tx, id)?.is_empty())
}

/// Ends the tie of an image's layers to the import that made them.
fn settle_import(tx: &Connection, top_layer: Option<&str>) -> Result<()> {
    let mut cursor = top_layer.map(LayerId::new).transpose()?;
    while let Some(layer) = cursor {
        tx.prepare_cached("UPDATE layers SET import_session = NULL WHERE id = ?1")?
            .execute(params![layer])?;
        cursor = row_parent(tx, &layer)?;
    }
    Ok(())
}

/// The layer flag by which a program outside strata says it holds a layer
/// (its value, a string, says who in words: "containerd snapshot KEY"; a
/// value of another type is not a claim). Such a layer
/// is in use like an image's: `strata layer delete` refuses it, naming the
/// holder, and pruning keeps it and its ancestors.
pub const OWNER_FLAG: &str = "strata.owner";

/// Every layer an image or a container stands on, or an outside program
/// holds.
pub(crate) fn layers_in_use(tx: &Connection) -> Result<BTreeSet<LayerId>> {
    let parents = all_parents(tx)?;
    let mut tops: Vec<LayerId> = tx
        .prepare_cached("SELECT top_layer FROM images WHERE top_layer IS NOT NULL")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    tops.extend(
        tx.prepare_cached("SELECT layer FROM containers")?
            .query_map([], |r| r.get::<_, LayerId>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    );
    // Layers an outside program holds (containerd's snapshots).
    tops.extend(
        tx.prepare_cached(
            "SELECT id FROM layers WHERE json_type(flags, '$.\"strata.owner\"') = 'text'",
        )?
        .query_map([], |r| r.get::<_, LayerId>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?,
    );
    let mut used = BTreeSet::new();
    for top in tops {
        let mut cursor = Some(top);
        while let Some(layer) = cursor {
            if !used.insert(layer.clone()) {
                break;
            }
            cursor = parents.get(&layer).cloned().flatten();
        }
    }
    Ok(used)
}

/// The images and containers standing on layer `id`, as "image NAME" and
/// "container NAME", and the outside programs holding it or a layer on it
/// (the value of their [`OWNER_FLAG`]).
fn layer_users(tx: &Connection, id: &str) -> Result<Vec<String>> {
    let mut statement = tx.prepare_cached(
        "WITH RECURSIVE below(id) AS (
             SELECT ?1 UNION SELECT layers.id FROM layers JOIN below ON layers.parent = below.id
         )
         SELECT 'image', images.id FROM images JOIN below ON images.top_layer = below.id
         UNION ALL
         SELECT 'container', containers.id FROM containers JOIN below ON containers.layer = below.id
         UNION ALL
         SELECT 'owner', json_extract(layers.flags, '$.\"strata.owner\"') FROM layers JOIN below ON layers.id = below.id
             WHERE json_type(layers.flags, '$.\"strata.owner\"') = 'text'",
    )?;
    let found: Vec<(String, String)> = statement
        .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut users = Vec::new();
    for (kind, owner) in found {
        if kind == "owner" {
            users.push(owner);
            continue;
        }
        let kind_of = if kind == "image" {
            Kind::Image
        } else {
            Kind::Container
        };
        let shown = names_of(tx, kind_of, &owner)?
            .into_iter()
            .next()
            .unwrap_or(owner);
        users.push(format!("{kind} {shown}"));
    }
    users.sort();
    Ok(users)
}
