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
use crate::fsutil::{FileLock, write_atomic};
use crate::mounts::MountCounts;

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
    counts: MountCounts,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl LayerStore {
    /// Opens the records of `driver` under `graphroot` (mount counts under
    /// `runroot`), removing layers whose making was interrupted.
    pub fn open(graphroot: &Path, runroot: &Path, driver: &dyn GraphDriver) -> Result<LayerStore> {
        let dir = graphroot.join(format!("{}-layers", driver.name()));
        fs::create_dir_all(&dir).map_err(|e| CoreError::io("create", &dir, e))?;
        let store = LayerStore {
            dir,
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
        for id in interrupted {
            // A maker still at work holds the layer's making lock.
            let Some(_making) = store.try_making_lock(&id)? else {
                continue;
            };
            tracing::warn!(layer = %id, "removing a layer whose making was interrupted");
            match driver.remove(&id) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            let _ = fs::remove_file(store.tar_split_path(&id));
            let _ = fs::remove_file(store.making_path(&id));
            records.layers.remove(&id);
        }
        store.save(&records)?;
        Ok(store)
    }

    fn lock(&self) -> Result<FileLock> {
        let path = self.dir.join("lock");
        FileLock::exclusive(&path).map_err(|e| CoreError::io("lock", path, e))
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

    fn records_path(&self) -> PathBuf {
        self.dir.join("layers.json")
    }

    fn tar_split_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.tar-split.gz"))
    }

    fn load(&self) -> Result<Records> {
        let path = self.records_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CoreError::io("read", &path, io::Error::new(io::ErrorKind::InvalidData, e))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Records::default()),
            Err(e) => Err(CoreError::io("read", path, e)),
        }
    }

    fn save(&self, records: &Records) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(records).expect("records serialise");
        let path = self.records_path();
        write_atomic(&path, &bytes, true).map_err(|e| CoreError::io("write", path, e))
    }

    pub fn get(&self, id: &str) -> Result<Option<LayerRecord>> {
        let _lock = self.lock()?;
        Ok(self.load()?.layers.get(id).cloned())
    }

    pub fn list(&self) -> Result<Vec<LayerRecord>> {
        let _lock = self.lock()?;
        Ok(self.load()?.layers.into_values().collect())
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
        validate_layer_id(id).map_err(|e| e.context(format!("create layer {id}")))?;
        let making = {
            let _lock = self.lock()?;
            let mut records = self.load()?;
            if records.layers.contains_key(id) {
                return Err(strata_plugin_abi::DriverError::already_exists(format!(
                    "create layer {id}: layer exists"
                ))
                .into());
            }
            if let Some(parent) = parent
                && !records.layers.contains_key(parent)
                && !driver.exists(parent)?
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
            records.layers.insert(
                id.to_string(),
                LayerRecord {
                    id: id.to_string(),
                    parent: parent.map(str::to_string),
                    created: now(),
                    incomplete: true,
                    diff: None,
                    names: Vec::new(),
                },
            );
            self.save(&records)?;
            making
        };
        // Only a layer this call made is taken away on failure: a create the
        // driver refused (the id taken outside the records) must not remove
        // the layer that was already there.
        let mut driver_made = false;
        let made = driver
            .create(id, parent, options)
            .map_err(CoreError::from)
            .and_then(|()| {
                driver_made = true;
                match diff {
                    Some(diff) => self.apply_into(driver, id, diff).map(Some),
                    None => Ok(None),
                }
            });
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let _ = fs::remove_file(self.making_path(id));
        drop(making);
        match made {
            Ok(diff) => {
                let record = records.layers.get_mut(id).expect("recorded above");
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
        let applied = self.apply_into(driver, id, diff)?;
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let record = records
            .layers
            .entry(id.to_string())
            .or_insert_with(|| LayerRecord {
                id: id.to_string(),
                parent: None,
                created: now(),
                incomplete: false,
                diff: None,
                names: Vec::new(),
            });
        record.diff = Some(applied.clone());
        self.save(&records)?;
        Ok(applied)
    }

    fn apply_into(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        diff: &mut dyn Read,
    ) -> Result<DiffRecord> {
        let files = LayerFiles::open(driver, &self.counts, id)?;
        let result = self.apply_at(files.path(), files.target(), id, diff);
        let closed = files.close();
        let report = result?;
        closed?;
        Ok(report)
    }

    fn apply_at(
        &self,
        root: &Path,
        target: ApplyTarget,
        id: &str,
        diff: &mut dyn Read,
    ) -> Result<DiffRecord> {
        let split_path = self.tar_split_path(id);
        let partial = self.dir.join(format!(".{id}.tar-split.gz.partial"));
        let file = fs::File::create(&partial).map_err(|e| CoreError::io("create", &partial, e))?;
        let mut gz =
            flate2::write::GzEncoder::new(io::BufWriter::new(file), flate2::Compression::fast());
        let applied = archive::apply_layer(
            root,
            diff,
            &ApplyOptions {
                target,
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
        let records = {
            let _lock = self.lock()?;
            self.load()?
        };
        if records.layers.contains_key(reference) {
            return Ok(reference.to_string());
        }
        if let Some(record) = records
            .layers
            .values()
            .find(|r| r.names.iter().any(|n| n == reference))
        {
            return Ok(record.id.clone());
        }
        let matches: Vec<&str> = records
            .layers
            .keys()
            .filter(|id| !reference.is_empty() && id.starts_with(reference))
            .map(String::as_str)
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.to_string()),
            [] if driver.exists(reference)? => Ok(reference.to_string()),
            [] => Err(strata_plugin_abi::DriverError::not_found(format!(
                "no layer has the id, name or id prefix '{reference}'"
            ))
            .into()),
            many => Err(strata_plugin_abi::DriverError::invalid_input(format!(
                "'{reference}' is a prefix of {} layers ({}); give more of the id",
                many.len(),
                many.join(", ")
            ))
            .into()),
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
        for record in records.layers.values_mut() {
            record.names.retain(|n| !names.contains(n));
        }
        let record = records.layers.get_mut(id).expect("checked above");
        record.names = names.to_vec();
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
        self.counts.acquire(id, || Ok(driver.get(id, options)?))
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
            // Rebuild into memory-bounded temp storage first: a file changed
            // since apply is found only part way, and `out` must not get half a
            // stream before the fallback.
            let mut staged = tempfile::tempfile_in(&self.dir)
                .map_err(|e| CoreError::io("create a temporary file in", &self.dir, e))?;
            let rebuilt = fs::File::open(&split_path).and_then(|f| {
                archive::tarsplit::reassemble(
                    BufReader::new(flate2::read::GzDecoder::new(f)),
                    &root,
                    &mut staged,
                )
            });
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
