//! The windows driver's layers: where they live, what is recorded of them,
//! and the order of steps that keeps the home consistent when a process is
//! killed at any point. Every Host Compute Service call goes through
//! [`Hcs`], so this logic builds and is tested on every platform; only
//! `hcs.rs` talks to Windows.
//!
//! ```text
//! <home>/lock                 the home lock (held to create and remove)
//! <home>/layers/<id>/         the layer's folder, as HCS keeps it
//! <home>/records/<id>.json    the layer exists: its parent, whether it is
//!                             writable, whether its diff was applied
//! <home>/locks/<id>           the layer's own lock (apply, diff, get, put)
//! <home>/scratch/<name>/      an import or export folder, owned by the
//!                             lock on <home>/scratch/<name>.lock
//! ```
//!
//! Why a kill anywhere is safe:
//! * **A layer exists when its record does.** Create makes the folder (and
//!   the writable layer in it), then writes the record by rename, all
//!   under the home lock; a kill before the rename leaves a folder without
//!   record, which nobody lists and the next open (or the next create of
//!   that id) destroys. Remove deletes the record first, then the folder:
//!   a kill in between leaves the same kind of leftover.
//! * **A diff is applied whole or not at all.** The record says `applied`
//!   only after HCS imported the layer and the whiteouts and links were
//!   made; an apply that finds a folder with content but no `applied`
//!   (a killed apply) destroys and remakes the folder first.
//! * **Scratch belongs to a lock, not a pid.** An import or export folder
//!   is used under an exclusive lock on its `.lock` file; a folder whose lock
//!   nobody holds belongs to a dead process and is deleted at open.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_plugin_abi::{DriverError, Result, validate_layer_id};
use strata_windows_layer::transport;

use crate::layer_data::LayerData;

/// What the driver asks of the Host Compute Service. Paths are absolute.
pub trait Hcs {
    /// The GUID HCS knows the layer folder named `name` by.
    fn layer_guid(&self, name: &str) -> Result<String>;
    /// Makes `layer` a writable layer over the layers of `data`.
    fn initialize_writable_layer(&self, layer: &Path, data: &LayerData) -> Result<()>;
    /// Imports the transport folder `source` into `layer`, over `data`.
    fn import_layer(&self, layer: &Path, source: &Path, data: &LayerData) -> Result<()>;
    /// Exports `layer` (over `data`) into the transport folder `target`.
    fn export_layer(
        &self,
        layer: &Path,
        target: &Path,
        data: &LayerData,
        writable: bool,
    ) -> Result<()>;
    /// Makes a writable layer's merged view available at its folder.
    fn attach_filter(&self, layer: &Path, data: &LayerData) -> Result<()>;
    /// Takes the merged view away.
    fn detach_filter(&self, layer: &Path) -> Result<()>;
    /// Destroys the layer in `layer` and its folder.
    fn destroy_layer(&self, layer: &Path) -> Result<()>;
}

/// What is recorded of a layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The parent layer's id.
    pub parent: Option<String>,
    /// A container's writable layer (a scratch layer over its parents).
    pub read_write: bool,
    /// Whether a diff was applied (a read-only layer takes one, once).
    pub applied: bool,
}

/// A held file lock (std's `File::lock`: LockFileEx on Windows, flock
/// elsewhere), released when dropped or when the process dies.
pub struct Held(#[allow(dead_code)] fs::File);

/// The lock file at `path`, made if missing.
fn open_lock_file(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn lock_file(path: &Path) -> io::Result<Held> {
    let file = open_lock_file(path)?;
    file.lock()?;
    Ok(Held(file))
}

fn try_lock_file(path: &Path) -> io::Result<Option<Held>> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Held(file))),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// 16 random hex digits.
fn random_name() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Unique enough among holders of a lock on what they name.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A scratch folder, deleted (and its lock released) when dropped.
struct Scratch {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: Held,
}

impl Scratch {
    /// A file beside the folder, owned by the same lock: `<name><suffix>`.
    fn beside(&self, suffix: &str) -> PathBuf {
        beside(&self.path, suffix)
    }
}

fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.beside(".tar"));
        if let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not delete a scratch folder; the next open tries again");
        }
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// A diff written to a scratch file: read, then gone.
struct DiffFile {
    file: io::BufReader<fs::File>,
    _scratch: Scratch,
}

impl Read for DiffFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

/// The layers of one home.
pub struct LayerStore<H> {
    home: PathBuf,
    hcs: H,
}

fn io_err(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> DriverError {
    move |e| DriverError::io(context, &e)
}

impl<H: Hcs> LayerStore<H> {
    /// Opens (making) the home and collects what killed processes left.
    pub fn open(home: &Path, hcs: H) -> Result<Self> {
        for dir in ["layers", "records", "locks", "scratch"] {
            let dir = home.join(dir);
            fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        let home = std::path::absolute(home).map_err(io_err("resolve the home"))?;
        let store = LayerStore { home, hcs };
        store.collect_leftovers()?;
        Ok(store)
    }

    /// The HCS calls, for the driver's own use.
    pub fn hcs(&self) -> &H {
        &self.hcs
    }

    fn lock(&self) -> Result<Held> {
        let path = self.home.join("lock");
        lock_file(&path).map_err(io_err(format!("lock {}", path.display())))
    }

    fn lock_layer(&self, id: &str) -> Result<Held> {
        let path = self.home.join("locks").join(id);
        lock_file(&path).map_err(io_err(format!("lock layer {id}")))
    }

    /// The folder of layer `id` (checked: an invalid id is refused).
    pub fn folder(&self, id: &str, operation: &str) -> Result<PathBuf> {
        validate_layer_id(id).map_err(|e| e.context(format!("{operation} layer {id:?}")))?;
        Ok(self.home.join("layers").join(id))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.home.join("records").join(format!("{id}.json"))
    }

    /// Layer `id`'s record; NotFound when there is none.
    pub fn record(&self, id: &str, operation: &str) -> Result<LayerRecord> {
        self.folder(id, operation)?;
        let path = self.record_path(id);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DriverError::not_found(format!(
                    "{operation} layer {id}: no such layer"
                )));
            }
            Err(e) => return Err(DriverError::io(format!("{operation} layer {id}"), &e)),
        };
        serde_json::from_slice(&text).map_err(|e| {
            DriverError::other(format!(
                "{operation} layer {id}: its record {} is damaged: {e}",
                path.display()
            ))
        })
    }

    /// Writes layer `id`'s record whole (temp file and rename).
    fn write_record(&self, id: &str, record: &LayerRecord) -> Result<()> {
        let path = self.record_path(id);
        let temp = self
            .home
            .join("records")
            .join(format!(".{id}.{}", random_name()));
        let bytes = serde_json::to_vec(record).expect("a record serialises");
        let written = (|| {
            let mut file = fs::File::create_new(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&temp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.map_err(io_err(format!("write the record of layer {id}")))
    }

    /// Whether layer `id` exists (false for an invalid id).
    pub fn exists(&self, id: &str) -> bool {
        validate_layer_id(id).is_ok() && self.record_path(id).is_file()
    }

    /// Every layer.
    pub fn list(&self) -> Result<Vec<String>> {
        let dir = self.home.join("records");
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list the layers"))? {
            let entry = entry.map_err(io_err("list the layers"))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(".json"))
                .filter(|id| validate_layer_id(id).is_ok())
            {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }

    /// The layers under `id`, nearest first, each with its folder and GUID:
    /// what HCS's layer data lists for a layer whose parent is `parent`.
    pub fn layer_data(&self, parent: Option<&str>) -> Result<LayerData> {
        let mut data = LayerData::default();
        let mut next = parent.map(str::to_string);
        while let Some(id) = next {
            if data.layers.len() > 127 {
                return Err(DriverError::other(format!(
                    "the chain of parents under layer {id} is longer than 128 (a loop in the records?)"
                )));
            }
            let record = self.record(&id, "read the parent chain of")?;
            data.push(self.hcs.layer_guid(&id)?, self.folder(&id, "read")?);
            next = record.parent;
        }
        Ok(data)
    }

    /// Creates layer `id`: an empty read-only layer (its diff comes with
    /// [`apply_diff`](Self::apply_diff)), or a writable layer over its
    /// parents.
    pub fn create(&self, id: &str, parent: Option<&str>, read_write: bool) -> Result<()> {
        let folder = self.folder(id, "create")?;
        let _home = self.lock()?;
        if self.exists(id) {
            return Err(DriverError::already_exists(format!(
                "create layer {id}: it exists"
            )));
        }
        if let Some(parent) = parent {
            let record = self.record(parent, "create a child of")?;
            if record.read_write {
                return Err(DriverError::not_supported(format!(
                    "create layer {id} on {parent}: a writable (container) layer cannot be a \
                     parent on Windows; commit it to an image layer first"
                )));
            }
        }
        let data = self.layer_data(parent)?;
        // A folder without a record: a killed create's or remove's.
        self.destroy_folder(&folder)?;
        fs::create_dir_all(&folder).map_err(io_err(format!("create layer {id}")))?;
        // From here until the record is written, a failure takes the folder
        // away again; a kill leaves it for the next open to collect.
        let made = if read_write {
            self.hcs.initialize_writable_layer(&folder, &data)
        } else {
            Ok(())
        }
        .and_then(|()| {
            self.write_record(
                id,
                &LayerRecord {
                    parent: parent.map(str::to_string),
                    read_write,
                    applied: false,
                },
            )
        });
        if let Err(e) = made {
            let _ = self.destroy_folder(&folder);
            return Err(e.context(format!("create layer {id}")));
        }
        tracing::debug!(layer = %id, ?parent, read_write, "windows layer created");
        Ok(())
    }

    /// Removes layer `id`: Busy while another layer has it as parent.
    pub fn remove(&self, id: &str) -> Result<()> {
        let folder = self.folder(id, "remove")?;
        let _home = self.lock()?;
        let record = self.record(id, "remove")?;
        let _layer = self.lock_layer(id)?;
        for other in self.list()? {
            if other != id
                && self
                    .record(&other, "read")
                    .is_ok_and(|r| r.parent.as_deref() == Some(id))
            {
                return Err(DriverError::busy(format!(
                    "remove layer {id}: layer {other} is its child"
                )));
            }
        }
        if record.read_write {
            // Not attached any more: the host counts mounts and calls put
            // for the last one; a dead process's filter goes with this.
            let _ = self.hcs.detach_filter(&folder);
        }
        // The record first: from here the layer does not exist, and its
        // folder is a leftover whatever happens next.
        fs::remove_file(self.record_path(id))
            .map_err(io_err(format!("remove the record of layer {id}")))?;
        self.destroy_folder(&folder)
            .map_err(|e| e.context(format!("remove layer {id}")))?;
        let _ = fs::remove_file(self.home.join("locks").join(id));
        Ok(())
    }

    /// Destroys a layer folder through HCS (which knows what it put there),
    /// then whatever is left; a missing folder is fine.
    fn destroy_folder(&self, folder: &Path) -> Result<()> {
        if !folder.exists() {
            return Ok(());
        }
        if let Err(e) = self.hcs.destroy_layer(folder) {
            tracing::debug!(folder = %folder.display(), error = %e, "HCS did not destroy the layer folder; deleting it");
        }
        match fs::remove_dir_all(folder) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io(format!("delete {}", folder.display()), &e)),
        }
    }

    /// A new scratch folder, owned by this process until dropped.
    fn scratch(&self, purpose: &str, id: &str) -> Result<Scratch> {
        let name = format!("{purpose}-{id}-{}", random_name());
        let dir = self.home.join("scratch");
        let lock_path = dir.join(format!("{name}.lock"));
        let lock = lock_file(&lock_path).map_err(io_err("lock a scratch folder"))?;
        Ok(Scratch {
            path: dir.join(name),
            lock_path,
            _lock: lock,
        })
    }

    /// Applies a Windows layer tar to the read-only layer `id`, returning
    /// the bytes of file data it held.
    pub fn apply_diff(&self, id: &str, tar: &mut dyn Read) -> Result<u64> {
        let folder = self.folder(id, "apply a diff to")?;
        let _layer = self.lock_layer(id)?;
        let mut record = self.record(id, "apply a diff to")?;
        if record.read_write {
            return Err(DriverError::not_supported(format!(
                "apply a diff to layer {id}: it is a writable layer; diffs are applied to image \
                 layers"
            )));
        }
        if record.applied {
            return Err(DriverError::already_exists(format!(
                "apply a diff to layer {id}: it has one already"
            )));
        }
        // A killed apply's content: gone before this one starts.
        if fs::read_dir(&folder).is_ok_and(|mut entries| entries.next().is_some()) {
            self.destroy_folder(&folder)?;
            fs::create_dir_all(&folder).map_err(io_err(format!("remake layer {id}")))?;
        }
        let data = self.layer_data(record.parent.as_deref())?;
        let scratch = self.scratch("import", id)?;
        let plan = transport::write_import_folder(tar, &scratch.path).map_err(|e| match &e {
            // What this version does not import (UtilityVM, links into
            // lower layers).
            strata_windows_layer::FormatError::Sink { source, .. }
                if source.kind() == io::ErrorKind::Unsupported =>
            {
                DriverError::not_supported(format!("apply a diff to layer {id}: {e}"))
            }
            strata_windows_layer::FormatError::Sink { source, .. }
                if source.kind() == io::ErrorKind::InvalidInput =>
            {
                DriverError::invalid_input(format!("apply a diff to layer {id}: {e}"))
            }
            // Writing the import folder failed (a full disk, say).
            strata_windows_layer::FormatError::Sink { source, .. } => {
                DriverError::io(format!("apply a diff to layer {id}: {e}"), source)
            }
            // The stream: junk, cut short, or a member refused.
            _ => DriverError::invalid_input(format!("apply a diff to layer {id}: {e}")),
        })?;
        self.hcs
            .import_layer(&folder, &scratch.path, &data)
            .map_err(|e| e.context(format!("apply a diff to layer {id}")))?;
        plan.apply_to(&folder)
            .map_err(io_err(format!("apply a diff to layer {id}")))?;
        record.applied = true;
        self.write_record(id, &record)?;
        tracing::debug!(layer = %id, files = plan.summary.files, bytes = plan.summary.data_bytes, "windows layer imported");
        Ok(plan.summary.data_bytes)
    }

    /// Layer `id`'s diff against its parent, as a Windows layer tar.
    pub fn diff(&self, id: &str) -> Result<Box<dyn Read + Send>> {
        let folder = self.folder(id, "diff")?;
        let _layer = self.lock_layer(id)?;
        let record = self.record(id, "diff")?;
        let data = self.layer_data(record.parent.as_deref())?;
        let export = self.scratch("export", id)?;
        self.hcs
            .export_layer(&folder, &export.path, &data, record.read_write)
            .map_err(|e| e.context(format!("diff layer {id}")))?;
        // The tar goes to a scratch file of its own, read after the export
        // folder is gone, so the stream handed out holds no folder.
        let out = self.scratch("diff", id)?;
        let tar_path = out.beside(".tar");
        let written = (|| -> Result<fs::File> {
            let file = fs::File::create_new(&tar_path).map_err(io_err(format!(
                "diff layer {id}: create {}",
                tar_path.display()
            )))?;
            let mut writer = io::BufWriter::new(file);
            transport::write_tar_from_export_folder(&export.path, &mut writer)
                .map_err(|e| DriverError::other(format!("diff layer {id}: {e}")))?;
            writer
                .into_inner()
                .map_err(|e| DriverError::io(format!("diff layer {id}"), e.error()))
        })();
        drop(export);
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&tar_path);
                return Err(e);
            }
        };
        drop(file);
        let file = fs::File::open(&tar_path).map_err(io_err(format!("diff layer {id}")))?;
        // Gone from the directory now; the open file reads on (Windows
        // opens with FILE_SHARE_DELETE, Linux unlinks).
        let _ = fs::remove_file(&tar_path);
        Ok(Box::new(DiffFile {
            file: io::BufReader::new(file),
            _scratch: out,
        }))
    }

    /// Makes layer `id` available: a writable layer's merged view, attached
    /// at its folder; a read-only layer's folder as HCS keeps it.
    pub fn get(&self, id: &str) -> Result<PathBuf> {
        let folder = self.folder(id, "mount")?;
        let _layer = self.lock_layer(id)?;
        let record = self.record(id, "mount")?;
        if record.read_write {
            let data = self.layer_data(record.parent.as_deref())?;
            self.hcs
                .attach_filter(&folder, &data)
                .map_err(|e| e.context(format!("mount layer {id}")))?;
        }
        Ok(folder)
    }

    /// Takes a writable layer's merged view away.
    pub fn put(&self, id: &str) -> Result<()> {
        let folder = self.folder(id, "unmount")?;
        let _layer = self.lock_layer(id)?;
        let record = self.record(id, "unmount")?;
        if record.read_write {
            self.hcs
                .detach_filter(&folder)
                .map_err(|e| e.context(format!("unmount layer {id}")))?;
        }
        Ok(())
    }

    /// Deletes what killed processes left: layer folders without a record
    /// (under the home lock, so no create is halfway), record temp files,
    /// and scratch folders whose lock nobody holds.
    pub fn collect_leftovers(&self) -> Result<()> {
        let _home = self.lock()?;
        let layers = self.home.join("layers");
        for entry in fs::read_dir(&layers).map_err(io_err("list the layers"))? {
            let entry = entry.map_err(io_err("list the layers"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_layer_id(&name).is_ok() && self.exists(&name) {
                continue;
            }
            tracing::info!(folder = %entry.path().display(), "collecting a layer folder a killed process left");
            self.destroy_folder(&entry.path())?;
        }
        for entry in fs::read_dir(self.home.join("records")).map_err(io_err("list the records"))? {
            let entry = entry.map_err(io_err("list the records"))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                let _ = fs::remove_file(entry.path());
            }
        }
        let scratch = self.home.join("scratch");
        for entry in fs::read_dir(&scratch).map_err(io_err("list the scratch folders"))? {
            let entry = entry.map_err(io_err("list the scratch folders"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(base) = name.strip_suffix(".lock") else {
                continue;
            };
            // Ours to collect only if nobody holds its lock.
            if let Ok(Some(_held)) = try_lock_file(&entry.path()) {
                let folder = scratch.join(base);
                let _ = fs::remove_dir_all(&folder);
                let _ = fs::remove_file(beside(&folder, ".tar"));
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The bookkeeping against a stand-in for HCS that keeps a layer as the
    //! transport folder it was given: a unit test of this module's logic,
    //! not of HCS (which needs a Windows host: see the README).

    use std::sync::Mutex;

    use strata_plugin_abi::ErrorKind;
    use strata_windows_layer::backup::{BackupStreamWriter, StreamHeader, id};
    use strata_windows_layer::{FileBasicInfo, LayerTarWriter, filetime};

    use super::*;

    #[derive(Default)]
    struct StandIn {
        calls: Mutex<Vec<String>>,
    }

    fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy_tree(&entry.path(), &target)?;
            } else {
                fs::copy(entry.path(), &target)?;
            }
        }
        Ok(())
    }

    impl StandIn {
        fn note(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut self.calls.lock().unwrap())
        }
    }

    fn name(path: &Path) -> String {
        path.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn chain(data: &LayerData) -> String {
        let names: Vec<String> = data.layers.iter().map(|(_, p)| name(p)).collect();
        names.join(",")
    }

    impl Hcs for StandIn {
        fn layer_guid(&self, name: &str) -> Result<String> {
            Ok(format!("guid-of-{name}"))
        }
        fn initialize_writable_layer(&self, layer: &Path, data: &LayerData) -> Result<()> {
            self.note(format!("init {} over [{}]", name(layer), chain(data)));
            fs::write(layer.join("sandbox.vhdx"), data.to_json()).unwrap();
            Ok(())
        }
        fn import_layer(&self, layer: &Path, source: &Path, data: &LayerData) -> Result<()> {
            self.note(format!("import {} over [{}]", name(layer), chain(data)));
            copy_tree(source, layer).map_err(|e| DriverError::io("stand-in import", &e))
        }
        fn export_layer(
            &self,
            layer: &Path,
            target: &Path,
            data: &LayerData,
            writable: bool,
        ) -> Result<()> {
            self.note(format!(
                "export {} over [{}] writable={writable}",
                name(layer),
                chain(data)
            ));
            copy_tree(layer, target).map_err(|e| DriverError::io("stand-in export", &e))
        }
        fn attach_filter(&self, layer: &Path, data: &LayerData) -> Result<()> {
            self.note(format!("attach {} over [{}]", name(layer), chain(data)));
            Ok(())
        }
        fn detach_filter(&self, layer: &Path) -> Result<()> {
            self.note(format!("detach {}", name(layer)));
            Ok(())
        }
        fn destroy_layer(&self, layer: &Path) -> Result<()> {
            self.note(format!("destroy {}", name(layer)));
            fs::remove_dir_all(layer).map_err(|e| DriverError::io("stand-in destroy", &e))
        }
    }

    fn info(attributes: u32) -> FileBasicInfo {
        let t = filetime::from_unix(1_700_000_000, 500).unwrap();
        FileBasicInfo {
            creation_time: t,
            last_access_time: t,
            last_write_time: t,
            change_time: t,
            file_attributes: attributes,
        }
    }

    fn data_stream(bytes: &[u8]) -> Vec<u8> {
        let mut w = BackupStreamWriter::new(Vec::new());
        w.write_stream(&StreamHeader::new(id::DATA, bytes.len() as u64), bytes)
            .unwrap();
        w.finish().unwrap()
    }

    /// A small Windows layer: a directory, two files, a whiteout, a hive.
    fn layer_tar() -> Vec<u8> {
        layer_tar_with(true)
    }

    /// [`layer_tar`], with or without its whiteout.
    fn layer_tar_with(whiteout: bool) -> Vec<u8> {
        let mut w = LayerTarWriter::new(Vec::new());
        w.file("Files", 0, &info(0x10), &[][..]).unwrap();
        w.file("Files/app", 0, &info(0x10), &[][..]).unwrap();
        if whiteout {
            w.whiteout("Files/app/old.dll").unwrap();
        }
        let exe = data_stream(b"MZ program");
        w.file("Files/app/run.exe", 10, &info(0x20), &exe[..])
            .unwrap();
        let ini = data_stream(b"[a]");
        w.file("Files/app/run.ini", 3, &info(0x20), &ini[..])
            .unwrap();
        w.file("Hives", 0, &info(0x10), &[][..]).unwrap();
        let hive = data_stream(b"regf");
        w.file("Hives/Software_Delta", 4, &info(0x20), &hive[..])
            .unwrap();
        w.finish().unwrap()
    }

    fn store(home: &Path) -> LayerStore<StandIn> {
        LayerStore::open(home, StandIn::default()).unwrap()
    }

    #[test]
    fn layers_are_made_over_their_chain_and_removed_children_first() {
        let home = tempfile::tempdir().unwrap();
        let store = store(home.path());
        store.create("base", None, false).unwrap();
        store.create("mid", Some("base"), false).unwrap();
        store.create("box", Some("mid"), true).unwrap();
        assert_eq!(store.hcs().calls(), vec!["init box over [mid,base]"]);
        let mut ids = store.list().unwrap();
        ids.sort();
        assert_eq!(ids, ["base", "box", "mid"]);
        let err = store.create("mid", None, false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        let err = store.create("x", Some("nope"), false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let err = store.create("x", Some("box"), false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");
        let err = store.create("../x", None, false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(!store.exists("x"));

        assert_eq!(store.get("box").unwrap(), store.folder("box", "t").unwrap());
        store.put("box").unwrap();
        assert_eq!(
            store.hcs().calls(),
            vec!["attach box over [mid,base]", "detach box"]
        );

        let err = store.remove("mid").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        store.remove("box").unwrap();
        store.remove("mid").unwrap();
        store.remove("base").unwrap();
        assert!(store.list().unwrap().is_empty());
        assert_eq!(
            fs::read_dir(home.path().join("layers")).unwrap().count(),
            0,
            "layer folders left"
        );
        let err = store.remove("base").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn a_diff_applied_is_the_diff_read_back() {
        let home = tempfile::tempdir().unwrap();
        let store = store(home.path());
        store.create("base", None, false).unwrap();
        store.create("layer", Some("base"), false).unwrap();
        let tar = layer_tar();
        let applied = store.apply_diff("layer", &mut &tar[..]).unwrap();
        assert_eq!(applied, 10 + 3 + 4, "bytes of file data");
        assert!(store.record("layer", "t").unwrap().applied);
        let err = store.apply_diff("layer", &mut &tar[..]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        let mut back = Vec::new();
        store.diff("layer").unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(
            store.hcs().calls(),
            vec![
                "import layer over [base]",
                "export layer over [base] writable=false"
            ]
        );
        // The stand-in exports what it imported, less the whiteout (HCS
        // lists those in tombstones.txt); everything else comes back as it
        // went in.
        let without_whiteout = layer_tar_with(false);
        let entries = |tar: &[u8]| -> Vec<(String, u64)> {
            let mut archive = tar::Archive::new(tar);
            archive
                .entries()
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.path().unwrap().display().to_string(), e.size())
                })
                .collect()
        };
        assert_eq!(entries(&back), entries(&without_whiteout));
        // Nothing of the import or export is left.
        assert_eq!(
            fs::read_dir(home.path().join("scratch")).unwrap().count(),
            0
        );
        // A writable layer takes no diff.
        store.create("box", Some("layer"), true).unwrap();
        let err = store.apply_diff("box", &mut &tar[..]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotSupported);
        // A broken tar is refused, naming the member, and leaves no scratch.
        store.create("bad", Some("base"), false).unwrap();
        let mut broken = layer_tar();
        broken.truncate(1536);
        let err = store.apply_diff("bad", &mut &broken[..]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(!store.record("bad", "t").unwrap().applied);
        assert_eq!(
            fs::read_dir(home.path().join("scratch")).unwrap().count(),
            0
        );
    }

    #[test]
    fn what_killed_processes_left_is_collected() {
        let home = tempfile::tempdir().unwrap();
        let store = store(home.path());
        store.create("kept", None, false).unwrap();
        // A create killed before its record; a remove killed after it.
        fs::create_dir_all(home.path().join("layers/half/Files")).unwrap();
        // A record write killed before its rename.
        fs::write(home.path().join("records/.kept.0011"), b"{").unwrap();
        // An import killed halfway: its lock is nobody's now.
        let dead = home.path().join("scratch/import-kept-00");
        fs::create_dir_all(dead.join("Files")).unwrap();
        fs::write(home.path().join("scratch/import-kept-00.lock"), b"").unwrap();
        // A live process's import: its lock is held.
        let live = store.scratch("import", "kept").unwrap();
        fs::create_dir_all(live.path.join("Files")).unwrap();
        drop(store);

        let store = self::store(home.path());
        assert_eq!(store.hcs().calls(), vec!["destroy half"]);
        assert!(!home.path().join("layers/half").exists());
        assert!(home.path().join("layers/kept").exists());
        assert!(!home.path().join("records/.kept.0011").exists());
        assert!(!dead.exists(), "a dead import's folder was kept");
        assert!(live.path.exists(), "a live import's folder was collected");
        assert_eq!(store.list().unwrap(), ["kept"]);

        // An apply killed after HCS imported, before the record said so:
        // the next apply starts from an empty layer.
        fs::write(home.path().join("layers/kept/partial"), b"x").unwrap();
        let tar = layer_tar();
        store.apply_diff("kept", &mut &tar[..]).unwrap();
        assert_eq!(
            store.hcs().calls(),
            vec!["destroy kept", "import kept over []"]
        );
        assert!(!home.path().join("layers/kept/partial").exists());
    }
}
