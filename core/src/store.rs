//! The store a container runtime uses: one driver, and the layer, image and
//! container records above it, with the operations that span them (a
//! container on an image, deleting an image and the layers only it used).
//!
//! Layers are shared: two images with the same first layers share them, and
//! a container's layer sits on its image's top layer. So that a layer is never
//! deleted while some process is about to build on it, anything that builds
//! on existing layers (an import, a container create) holds the graph root's
//! `layers-in-use` lock shared for as long as it works, and anything that
//! deletes layers another record might want (image delete, the clean-up of a
//! failed import) holds it exclusively.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use strata_plugin_abi::{CreateOptions, GraphDriver, MountOptions};

use crate::config::Config;
use crate::containers::{ContainerRecord, ContainerStore};
use crate::error::{CoreError, Result};
use crate::fsutil::FileLock;
use crate::images::{ImageFamily, ImageRecord, ImageStore};
use crate::layers::{DiffRecord, LayerRecord, LayerStore, NewLayer};
use crate::records::{now, random_id};

pub struct Store {
    driver: Box<dyn GraphDriver>,
    graphroot: PathBuf,
    pub layers: LayerStore,
    pub images: ImageStore,
    pub containers: ContainerStore,
}

/// The flag an import puts on the layers it makes: its ticket's name.
pub const IMPORT_FLAG: &str = "strata.import";

/// An import in progress (see [`Store::import_ticket`]); the ticket file is
/// removed when it is dropped, however the import ended.
pub(crate) struct ImportTicket {
    pub(crate) name: String,
    path: PathBuf,
    _lock: FileLock,
}

