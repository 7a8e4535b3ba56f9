//! What the driver keeps in its home about the pool and its thin devices.
//!
//! ```text
//! <home>/pool/config          the pool's record (JSON, replaced whole)
//! <home>/pool/data, metadata  the pool's sparse files (a pool the driver made)
//! <home>/pool/lock            flock: every change to the pool and its record
//! <home>/pool/users           flock, shared by every live driver instance
//! <home>/pool/pending/<n>.<r> thin id n may be in the pool with no layer owning
//!                             it (one mark per operation)
//! <home>/layers/<id>/thin     the layer's thin id and device size in bytes
//! ```
//!
//! A thin id is written to `pending/` before the pool is asked to make it
//! and before a removal lets go of it, and taken out once a layer owns it or
//! the pool has deleted it. So whatever a kill interrupts, a thin id in the
//! pool is owned by a layer, by a live maker's staging directory, or is
//! pending; the sweep at start deletes pending ids nobody owns.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_plugin_abi::{DriverError, Result};

/// The file holding a layer's thin id and size, in its directory.
pub const THIN_FILE: &str = "thin";

/// The pool's record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolConfig {
    /// The prefix of every device-mapper name this home uses.
    pub prefix: String,
    /// An existing pool named by the `thinpooldev` option, or `None` for
    /// the pool the driver made on its own files.
    pub external_pool: Option<String>,
    /// Data and metadata file sizes of the driver's own pool, in bytes.
    pub data_size: u64,
    /// See `data_size`.
    pub metadata_size: u64,
    /// The pool's data block size, in 512-byte sectors.
    pub block_sectors: u64,
    /// The filesystem on every thin device: ext4 or xfs.
    pub filesystem: String,
    /// The base device every layer without a size is a snapshot of, once made.
    pub base: Option<BaseDevice>,
    /// The next thin id to hand out.
    pub next_thin_id: u64,
    /// The pool's transaction id after this home's last change.
    pub transaction_id: u64,
}

/// The base thin device: a fresh filesystem, made once.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BaseDevice {
    /// Its thin id.
    pub thin_id: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// A layer's device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thin {
    /// Its thin id in the pool.
    pub id: u64,
    /// Its size in bytes.
    pub size: u64,
}

impl Thin {
    /// Reads the record in the layer directory `dir`.
    pub fn read(dir: &Path, layer: &str, operation: &str) -> Result<Thin> {
        let text = fs::read_to_string(dir.join(THIN_FILE)).map_err(|e| {
            DriverError::io(
                format!("{operation} layer {layer}: read its thin device"),
                &e,
            )
        })?;
        Thin::parse(&text).ok_or_else(|| {
            DriverError::other(format!(
                "{operation} layer {layer}: its thin device record is damaged"
            ))
        })
    }

    fn parse(text: &str) -> Option<Thin> {
        let mut words = text.split_whitespace();
        let id = words.next()?.parse().ok()?;
        let size = words.next()?.parse().ok()?;
        words.next().is_none().then_some(Thin { id, size })
    }

    /// Writes the record into the staging directory `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        write_atomically(
            &dir.join(THIN_FILE),
            format!("{} {}\n", self.id, self.size).as_bytes(),
        )
    }
}

/// The driver's records about the pool.
pub struct PoolRecords {
    dir: PathBuf,
}

impl PoolRecords {
    /// The records in `<home>/pool`, made if missing.
    pub fn open(home: &Path) -> io::Result<PoolRecords> {
        let dir = home.join("pool");
        fs::create_dir_all(dir.join("pending"))?;
        Ok(PoolRecords { dir })
    }

    /// The records' directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pool's record, if one was written.
    pub fn config(&self) -> Result<Option<PoolConfig>> {
        let path = self.dir.join("config");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                DriverError::other(format!(
                    "read the pool record {}: it is damaged ({e})",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::io(
                format!("read the pool record {}", path.display()),
                &e,
            )),
        }
    }

