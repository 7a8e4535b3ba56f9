//! Layer records above the driver: each layer's parent and, for layers made
//! from a diff, what the diff was (digests, sizes, compression) and its
//! tar-split record, so the original stream can be given back bit for bit.
//!
//! On disk, in `<graphroot>/<driver>-layers/`: `layers.json` (written
//! atomically), `<id>.tar-split.gz`, and `lock` (flock, held for every change
//! and for reading, so processes see each other's complete writes).
//!
//! A layer being made is recorded as incomplete before the driver creates it
//! and completed after its contents are in; an incomplete layer found when the
//! store is opened (its maker died) is removed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_plugin_abi::{
    Capabilities, CreateOptions, ErrorKind, GraphDriver, MountOptions, WhiteoutFormat,
    validate_layer_id,
};

use crate::archive::{self, ApplyOptions, ApplyTarget, Change};
use crate::error::{CoreError, Result};
use crate::fsutil::FileLock;
use crate::mounts::MountCounts;
use crate::records::{Lookup, RecordFile, found, lookup, now, take_names};

/// What strata knows of a layer beyond the driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<DiffRecord>,
    /// Names the layer can be looked up by; each name belongs to one layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// An image layer, never written to once made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// SELinux label its mounts get unless the mount names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_label: Option<String>,
    /// Free-form text the caller keeps with the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Caller-defined flags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flags: BTreeMap<String, serde_json::Value>,
}

impl LayerRecord {
    fn new(id: &str, parent: Option<&str>) -> LayerRecord {
        LayerRecord {
            id: id.to_string(),
            parent: parent.map(str::to_string),
            created: now(),
            incomplete: false,
            diff: None,
            names: Vec::new(),
            read_only: false,
            mount_label: None,
            metadata: None,
            flags: BTreeMap::new(),
        }
    }
}

/// A layer to make: where it goes, what it is called, and what its diff must
/// be (an OCI blob's digest and diff id), checked before the layer counts as
/// made.
#[derive(Clone, Debug, Default)]
pub struct NewLayer {
    pub id: String,
    pub parent: Option<String>,
    pub options: CreateOptions,
    pub names: Vec<String>,
    pub metadata: Option<String>,
    pub flags: BTreeMap<String, serde_json::Value>,
    pub expect: Option<ExpectedDiff>,
}

/// What a diff stream must turn out to be; any field left `None` is not
/// checked.
#[derive(Clone, Debug, Default)]
pub struct ExpectedDiff {
    /// How the stream is named in errors, such as "blob sha256:ab12..".
    pub source: String,
    pub compressed_digest: Option<String>,
    pub compressed_size: Option<u64>,
    pub uncompressed_digest: Option<String>,
}