impl Drop for ImportTicket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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

    /// Opens the records of a driver already started on `graphroot`.
    pub fn with_driver(
        graphroot: &Path,
        runroot: &Path,
        driver: Box<dyn GraphDriver>,
    ) -> Result<Store> {
        let name = driver.name();
        let store = Store {
            layers: LayerStore::open(graphroot, runroot, driver.as_ref())?,
            images: ImageStore::open(graphroot, &name)?,
            containers: ContainerStore::open(graphroot, &name)?,
            graphroot: graphroot.to_path_buf(),
            driver,
        };
        store.collect_abandoned_imports()?;
        Ok(store)
    }

    fn tickets_dir(&self) -> PathBuf {
        self.graphroot
            .join(format!("{}-imports", self.driver.name()))
    }

    /// Starts an import: a ticket (a locked file) its layers are flagged
    /// with, so that if the importing process dies, the layers it made for an
    /// image it never recorded are found and removed.
    pub(crate) fn import_ticket(&self) -> Result<ImportTicket> {
        let dir = self.tickets_dir();
        std::fs::create_dir_all(&dir).map_err(|e| CoreError::io("create", &dir, e))?;
        // Locked under a temporary name and renamed into place, so nobody
        // ever sees the ticket unlocked while its import lives. Another
        // process's collection may find the temporary file in the instant
        // between its creation and its lock, take it for a dead maker's and
        // delete it: the rename then finds nothing, and we start again under
        // a new name (three such instants in a row do not happen).
        let mut attempt = 0;
        loop {
            attempt += 1;
            let name = random_id()?;
            let temp = dir.join(format!(".{name}"));
            let lock = FileLock::exclusive(&temp).map_err(|e| CoreError::io("lock", &temp, e))?;
            let path = dir.join(&name);
            match std::fs::rename(&temp, &path) {
                Ok(()) => {
                    return Ok(ImportTicket {
                        name,
                        path,
                        _lock: lock,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 4 => continue,
                Err(e) => return Err(CoreError::io("create", &path, e)),
            }
        }
    }

    /// Removes the layers of imports whose process died before recording
    /// their image (unless something has come to use them). Skipped, to be
    /// done at a later open, while another process builds on layers.
    fn collect_abandoned_imports(&self) -> Result<()> {
        let dir = self.tickets_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut dead = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A ticket being made, or one whose maker died before the
                // rename: it flags no layer.
                if FileLock::try_exclusive(&path).ok().flatten().is_some() {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            if let Ok(Some(lock)) = FileLock::try_exclusive(&path) {
                dead.push((name, path, lock));
            }
        }
        if dead.is_empty() {
            return Ok(());
        }
        let path = self.in_use_path();
        let Some(_exclusive) =
            FileLock::try_exclusive(&path).map_err(|e| CoreError::io("lock", &path, e))?
        else {
            return Ok(());
        };
        for (name, path, _lock) in dead {
            let parents = self.layer_parents()?;
            let depth = |id: &str| {
                let mut depth = 0;
                let mut cursor = parents.get(id).cloned().flatten();
                while let Some(parent) = cursor {
                    depth += 1;
                    cursor = parents.get(&parent).cloned().flatten();
                }
                depth
            };
            let mut ids: Vec<String> = self
                .layers
                .list()?
                .into_iter()
                .filter(|l| {
                    l.flags.get(IMPORT_FLAG).and_then(|v| v.as_str()) == Some(name.as_str())
                })
                .map(|l| l.id)
                .collect();
            // Children before parents.
            ids.sort_by_key(|id| std::cmp::Reverse(depth(id)));
            let deleted = self.release_layers(&ids)?;
            tracing::warn!(ticket = %name, layers = ?deleted, "removed the layers of an import whose process died");
            let _ = std::fs::remove_file(&path);
        }
        Ok(())
    }

    pub fn driver(&self) -> &dyn GraphDriver {
        self.driver.as_ref()
    }

    fn in_use_path(&self) -> PathBuf {
        self.graphroot
            .join(format!("{}-layers-in-use.lock", self.driver.name()))
    }

    /// Held while building on layers that exist: none of them is deleted
    /// until it is dropped. Drop it before deleting an image or a layer:
    /// those wait for every hold, this one included.
    pub fn hold_layers(&self) -> Result<LayersInUse> {
        let path = self.in_use_path();
        FileLock::shared(&path)
            .map(LayersInUse)
            .map_err(|e| CoreError::io("lock", path, e))
    }

    /// Held while deleting layers: waits until nobody builds on any.
    fn hold_layers_exclusively(&self) -> Result<LayersInUse> {
        let path = self.in_use_path();
        FileLock::exclusive(&path)
            .map(LayersInUse)
            .map_err(|e| CoreError::io("lock", path, e))
    }

    /// Every layer an image or a container stands on (top layers, container
    /// layers and all their ancestors).
    pub fn layers_in_use(&self) -> Result<BTreeSet<String>> {
        let layers = self.layer_parents()?;
        let mut used = BTreeSet::new();
        let tops = self
            .images
            .list()?
            .into_iter()
            .filter_map(|i| i.top_layer)
            .chain(self.containers.list()?.into_iter().map(|c| c.layer));
        for top in tops {
            let mut cursor = Some(top);
            while let Some(layer) = cursor {
                if !used.insert(layer.clone()) {
                    break;
                }
                cursor = layers.get(&layer).cloned().flatten();
            }
        }
        Ok(used)
    }

    fn layer_parents(&self) -> Result<std::collections::BTreeMap<String, Option<String>>> {
        Ok(self
            .layers
            .list()?
            .into_iter()
            .map(|r| (r.id, r.parent))
            .collect())
    }

    /// The image's layers, bottom first.
    pub fn image_layers(&self, image: &ImageRecord) -> Result<Vec<LayerRecord>> {
        let mut chain = Vec::new();
        let mut cursor = image.top_layer.clone();
        while let Some(id) = cursor {
            let record = self.layers.get(&id)?.ok_or_else(|| {
                CoreError::Image(format!(
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

    /// Parent, child and head relations between the images.
    pub fn image_family(&self) -> Result<(Vec<ImageRecord>, ImageFamily)> {
        let images = self.images.list()?;
        let parents = self.layer_parents()?;
        let family = ImageFamily::new(&images, |l| parents.get(l).cloned().flatten());
        Ok((images, family))
    }

    /// Deletes layers of `candidates` (top first) that no image or container
    /// uses and no other layer stands on; returns the ones deleted. Call with
    /// the layers-in-use lock held exclusively.
    fn release_layers(&self, candidates: &[String]) -> Result<Vec<String>> {
        let used = self.layers_in_use()?;
        // How many layers stand on each layer, kept as deletions go on (a
        // parent is freed once its last child is deleted).
        let parents = self.layer_parents()?;
        let mut children: std::collections::BTreeMap<&str, usize> = Default::default();
        for parent in parents.values().flatten() {
            *children.entry(parent).or_default() += 1;
        }
        let mut deleted = Vec::new();
        for id in candidates {
            if used.contains(id) || children.get(id.as_str()).is_some_and(|n| *n > 0) {
                continue;
            }
            self.layers.delete(self.driver(), id)?;
            if let Some(Some(parent)) = parents.get(id)
                && let Some(n) = children.get_mut(parent.as_str())
            {
                *n -= 1;
            }
            deleted.push(id.clone());
        }
        Ok(deleted)
    }

    /// Takes back layers an import made before it failed, unless another
    /// import or container has come to use them meanwhile.
    pub(crate) fn discard_made_layers(&self, hold: LayersInUse, made: &[String]) {
        drop(hold);
        let result = self.hold_layers_exclusively().and_then(|_exclusive| {
            let top_first: Vec<String> = made.iter().rev().cloned().collect();
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

    /// Deletes image `reference` and then the layers no other image or
    /// container uses; refused while a container uses the image. Returns the
    /// image and the layers deleted.
    pub fn delete_image(&self, reference: &str) -> Result<(ImageRecord, Vec<String>)> {
        let _exclusive = self.hold_layers_exclusively()?;
        let id = self.images.resolve(reference)?;
        let users: Vec<String> = self
            .containers
            .list()?
            .into_iter()
            .filter(|c| c.image == id)
            .map(|c| c.names.first().cloned().unwrap_or(c.id))
            .collect();
        if !users.is_empty() {
            return Err(strata_plugin_abi::DriverError::busy(format!(
                "delete image {id}: containers {} use it",
                users.join(", ")
            ))
            .into());
        }
        let image = self.images.get(&id)?.ok_or_else(|| {
            CoreError::from(strata_plugin_abi::DriverError::not_found(format!(
                "delete image {id}: no such image"
            )))
        })?;
        let chain: Vec<String> = self
            .image_layers(&image)
            .unwrap_or_default()
            .into_iter()
            .rev()
            .map(|r| r.id)
            .collect();
        self.images.delete(&id)?;
        let deleted = self.release_layers(&chain)?;
        Ok((image, deleted))
    }

    /// The images and containers that stand on layer `id` (it is their top
    /// layer or below it), as "image NAME" / "container NAME".
    pub fn layer_users(&self, id: &str) -> Result<Vec<String>> {
        let parents = self.layer_parents()?;
        let stands_on = |top: &str| {
            let mut cursor = Some(top.to_string());
            while let Some(layer) = cursor {
                if layer == id {
                    return true;
                }
                cursor = parents.get(&layer).cloned().flatten();
            }
            false
        };
        let mut users: Vec<String> = Vec::new();
        for image in self.images.list()? {
            if image.top_layer.as_deref().is_some_and(stands_on) {
                users.push(format!(
                    "image {}",
                    image.names.first().unwrap_or(&image.id)
                ));
            }
        }
        for container in self.containers.list()? {
            if stands_on(&container.layer) {
                users.push(format!(
                    "container {}",
                    container.names.first().unwrap_or(&container.id)
                ));
            }
        }
        Ok(users)
    }

    /// Deletes layer `id`, refused while an image or container stands on it
    /// (delete those instead) or another layer has it as parent.
    pub fn delete_layer(&self, id: &str) -> Result<()> {
        let _exclusive = self.hold_layers_exclusively()?;
        let users = self.layer_users(id)?;
        if !users.is_empty() {
            return Err(strata_plugin_abi::DriverError::busy(format!(
                "delete layer {id}: used by {}",
                users.join(", ")
            ))
            .into());
        }
        self.layers.delete(self.driver(), id)
    }

    /// Applies a layer tar to the existing layer `id`. A read-only layer
    /// (an image's) is refused, naming the images and containers that stand
    /// on it: writing it would change all of them at once, while their mounts
    /// still show it read-only.
    pub fn apply_to_layer(&self, id: &str, diff: &mut dyn Read) -> Result<DiffRecord> {
        match self.layers.apply(self.driver(), id, diff) {
            // The layer store refuses a read-only layer; say who stands on it.
            Err(refused) if self.layers.get(id)?.is_some_and(|r| r.read_only) => {
                let users = self.layer_users(id)?;
                if users.is_empty() {
                    return Err(refused);
                }
                Err(strata_plugin_abi::DriverError::invalid_input(format!(
                    "apply to layer {id}: the layer is read-only; used by {}",
                    users.join(", ")
                ))
                .into())
            }
            other => other,
        }
    }

    /// Makes a container on image `image_ref`: a read-write layer on the
    /// image's top layer.
    pub fn create_container(
        &self,
        image_ref: &str,
        names: &[String],
        options: &CreateOptions,
    ) -> Result<ContainerRecord> {
        let _hold = self.hold_layers()?;
        let image_id = self.images.resolve(image_ref)?;
        let image = self.images.get(&image_id)?.ok_or_else(|| {
            CoreError::from(strata_plugin_abi::DriverError::not_found(format!(
                "image {image_id}: no such image"
            )))
        })?;
        // A name another container has is refused rather than moved: taking
        // a live container's name would surprise whoever uses it.
        for name in names {
            if let Ok(other) = self.containers.resolve(name)
                && self
                    .containers
                    .get(&other)?
                    .is_some_and(|c| c.names.contains(name))
            {
                return Err(strata_plugin_abi::DriverError::already_exists(format!(
                    "container name '{name}' is taken by container {other}"
                ))
                .into());
            }
        }
        let id = random_id()?;
        let options = CreateOptions {
            read_write: true,
            ..options.clone()
        };
        let layer = self.layers.create_layer(
            self.driver(),
            &NewLayer {
                id: id.clone(),
                parent: image.top_layer.clone(),
                options,
                ..Default::default()
            },
            None,
        )?;
        let record = ContainerRecord {
            id: id.clone(),
            names: names.to_vec(),
            image: image.id,
            layer: layer.id,
            created: now(),
            metadata: None,
        };
        if let Err(e) = self.containers.create(&record) {
            let _ = self.layers.delete(self.driver(), &id);
            return Err(e);
        }
        Ok(record)
    }

    /// Mounts the container's layer (counted) and returns the path.
    pub fn mount_container(&self, reference: &str, options: &MountOptions) -> Result<PathBuf> {
        let container = self.container(reference)?;
        self.layers.mount(self.driver(), &container.layer, options)
    }

    /// Releases one mount of the container named by id, name, prefix or mount
    /// path; returns the container's id.
    pub fn unmount_container(&self, reference: &str) -> Result<String> {
        if reference.starts_with('/') {
            let layer = self.layers.unmount(self.driver(), reference)?;
            return Ok(layer);
        }
        let container = self.container(reference)?;
        self.layers.unmount(self.driver(), &container.layer)?;
        Ok(container.id)
    }

    /// Deletes the container and its layer (unmounted first).
    pub fn delete_container(&self, reference: &str) -> Result<ContainerRecord> {
        let container = self.container(reference)?;
        self.layers.delete(self.driver(), &container.layer)?;
        self.containers.delete(&container.id)
    }

    pub fn container(&self, reference: &str) -> Result<ContainerRecord> {
        let id = self.containers.resolve(reference)?;
        self.containers.get(&id)?.ok_or_else(|| {
            CoreError::from(strata_plugin_abi::DriverError::not_found(format!(
                "container {id}: no such container"
            )))
        })
    }

    pub fn image(&self, reference: &str) -> Result<ImageRecord> {
        let id = self.images.resolve(reference)?;
        self.images.get(&id)?.ok_or_else(|| {
            CoreError::from(strata_plugin_abi::DriverError::not_found(format!(
                "image {id}: no such image"
            )))
        })
    }
}