    /// Replaces the pool's record, whole or not at all.
    pub fn write_config(&self, config: &PoolConfig) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(config).expect("the record serialises");
        write_atomically(&self.dir.join("config"), &bytes)
            .map_err(|e| DriverError::io("write the pool record", &e))
    }

    /// Notes that thin id `n` may be in the pool with no owner, for one
    /// operation: each operation has a mark of its own (`<n>.<random>`), so
    /// one taking its mark away never takes another's. The mark is an empty
    /// file, made in one step (nothing a kill could leave half written).
    pub fn add_pending(&self, n: u64) -> Result<Mark> {
        let dir = self.dir.join("pending");
        let path = dir.join(format!("{n}.{}", strata_driver_kit::home::random_hex()));
        fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .and_then(|_| fs::File::open(&dir)?.sync_all())
            .map_err(|e| DriverError::io(format!("note thin id {n} as pending"), &e))?;
        Ok(Mark { n, path })
    }

    /// Takes one operation's mark away.
    pub fn remove_mark(&self, mark: &Mark) {
        remove_file(&mark.path, mark.n);
    }

    /// Takes every mark of thin id `n` away (it is deleted from the pool,
    /// or owned by a layer for good).
    pub fn remove_pending(&self, n: u64) -> Result<()> {
        for path in self.pending()?.remove(&n).unwrap_or_default() {
            remove_file(&path, n);
        }
        Ok(())
    }

    /// The pending thin ids, each with its marks.
    pub fn pending(&self) -> Result<BTreeMap<u64, Vec<PathBuf>>> {
        let entries = fs::read_dir(self.dir.join("pending"))
            .map_err(|e| DriverError::io("list the pending thin ids", &e))?;
        let mut ids: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| DriverError::io("list the pending thin ids", &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // `<n>.<random>`, or `<n>` as the first version wrote them.
            let number = name.split('.').next().unwrap_or(name);
            if let Ok(n) = number.parse() {
                ids.entry(n).or_default().push(entry.path());
            }
        }
        Ok(ids)
    }

    /// Deletes the temporaries of record writes a kill interrupted. The
    /// record is only written under the pool lock, which the caller holds,
    /// so no live writer's temporary is among them.
    pub fn collect_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".config.tmp-")
            {
                tracing::debug!(file = %entry.path().display(), "deleting a killed write's temporary");
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// One operation's pending mark on a thin id.
#[derive(Debug)]
pub struct Mark {
    /// The thin id.
    pub n: u64,
    path: PathBuf,
}

fn remove_file(path: &Path, n: u64) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(thin_id = n, error = %e, "could not clear a pending mark"),
    }
}

/// Writes `bytes` to `path` through a temporary file, synced and renamed
/// over it: a reader (or the next start after a kill) sees the old content
/// or the new, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = dir.join(format!(
        ".{name}.tmp-{}",
        strata_driver_kit::home::random_hex()
    ));
    let result = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_records_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let thin = Thin {
            id: 7,
            size: 10 << 30,
        };
        thin.write(dir.path()).unwrap();
        assert_eq!(Thin::read(dir.path(), "l", "mount").unwrap(), thin);
        fs::write(dir.path().join(THIN_FILE), "7 ten").unwrap();
        let error = Thin::read(dir.path(), "l", "mount").unwrap_err();
        assert!(
            error
                .message()
                .contains("layer l: its thin device record is damaged")
        );
    }

    #[test]
    fn pending_ids_are_listed_in_order_and_cleared() {
        let home = tempfile::tempdir().unwrap();
        let records = PoolRecords::open(home.path()).unwrap();
        assert!(records.config().unwrap().is_none());
        let marks: Vec<Mark> = [12, 3, 5, 3]
            .into_iter()
            .map(|n| records.add_pending(n).unwrap())
            .collect();
        records.remove_pending(5).unwrap();
        records.remove_pending(99).unwrap();
        // One operation's mark goes; another's on the same id stays.
        records.remove_mark(&marks[1]);
        let pending = records.pending().unwrap();
        assert_eq!(pending.keys().copied().collect::<Vec<_>>(), vec![3, 12]);
        assert_eq!(pending[&3].len(), 1);
    }
}