impl ExpectedDiff {
    fn check(&self, layer: &str, found: &DiffRecord) -> Result<()> {
        // In this order: a wrong size or digest says more about the blob
        // than the diff id it then cannot have.
        let checks = [
            (
                "size",
                self.compressed_size.map(|s| s.to_string()),
                found.compressed_size.to_string(),
            ),
            (
                "digest",
                self.compressed_digest.clone(),
                found.compressed_digest.clone(),
            ),
            (
                "uncompressed digest (diff id)",
                self.uncompressed_digest.clone(),
                found.uncompressed_digest.clone(),
            ),
        ];
        for (what, expected, actual) in checks {
            if let Some(expected) = expected
                && expected != actual
            {
                return Err(CoreError::Verify {
                    layer: layer.to_string(),
                    source_name: self.source.clone(),
                    what: what.to_string(),
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// The diff a layer was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffRecord {
    pub compressed_digest: String,
    pub compressed_size: u64,
    pub uncompressed_digest: String,
    pub uncompressed_size: u64,
    pub compression: String,
    /// File bytes, hard links once.
    pub size: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Records {
    layers: BTreeMap<String, LayerRecord>,
}

/// The layer records of one graph root and driver.
pub struct LayerStore {
    dir: PathBuf,
    records: RecordFile,
    counts: MountCounts,
}

impl LayerStore {
    /// Opens the records of `driver` under `graphroot` (mount counts under
    /// `runroot`), removing layers whose making was interrupted.
    pub fn open(graphroot: &Path, runroot: &Path, driver: &dyn GraphDriver) -> Result<LayerStore> {
        let records = RecordFile::open(
            graphroot.join(format!("{}-layers", driver.name())),
            "layers.json",
        )?;
        let store = LayerStore {
            dir: records.dir().to_path_buf(),
            records,
            counts: MountCounts::open(runroot, &driver.name())?,
        };
        let _lock = store.lock()?;
        let mut records = store.load()?;
        let interrupted: Vec<String> = records
            .layers
            .values()
            .filter(|r| r.incomplete)
            .map(|r| r.id.clone())
            .collect();
        let mut removed = false;
        for id in interrupted {
            // A maker still at work holds the layer's making lock.
            let Some(_making) = store.try_making_lock(&id)? else {
                continue;
            };
            store.remove_interrupted(driver, &mut records, &id)?;
            removed = true;
        }
        // Written only when something changed: an open is on every command's
        // path, and an atomic write costs an fsync.
        if removed {
            store.save(&records)?;
        }
        Ok(store)
    }

    fn lock(&self) -> Result<FileLock> {
        self.records.lock()
    }

    fn making_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.making"))
    }

    /// The lock a process holds while it makes layer `id`; `None` if another
    /// process holds it.
    fn try_making_lock(&self, id: &str) -> Result<Option<FileLock>> {
        let path = self.making_path(id);
        FileLock::try_exclusive(&path).map_err(|e| CoreError::io("lock", path, e))
    }

    fn tar_split_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.tar-split.gz"))
    }

    /// Where a layer's tar-split record is written until it is whole.
    fn partial_tar_split_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!(".{id}.tar-split.gz.partial"))
    }

    fn load(&self) -> Result<Records> {
        self.records.load()
    }

    fn save(&self, records: &Records) -> Result<()> {
        self.records.save(records)
    }

    pub fn get(&self, id: &str) -> Result<Option<LayerRecord>> {
        Ok(self.records.read::<Records>()?.layers.get(id).cloned())
    }

    pub fn list(&self) -> Result<Vec<LayerRecord>> {
        Ok(self
            .records
            .read::<Records>()?
            .layers
            .into_values()
            .collect())
    }

    /// Creates layer `id` (a child of `parent`), and applies `diff` to it if
    /// given. On any failure nothing of the layer is left: not in the driver,
    /// not in the records.
    pub fn create(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        parent: Option<&str>,
        options: &CreateOptions,
        diff: Option<&mut dyn Read>,
    ) -> Result<LayerRecord> {
        self.create_layer(
            driver,
            &NewLayer {
                id: id.to_string(),
                parent: parent.map(str::to_string),
                options: options.clone(),
                ..Default::default()
            },
            diff,
        )
    }

    /// Creates the layer `new` describes, filled from `diff` if given and
    /// checked against `new.expect`. On any failure nothing of the layer is
    /// left: not in the driver, not in the records.
    pub fn create_layer(
        &self,
        driver: &dyn GraphDriver,
        new: &NewLayer,
        diff: Option<&mut dyn Read>,
    ) -> Result<LayerRecord> {
        let id = new.id.as_str();
        let parent = new.parent.as_deref();
        validate_layer_id(id).map_err(|e| e.context(format!("create layer {id}")))?;
        let making = {
            let _lock = self.lock()?;
            let mut records = self.load()?;
            if let Some(existing) = records.layers.get(id) {
                let message = if existing.incomplete {
                    format!("create layer {id}: another process is making it")
                } else {
                    format!("create layer {id}: layer exists")
                };
                return Err(if existing.incomplete {
                    strata_plugin_abi::DriverError::busy(message)
                } else {
                    strata_plugin_abi::DriverError::already_exists(message)
                }
                .into());
            }
            let parent_made = |parent: &str| match records.layers.get(parent) {
                Some(record) => Ok::<bool, CoreError>(!record.incomplete),
                // Made before records were kept.
                None => Ok(driver.exists(parent)?),
            };
            if let Some(parent) = parent
                && !parent_made(parent)?
            {
                return Err(strata_plugin_abi::DriverError::not_found(format!(
                    "create layer {id}: parent {parent} does not exist"
                ))
                .into());
            }
            // Held until the layer is complete, so that no other process takes
            // it for the leftover of a dead maker.
            let making = self.try_making_lock(id)?.ok_or_else(|| {
                CoreError::from(strata_plugin_abi::DriverError::busy(format!(
                    "create layer {id}: another process is making it"
                )))
            })?;
            take_names(
                records.layers.values_mut().map(|r| &mut r.names),
                &new.names,
            );
            let mut record = LayerRecord::new(id, parent);
            record.incomplete = true;
            record.names = new.names.clone();
            record.read_only = !new.options.read_write;
            record.mount_label = new.options.mount_label.clone();
            record.metadata = new.metadata.clone();
            record.flags = new.flags.clone();
            records.layers.insert(id.to_string(), record);
            self.save(&records)?;
            making
        };
        // Only a layer this call made is taken away on failure: a create the
        // driver refused (the id taken outside the records) must not remove
        // the layer that was already there.
        let mut driver_made = false;
        let made = driver
            .create(id, parent, &new.options)
            .map_err(CoreError::from)
            .and_then(|()| {
                driver_made = true;
                match diff {
                    Some(diff) => {
                        // A digest to check catches any cut in the stream.
                        let verified = new
                            .expect
                            .as_ref()
                            .is_some_and(|e| e.uncompressed_digest.is_some());
                        let applied = self.apply_into(driver, id, diff, verified)?;
                        if let Some(expect) = &new.expect {
                            expect.check(id, &applied)?;
                        }
                        Ok(Some(applied))
                    }
                    None => Ok(None),
                }
            });
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let _ = fs::remove_file(self.making_path(id));
        drop(making);
        match made {
            Ok(diff) => {
                // `delete` refuses a layer being made, but a store opened by
                // an older strata may not have: say so rather than panic.
                let Some(record) = records.layers.get_mut(id) else {
                    if let Err(e) = driver.remove(id)
                        && e.kind() != ErrorKind::NotFound
                    {
                        tracing::warn!(layer = id, error = %e, "could not remove a layer whose record went while it was made");
                    }
                    let _ = fs::remove_file(self.tar_split_path(id));
                    return Err(strata_plugin_abi::DriverError::not_found(format!(
                        "create layer {id}: its record was deleted while it was being made"
                    ))
                    .into());
                };
                record.incomplete = false;
                record.diff = diff;
                let record = record.clone();
                self.save(&records)?;
                Ok(record)
            }
            Err(err) => {
                if driver_made
                    && let Err(e) = driver.remove(id)
                    && e.kind() != ErrorKind::NotFound
                {
                    tracing::warn!(layer = id, error = %e, "could not remove a layer whose making failed");
                }
                let _ = fs::remove_file(self.tar_split_path(id));
                records.layers.remove(id);
                self.save(&records)?;
                Err(err)
            }
        }
    }

    /// Waits while another process is making layer `id`; returns its record
    /// once made, or `None` if there is none (never made, or its making
    /// failed or was interrupted).
    pub fn wait_until_made(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
    ) -> Result<Option<LayerRecord>> {
        loop {
            match self.get(id)? {
                Some(record) if record.incomplete => {
                    let path = self.making_path(id);
                    // The maker holds this lock until its record is final.
                    // Opened without creating it: a maker that finished has
                    // removed it, and making it again would leave it behind.
                    drop(
                        FileLock::exclusive_existing(&path)
                            .map_err(|e| CoreError::io("lock", path, e))?,
                    );
                    let _lock = self.lock()?;
                    let mut records = self.load()?;
                    if records.layers.get(id).is_some_and(|r| r.incomplete)
                        && let Some(_making) = self.try_making_lock(id)?
                    {
                        // Its maker died: take the leftover away as open does.
                        self.remove_interrupted(driver, &mut records, id)?;
                        self.save(&records)?;
                        return Ok(None);
                    }
                }
                other => return Ok(other),
            }
        }
    }

    fn remove_interrupted(
        &self,
        driver: &dyn GraphDriver,
        records: &mut Records,
        id: &str,
    ) -> Result<()> {
        tracing::warn!(layer = %id, "removing a layer whose making was interrupted");
        match driver.remove(id) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let _ = fs::remove_file(self.tar_split_path(id));
        let _ = fs::remove_file(self.partial_tar_split_path(id));
        let _ = fs::remove_file(self.making_path(id));
        records.layers.remove(id);
        Ok(())
    }

    /// Applies `diff` to the existing layer `id` and records it as the layer's
    /// diff.
    pub fn apply(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        diff: &mut dyn Read,
    ) -> Result<DiffRecord> {
        if !driver.exists(id)? {
            return Err(strata_plugin_abi::DriverError::not_found(format!(
                "apply to layer {id}: no such layer"
            ))
            .into());
        }
        // A read-only layer is an image's: writing it would change every
        // image on it (`Store::apply_to_layer` names them).
        if self.get(id)?.is_some_and(|r| r.read_only) {
            return Err(strata_plugin_abi::DriverError::invalid_input(format!(
                "apply to layer {id}: the layer is read-only"
            ))
            .into());
        }
        let applied = self.apply_into(driver, id, diff, false)?;
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let record = records
            .layers
            .entry(id.to_string())
            .or_insert_with(|| LayerRecord::new(id, None));
        record.diff = Some(applied.clone());
        self.save(&records)?;
        Ok(applied)
    }

    fn apply_into(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        diff: &mut dyn Read,
        verified: bool,
    ) -> Result<DiffRecord> {
        let files = LayerFiles::open(driver, &self.counts, id)?;
        // Into a native diff, directories written into take their metadata
        // from the tree below: the parent, mounted for the length of the apply.
        let parent = match (&files, self.get(id)?.and_then(|r| r.parent)) {
            (LayerFiles::Native(_), Some(parent)) => {
                match mount_counted(driver, &self.counts, &parent) {
                    Ok(path) => Some((parent, path)),
                    Err(e) => {
                        let _ = files.close();
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let lower = parent.as_ref().map(|(_, path)| path.as_path());
        let result = self.apply_at(files.path(), files.target(), lower, verified, id, diff);
        if let Some((parent, _)) = &parent
            && let Err(e) = unmount_counted(driver, &self.counts, parent)
        {
            tracing::warn!(layer = %parent, error = %e, "could not unmount the parent after an apply");
        }
        let closed = files.close();
        let report = result?;
        closed?;
        Ok(report)
    }

    fn apply_at(
        &self,
        root: &Path,
        target: ApplyTarget,
        lower: Option<&Path>,
        verified: bool,
        id: &str,
        diff: &mut dyn Read,
    ) -> Result<DiffRecord> {
        let split_path = self.tar_split_path(id);
        let partial = self.partial_tar_split_path(id);
        let file = fs::File::create(&partial).map_err(|e| CoreError::io("create", &partial, e))?;
        let mut gz =
            flate2::write::GzEncoder::new(io::BufWriter::new(file), flate2::Compression::fast());
        let applied = archive::apply_layer(
            root,
            diff,
            &ApplyOptions {
                target,
                lower: lower.map(Path::to_path_buf),
                require_end_of_archive: !verified,
                ..Default::default()
            },
            Some(&mut gz),
        );
        let report = match applied {
            Ok(report) => report,
            Err(e) => {
                let _ = fs::remove_file(&partial);
                return Err(CoreError::Archive {
                    layer: id.to_string(),
                    source: e,
                });
            }
        };
        let finish = gz
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .and_then(|()| fs::rename(&partial, &split_path));
        finish.map_err(|e| CoreError::io("write", &split_path, e))?;
        Ok(DiffRecord {
            compressed_digest: report.compressed_digest.to_string(),
            compressed_size: report.compressed_size,
            uncompressed_digest: report.uncompressed_digest.to_string(),
            uncompressed_size: report.uncompressed_size,
            compression: report.compression.to_string(),
            size: report.size,
        })
    }

    /// The id of the layer `reference` names: an id, a name, or a prefix of
    /// exactly one id. An ambiguous prefix is an error that lists the matches.
    /// A layer the driver has but the records do not (made before records
    /// were kept) is found by its full id.
    pub fn resolve(&self, driver: &dyn GraphDriver, reference: &str) -> Result<String> {
        let records: Records = self.records.read()?;
        let entries = records
            .layers
            .values()
            .map(|r| (r.id.as_str(), r.names.as_slice()));
        match lookup(entries, reference) {
            Lookup::Missing if !reference.is_empty() && driver.exists(reference)? => {
                Ok(reference.to_string())
            }
            other => found("layer", reference, other),
        }
    }

    /// Gives layer `id` these names, taking any of them from the layer that
    /// had it (names are unique).
    pub fn set_names(&self, id: &str, names: &[String]) -> Result<LayerRecord> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        if !records.layers.contains_key(id) {
            return Err(strata_plugin_abi::DriverError::not_found(format!(
                "set names of layer {id}: no such layer"
            ))
            .into());
        }
        take_names(records.layers.values_mut().map(|r| &mut r.names), names);
        let record = records.layers.get_mut(id).expect("checked above");
        record.names = names.to_vec();
        let record = record.clone();
        self.save(&records)?;
        Ok(record)
    }

    /// Replaces the layer's free-form metadata.
    pub fn set_metadata(&self, id: &str, metadata: Option<String>) -> Result<LayerRecord> {
        self.update(id, "set metadata of", |r| r.metadata = metadata)
    }

    /// Sets flag `key` (or clears it with `None`).
    pub fn set_flag(
        &self,
        id: &str,
        key: &str,
        value: Option<serde_json::Value>,
    ) -> Result<LayerRecord> {
        self.update(id, "set a flag of", |r| match value {
            Some(value) => {
                r.flags.insert(key.to_string(), value);
            }
            None => {
                r.flags.remove(key);
            }
        })
    }

    fn update(
        &self,
        id: &str,
        operation: &str,
        change: impl FnOnce(&mut LayerRecord),
    ) -> Result<LayerRecord> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let record = records.layers.get_mut(id).ok_or_else(|| {
            CoreError::from(strata_plugin_abi::DriverError::not_found(format!(
                "{operation} layer {id}: no such layer"
            )))
        })?;
        change(record);
        let record = record.clone();
        self.save(&records)?;
        Ok(record)
    }

    /// Mounts layer `id`, counted across processes: a second mount returns
    /// the same path and only the last unmount unmounts.
    pub fn mount(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        options: &MountOptions,
    ) -> Result<PathBuf> {
        // The layer's own label is read before the counts are locked: the
        // store's lock order is records, then mount counts (a delete holds
        // the records while it forgets a layer's count), so reading records
        // under the counts' lock could deadlock against it.
        let mut options = options.clone();
        if options.mount_label.is_none() {
            options.mount_label = self.get(id)?.and_then(|r| r.mount_label);
        }
        self.counts.acquire(id, || Ok(driver.get(id, &options)?))
    }

    /// Releases one mount of the layer named by id or by its mount path;
    /// returns the layer's id.
    pub fn unmount(&self, driver: &dyn GraphDriver, id_or_path: &str) -> Result<String> {
        match self.counts.release(id_or_path, |id| Ok(driver.put(id)?))? {
            Some(id) => Ok(id),
            None => Err(strata_plugin_abi::DriverError::not_found(format!(
                "unmount {id_or_path}: not a mounted layer or mount path"
            ))
            .into()),
        }
    }

    /// How many mounts of layer `id` are held.
    pub fn mount_count(&self, id: &str) -> Result<u32> {
        self.counts.count(id)
    }

    /// Removes layer `id`; refused while another layer has it as parent.
    pub fn delete(&self, driver: &dyn GraphDriver, id: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        if records.layers.get(id).is_some_and(|r| r.incomplete) {
            // Being made: by a live process (refused), or by a dead one
            // (its leftover goes, as the next open would take it).
            return match self.try_making_lock(id)? {
                None => Err(strata_plugin_abi::DriverError::busy(format!(
                    "delete layer {id}: another process is making it"
                ))
                .into()),
                Some(_making) => {
                    self.remove_interrupted(driver, &mut records, id)?;
                    self.save(&records)
                }
            };
        }
        let children: Vec<&str> = records
            .layers
            .values()
            .filter(|r| r.parent.as_deref() == Some(id))
            .map(|r| r.id.as_str())
            .collect();
        if !children.is_empty() {
            return Err(strata_plugin_abi::DriverError::busy(format!(
                "delete layer {id}: layers {} are its children",
                children.join(", ")
            ))
            .into());
        }
        // The driver unmounts what is mounted as it removes the layer.
        driver.remove(id)?;
        self.counts.forget(id)?;
        let _ = fs::remove_file(self.tar_split_path(id));
        records.layers.remove(id);
        self.save(&records)
    }

    /// The layer's changes against its parent.
    pub fn changes(&self, driver: &dyn GraphDriver, id: &str) -> Result<Vec<Change>> {
        let parent = self.get(id)?.and_then(|r| r.parent);
        // A native diff holds exactly the changes: read it instead of
        // comparing whole trees (the parent is mounted only to tell added
        // from modified).
        if let Some(native) = native_dir(driver, id)? {
            return match parent {
                Some(parent) => {
                    let lower = mount_counted(driver, &self.counts, &parent)?;
                    let found = archive::overlay_changes(&native, Some(&lower));
                    unmount_counted(driver, &self.counts, &parent)?;
                    found.map_err(|e| CoreError::io("read the changes in", native, e))
                }
                None => archive::overlay_changes(&native, None)
                    .map_err(|e| CoreError::io("read the changes in", native, e)),
            };
        }
        with_trees(
            driver,
            &self.counts,
            id,
            parent.as_deref(),
            |layer, parent| {
                archive::changes(layer, parent).map_err(|e| CoreError::io("compare", layer, e))
            },
        )
    }

    /// Writes the layer's diff against its parent to `out`. A layer made from a
    /// diff gives back that diff's exact bytes (uncompressed) from its
    /// tar-split record; otherwise, or if its files changed since, the diff is
    /// generated from the trees.
    pub fn diff(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        out: &mut dyn Write,
    ) -> Result<DiffSource> {
        let record = self.get(id)?;
        let parent = record.as_ref().and_then(|r| r.parent.clone());
        let split_path = self.tar_split_path(id);
        if record.as_ref().is_some_and(|r| r.diff.is_some()) && split_path.exists() {
            let files = LayerFiles::open(driver, &self.counts, id)?;
            let root = files.path().to_path_buf();
            let rebuild = |out: &mut dyn Write| {
                fs::File::open(&split_path).and_then(|f| {
                    archive::tarsplit::reassemble(
                        BufReader::with_capacity(1 << 20, flate2::read::GzDecoder::new(f)),
                        &root,
                        out,
                    )
                })
            };
            // A read-only layer's files cannot have changed since apply: its
            // stream goes straight out, and a failure part way is an error
            // (corruption), not a reason to fall back.
            if record.as_ref().is_some_and(|r| r.read_only) {
                let rebuilt = rebuild(out);
                let _ = files.close();
                return rebuilt.map(|_| DiffSource::Original).map_err(|e| {
                    CoreError::io("rebuild the original diff of", PathBuf::from(id), e)
                });
            }
            // A writable layer's files may have changed, which is found only
            // part way: rebuild into a temporary file first, so `out` gets a
            // whole stream or, failing that, the generated diff.
            let mut staged = tempfile::tempfile_in(&self.dir)
                .map_err(|e| CoreError::io("create a temporary file in", &self.dir, e))?;
            let rebuilt = rebuild(&mut staged);
            let _ = files.close();
            match rebuilt {
                Ok(_) => {
                    use std::io::Seek;
                    staged
                        .rewind()
                        .map_err(|e| CoreError::io("read", &self.dir, e))?;
                    io::copy(&mut staged, out)
                        .map_err(|e| CoreError::io("write the diff of", PathBuf::from(id), e))?;
                    return Ok(DiffSource::Original);
                }
                Err(e) => {
                    tracing::warn!(layer = id, error = %e, "the original diff cannot be rebuilt; generating one");
                }
            }
        }
        // Generated from the same changes `changes` gives, exported from the
        // tree they describe (the native diff directory, or the mounted layer).
        let mut export = |root: &Path, list: &[Change]| {
            archive::export_changes(root, list, &mut *out)
                .map(|_| DiffSource::Generated)
                .map_err(|e| CoreError::io("export", root, e))
        };
        if let Some(native) = native_dir(driver, id)? {
            let list = self.changes(driver, id)?;
            return export(&native, &list);
        }
        with_trees(
            driver,
            &self.counts,
            id,
            parent.as_deref(),
            |layer, parent| {
                let list = archive::changes(layer, parent)
                    .map_err(|e| CoreError::io("compare", layer, e))?;
                export(layer, &list)
            },
        )
    }

    /// Writes the diff that turns layer `from` (or an empty tree, for `None`)
    /// into layer `to`. Against `to`'s own parent this is [`diff`](Self::diff),
    /// the original bytes when there are any; against anything else it is
    /// generated by comparing the two trees.
    pub fn diff_between(
        &self,
        driver: &dyn GraphDriver,
        from: Option<&str>,
        to: &str,
        out: &mut dyn Write,
    ) -> Result<DiffSource> {
        let parent = self.get(to)?.and_then(|r| r.parent);
        if from == parent.as_deref() {
            return self.diff(driver, to, out);
        }
        with_trees(driver, &self.counts, to, from, |layer, base| {
            let list =
                archive::changes(layer, base).map_err(|e| CoreError::io("compare", layer, e))?;
            archive::export_changes(layer, &list, &mut *out)
                .map(|_| DiffSource::Generated)
                .map_err(|e| CoreError::io("export", layer, e))
        })
    }

    /// The size in bytes of the layer's diff against its parent, as
    /// [`diff`](Self::diff) would write it.
    pub fn diff_size(&self, driver: &dyn GraphDriver, id: &str) -> Result<u64> {
        if let Some(diff) = self.get(id)?.and_then(|r| r.diff)
            && self.tar_split_path(id).exists()
        {
            return Ok(diff.uncompressed_size);
        }
        let mut counter = CountingSink(0);
        self.diff(driver, id, &mut counter)?;
        Ok(counter.0)
    }
}

/// Where a layer's own files are written and read by the layer format: its
/// native diff directory when the driver keeps one (in overlay's whiteout
/// convention, no mount needed, and a read-only layer can still be filled),
/// otherwise its mounted tree.
enum LayerFiles<'d> {
    Native(PathBuf),
    Mounted {
        driver: &'d dyn GraphDriver,
        counts: &'d MountCounts,
        id: String,
        path: PathBuf,
    },
}

impl<'d> LayerFiles<'d> {
    fn open(driver: &'d dyn GraphDriver, counts: &'d MountCounts, id: &str) -> Result<Self> {
        if let Some(native) = native_dir(driver, id)? {
            return Ok(LayerFiles::Native(native));
        }
        let path = mount_counted(driver, counts, id)?;
        Ok(LayerFiles::Mounted {
            driver,
            counts,
            id: id.to_string(),
            path,
        })
    }

    fn path(&self) -> &Path {
        match self {
            LayerFiles::Native(path) | LayerFiles::Mounted { path, .. } => path,
        }
    }

    fn target(&self) -> ApplyTarget {
        match self {
            LayerFiles::Native(_) => ApplyTarget::OverlayUpper,
            LayerFiles::Mounted { .. } => ApplyTarget::Tree,
        }
    }

    fn close(self) -> Result<()> {
        match self {
            LayerFiles::Native(_) => Ok(()),
            LayerFiles::Mounted {
                driver, counts, id, ..
            } => unmount_counted(driver, counts, &id),
        }
    }
}

struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a diff's bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffSource {
    /// The exact stream the layer was made from.
    Original,
    /// Generated by comparing the layer with its parent.
    Generated,
}

/// The layer's native diff directory, when the driver keeps one in overlay's
/// whiteout convention and it is exact now.
fn native_dir(driver: &dyn GraphDriver, id: &str) -> Result<Option<PathBuf>> {
    if !driver.capabilities().contains(Capabilities::NATIVE_DIFF) {
        return Ok(None);
    }
    Ok(driver
        .native_diff(id)?
        .filter(|native| native.whiteouts == WhiteoutFormat::Overlay)
        .map(|native| native.path))
}

/// Mounts through the shared counts, so a layer someone else has mounted is
/// not unmounted under them.
fn mount_counted(driver: &dyn GraphDriver, counts: &MountCounts, id: &str) -> Result<PathBuf> {
    counts.acquire(id, || Ok(driver.get(id, &MountOptions::default())?))
}

fn unmount_counted(driver: &dyn GraphDriver, counts: &MountCounts, id: &str) -> Result<()> {
    counts.release(id, |id| Ok(driver.put(id)?)).map(|_| ())
}

/// Mounts the layer (and its parent) for the length of `f`.
fn with_trees<T>(
    driver: &dyn GraphDriver,
    counts: &MountCounts,
    id: &str,
    parent: Option<&str>,
    f: impl FnOnce(&Path, Option<&Path>) -> Result<T>,
) -> Result<T> {
    let layer = mount_counted(driver, counts, id)?;
    let parent_path = match parent.map(|p| mount_counted(driver, counts, p)) {
        Some(Ok(path)) => Some(path),
        Some(Err(e)) => {
            let _ = unmount_counted(driver, counts, id);
            return Err(e);
        }
        None => None,
    };
    let result = f(&layer, parent_path.as_deref());
    if let Some(parent) = parent {
        let _ = unmount_counted(driver, counts, parent);
    }
    let _ = unmount_counted(driver, counts, id);
    result
}
