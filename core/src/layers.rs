//! Layer records above the driver: each layer's parent and, for layers made
//! from a diff, what the diff was (digests, sizes, compression) and its
//! tar-split record, so the original stream can be given back bit for bit.
//!
//! Records are rows of the store's database (see `db`); tar-split records are
//! files in `<graphroot>/<driver>-layers/<id>.tar-split.gz`.
//!
//! ## Making and deleting a layer, and why a kill at any point is safe
//!
//! A layer's row has a state: made, being made, or being deleted; the last
//! two name the session (see `sessions`) of the process at work.
//!
//! Making: (1) one transaction inserts the row as being made; (2) the driver
//! creates the layer and the diff is applied (the tar-split record is
//! written under a temporary name and renamed when whole); (3) one
//! transaction marks it made, with its diff, and records what the caller
//! builds on it (a container's row) in the same transaction. Killed before
//! (1) commits: nothing happened. Between (1) and (3): the row names a dead
//! session, and whoever finds it (the next open, a process waiting for the
//! layer, `check --repair`) takes it over, removes what the driver has of the
//! layer, and deletes the row. After (3): made.
//!
//! Deleting: (1) one transaction checks that nothing stands on the layer and
//! marks it being deleted (from then on it is not found by id or name); (2)
//! the driver removes the layer, its mount count and tar-split record go;
//! (3) one transaction deletes the row (and a container row on it). Killed
//! between (1) and (3): whoever finds the row takes it over and does (2) and
//! (3) again; a layer the driver no longer has counts as removed.
//!
//! Taking over a dead session's row is itself one transaction (the row gets
//! the taker's session), so two processes never both work on it.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, ErrorKind, GraphDriver, MountOptions, WhiteoutFormat,
    validate_layer_id,
};

use crate::archive::{self, ApplyOptions, ApplyTarget, Change};
use crate::db::{Database, Kind, all_names, found, give_names, lookup, names_of, now};
use crate::error::{CoreError, Result};
use crate::mounts::MountCounts;
use crate::sessions::Sessions;

/// A row's state.
pub(crate) const MADE: i64 = 0;
pub(crate) const MAKING: i64 = 1;
pub(crate) const DELETING: i64 = 2;

/// What strata knows of a layer beyond the driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Being made by a process (or left so by one that died).
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
    /// Made for an import that records its image afterwards: if this
    /// process dies first, the layer is removed (unless something else has
    /// come to use it).
    pub for_import: bool,
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

/// A layer row's state and the session at work on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RowState {
    pub(crate) state: i64,
    pub(crate) owner: Option<String>,
}

pub(crate) fn row_state(tx: &Connection, id: &str) -> Result<Option<RowState>> {
    Ok(tx
        .prepare_cached("SELECT state, owner FROM layers WHERE id = ?1")?
        .query_row(params![id], |r| {
            Ok(RowState {
                state: r.get(0)?,
                owner: r.get(1)?,
            })
        })
        .optional()?)
}

const RECORD_COLUMNS: &str =
    "id, parent, created, state, read_only, mount_label, metadata, flags, diff";

fn record_from_row(row: &rusqlite::Row) -> rusqlite::Result<LayerRecord> {
    let flags: Option<String> = row.get(7)?;
    let diff: Option<String> = row.get(8)?;
    Ok(LayerRecord {
        id: row.get(0)?,
        parent: row.get(1)?,
        created: row.get::<_, i64>(2)? as u64,
        incomplete: row.get::<_, i64>(3)? == MAKING,
        read_only: row.get(4)?,
        mount_label: row.get(5)?,
        metadata: row.get(6)?,
        flags: flags
            .and_then(|f| serde_json::from_str(&f).ok())
            .unwrap_or_default(),
        diff: diff.and_then(|d| serde_json::from_str(&d).ok()),
        names: Vec::new(),
    })
}

/// The record of layer `id`, unless it is being deleted.
pub(crate) fn read_record(tx: &Connection, id: &str) -> Result<Option<LayerRecord>> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM layers WHERE id = ?1 AND state != {DELETING}");
    let Some(mut record) = tx
        .prepare_cached(&sql)?
        .query_row(params![id], record_from_row)
        .optional()?
    else {
        return Ok(None);
    };
    record.names = names_of(tx, Kind::Layer, id)?;
    Ok(Some(record))
}

/// Every layer's parent (layers being deleted included: they still stand on
/// their parents until they are gone).
pub(crate) fn all_parents(tx: &Connection) -> Result<HashMap<String, Option<String>>> {
    let mut statement = tx.prepare_cached("SELECT id, parent FROM layers")?;
    let parents = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<HashMap<String, Option<String>>>>()?;
    Ok(parents)
}

/// The sessions whose imports have layers not yet recorded in an image.
pub(crate) fn import_sessions(tx: &Connection) -> Result<Vec<String>> {
    let sessions = tx
        .prepare_cached(
            "SELECT DISTINCT import_session FROM layers WHERE import_session IS NOT NULL",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(sessions)
}

/// The layers that have `id` as parent, in any state.
pub(crate) fn children_of(tx: &Connection, id: &str) -> Result<Vec<String>> {
    let mut statement = tx.prepare_cached("SELECT id FROM layers WHERE parent = ?1 ORDER BY id")?;
    let children = statement
        .query_map(params![id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(children)
}

fn busy(message: String) -> CoreError {
    DriverError::busy(message).into()
}

fn not_found(message: String) -> CoreError {
    DriverError::not_found(message).into()
}

/// How a layer is deleted when [`LayerStore::delete`] is asked.
enum Marked {
    /// Marked as being deleted by this process: finish it.
    Row,
    /// Known to the driver only (made before records were kept).
    DriverOnly,
}

/// The layer records of one graph root and driver.
pub struct LayerStore {
    dir: PathBuf,
    db: Arc<Database>,
    sessions: Arc<Sessions>,
    counts: MountCounts,
}

impl LayerStore {
    /// Opens the records of `driver` under `graphroot` (mount counts under
    /// `runroot`), finishing or undoing what dead processes left part done.
    pub fn open(graphroot: &Path, runroot: &Path, driver: &dyn GraphDriver) -> Result<LayerStore> {
        let name = driver.name();
        let store = LayerStore::with_records(
            graphroot,
            runroot,
            &name,
            Arc::new(Database::open(graphroot, &name)?),
            Arc::new(Sessions::open(graphroot, &name)),
        )?;
        store.recover(driver)?;
        Ok(store)
    }

    pub(crate) fn with_records(
        graphroot: &Path,
        runroot: &Path,
        driver_name: &str,
        db: Arc<Database>,
        sessions: Arc<Sessions>,
    ) -> Result<LayerStore> {
        let dir = graphroot.join(format!("{driver_name}-layers"));
        fs::create_dir_all(&dir).map_err(|e| CoreError::io("create", &dir, e))?;
        Ok(LayerStore {
            dir,
            db,
            sessions,
            counts: MountCounts::open(runroot, driver_name)?,
        })
    }

    pub(crate) fn counts(&self) -> &MountCounts {
        &self.counts
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn tar_split_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.tar-split.gz"))
    }

    /// Where a layer's tar-split record is written until it is whole.
    pub(crate) fn partial_tar_split_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!(".{id}.tar-split.gz.partial"))
    }

    /// Finishes or undoes every layer a dead process left being made or
    /// being deleted: children before parents, since the driver removes no
    /// layer another stands on. Returns the layers removed.
    pub fn recover(&self, driver: &dyn GraphDriver) -> Result<Vec<String>> {
        let unsettled: Vec<(String, RowState)> = self.db.read("list unsettled layers", |tx| {
            let mut statement =
                tx.prepare_cached("SELECT id, state, owner FROM layers WHERE state != 0")?;
            let rows = statement
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        RowState {
                            state: r.get(1)?,
                            owner: r.get(2)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        let mut abandoned = Vec::new();
        for (id, row) in unsettled {
            if !self.is_alive(row.owner.as_deref())? {
                abandoned.push(id);
            }
        }
        let mut removed = Vec::new();
        // Children first: a pass removes those nothing stands on, until a
        // pass removes none.
        while !abandoned.is_empty() {
            let mut left = Vec::new();
            let before = abandoned.len();
            for id in abandoned {
                let has_children = self.db.read("read layer children", |tx| {
                    Ok(!children_of(tx, &id)?.is_empty())
                })?;
                if has_children {
                    left.push(id);
                    continue;
                }
                if self.take_over_dead(driver, &id)? {
                    removed.push(id);
                }
            }
            if left.len() == before {
                for id in &left {
                    tracing::warn!(layer = %id, "a layer left part made or part deleted still has layers on it; it stays until they go");
                }
                break;
            }
            abandoned = left;
        }
        Ok(removed)
    }

    fn is_alive(&self, owner: Option<&str>) -> Result<bool> {
        match owner {
            Some(owner) => self.sessions.is_alive(owner),
            None => Ok(false),
        }
    }

    /// Takes over layer `id` if a dead process left it being made or being
    /// deleted, and removes it. Returns whether it was removed here.
    fn take_over_dead(&self, driver: &dyn GraphDriver, id: &str) -> Result<bool> {
        let me = self.sessions.own()?;
        let Some(row) = self.db.read("read layer", |tx| row_state(tx, id))? else {
            return Ok(false);
        };
        if row.state == MADE || self.is_alive(row.owner.as_deref())? {
            return Ok(false);
        }
        // One transaction gives the row to this process, if it is still as
        // read: another collector that took it first has changed its owner.
        let taken = self.db.write(&format!("take over layer {id}"), |tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE layers SET state = ?1, owner = ?2 WHERE id = ?3 AND state = ?4 AND owner IS ?5",
                )?
                .execute(params![DELETING, me, id, row.state, row.owner])?;
            Ok(changed == 1)
        })?;
        if !taken {
            return Ok(false);
        }
        tracing::warn!(layer = %id, was = if row.state == MAKING { "being made" } else { "being deleted" }, "removing a layer a process that died left part done");
        self.finish_delete(driver, id, false)?;
        Ok(true)
    }

    pub fn get(&self, id: &str) -> Result<Option<LayerRecord>> {
        self.db
            .read(&format!("read layer {id}"), |tx| read_record(tx, id))
    }

    /// Every layer's record (layers being deleted are not listed).
    pub fn list(&self) -> Result<Vec<LayerRecord>> {
        self.db.read("list layers", |tx| {
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM layers WHERE state != {DELETING} ORDER BY id"
            );
            let mut statement = tx.prepare_cached(&sql)?;
            let mut records = statement
                .query_map([], record_from_row)?
                .collect::<rusqlite::Result<Vec<LayerRecord>>>()?;
            let mut names = all_names(tx, Kind::Layer)?;
            for record in &mut records {
                record.names = names.remove(&record.id).unwrap_or_default();
            }
            Ok(records)
        })
    }

    /// Every layer's parent, in one read.
    pub fn parents(&self) -> Result<HashMap<String, Option<String>>> {
        self.db.read("list layer parents", |tx| all_parents(tx))
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
        self.create_layer_then(driver, new, diff, |_, _| Ok(()))
    }

    /// [`create_layer`](Self::create_layer), with `then` run in the
    /// transaction that marks the layer made: what the caller records on the
    /// layer (a container's row) exists exactly when the layer does.
    pub(crate) fn create_layer_then(
        &self,
        driver: &dyn GraphDriver,
        new: &NewLayer,
        diff: Option<&mut dyn Read>,
        then: impl FnOnce(&Transaction, &LayerRecord) -> Result<()>,
    ) -> Result<LayerRecord> {
        let id = new.id.as_str();
        let parent = new.parent.as_deref();
        validate_layer_id(id).map_err(|e| e.context(format!("create layer {id}")))?;
        let me = self.sessions.own()?;
        // A dead process's leftover under this id goes first.
        self.take_over_dead(driver, id)?;
        // A parent the driver has without a record was made before records
        // were kept: asked of the driver outside the transaction.
        let parent_in_driver_only = match parent {
            Some(parent)
                if self
                    .db
                    .read("read layer", |tx| row_state(tx, parent))?
                    .is_none() =>
            {
                driver.exists(parent)?
            }
            _ => false,
        };
        let operation = format!("create layer {id}");
        // Step 1: the row, being made by this session.
        self.db.write(&operation, |tx| {
            match row_state(tx, id)? {
                None => {}
                Some(RowState { state: MADE, .. }) => {
                    return Err(DriverError::already_exists(format!(
                        "create layer {id}: layer exists"
                    ))
                    .into());
                }
                Some(RowState { state: MAKING, .. }) => {
                    return Err(busy(format!(
                        "create layer {id}: another process is making it"
                    )));
                }
                Some(_) => {
                    return Err(busy(format!(
                        "create layer {id}: another process is deleting a layer by this id"
                    )));
                }
            }
            if let Some(parent) = parent {
                let made = match row_state(tx, parent)? {
                    Some(row) => row.state == MADE,
                    None => parent_in_driver_only,
                };
                if !made {
                    return Err(not_found(format!(
                        "create layer {id}: parent {parent} does not exist"
                    )));
                }
            }
            tx.prepare_cached(
                "INSERT INTO layers (id, parent, created, state, owner, import_session, read_only, mount_label, metadata, flags, depth)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                         COALESCE((SELECT depth + 1 FROM layers WHERE id = ?2), 1))",
            )?
            .execute(params![
                id,
                parent,
                now() as i64,
                MAKING,
                me,
                new.for_import.then_some(me.as_str()),
                !new.options.read_write,
                new.options.mount_label,
                new.metadata,
                (!new.flags.is_empty())
                    .then(|| serde_json::to_string(&new.flags).expect("flags serialise")),
            ])?;
            give_names(tx, Kind::Layer, id, &new.names, true)
        })?;
        // Step 2: the driver's layer and its contents. Only a layer this call
        // made is taken away on failure: a create the driver refused (the id
        // taken outside the records) must not remove the layer that was
        // already there.
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
                        let applied = self.apply_into(driver, id, parent, diff, verified)?;
                        if let Some(expect) = &new.expect {
                            expect.check(id, &applied)?;
                        }
                        Ok(Some(applied))
                    }
                    None => Ok(None),
                }
            });
        // Step 3: made, with what the caller records on it.
        let finished = made.and_then(|diff| {
            self.db.write(&operation, |tx| {
                let changed = tx
                    .prepare_cached(
                        "UPDATE layers SET state = ?1, owner = NULL, diff = ?2 WHERE id = ?3 AND state = ?4 AND owner = ?5",
                    )?
                    .execute(params![
                        MADE,
                        diff.as_ref()
                            .map(|d| serde_json::to_string(d).expect("diff serialises")),
                        id,
                        MAKING,
                        me
                    ])?;
                if changed != 1 {
                    return Err(not_found(format!(
                        "create layer {id}: its record was taken away while it was being made"
                    )));
                }
                let record = read_record(tx, id)?.expect("updated above");
                then(tx, &record)?;
                Ok(record)
            })
        });
        match finished {
            Ok(record) => Ok(record),
            Err(err) => {
                self.undo_making(driver, id, driver_made);
                Err(err)
            }
        }
    }

    /// Takes away what a failed make left: the driver's layer (if this call
    /// made it), the tar-split record, the row. If the driver cannot remove
    /// it, the row stays (being made by this session) and is collected once
    /// this process is gone.
    fn undo_making(&self, driver: &dyn GraphDriver, id: &str, driver_made: bool) {
        if driver_made
            && let Err(e) = driver.remove(id)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(layer = id, error = %e, "could not remove a layer whose making failed");
            return;
        }
        let _ = fs::remove_file(self.tar_split_path(id));
        let _ = fs::remove_file(self.partial_tar_split_path(id));
        let Ok(me) = self.sessions.own() else { return };
        let removed = self.db.write(&format!("undo layer {id}"), |tx| {
            let changed = tx
                .prepare_cached("DELETE FROM layers WHERE id = ?1 AND state = ?2 AND owner = ?3")?
                .execute(params![id, MAKING, me])?;
            if changed == 1 {
                crate::db::drop_names(tx, Kind::Layer, id)?;
            }
            Ok(())
        });
        if let Err(e) = removed {
            tracing::warn!(layer = id, error = %e, "could not remove the record of a layer whose making failed");
        }
    }

    /// Waits while another process is making layer `id`; returns its record
    /// once made, or `None` if there is none (never made, or its making
    /// failed, or its maker died and what it left was removed).
    pub fn wait_until_made(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
    ) -> Result<Option<LayerRecord>> {
        let mut pause = Duration::from_millis(2);
        loop {
            let Some(row) = self.db.read("read layer", |tx| row_state(tx, id))? else {
                return Ok(None);
            };
            match row.state {
                MADE => return self.get(id),
                _ if !self.is_alive(row.owner.as_deref())? => {
                    self.take_over_dead(driver, id)?;
                }
                _ => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
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
            return Err(not_found(format!("apply to layer {id}: no such layer")));
        }
        let record = self.get(id)?;
        // A read-only layer is an image's: writing it would change every
        // image on it (`Store::apply_to_layer` names them).
        if record.as_ref().is_some_and(|r| r.read_only) {
            return Err(DriverError::invalid_input(format!(
                "apply to layer {id}: the layer is read-only"
            ))
            .into());
        }
        let parent = record.and_then(|r| r.parent);
        let applied = self.apply_into(driver, id, parent.as_deref(), diff, false)?;
        let diff = serde_json::to_string(&applied).expect("diff serialises");
        self.db.write(&format!("apply to layer {id}"), |tx| {
            // A layer made before records were kept gets one now.
            tx.prepare_cached(
                "INSERT OR IGNORE INTO layers (id, created, state, read_only) VALUES (?1, ?2, 0, 0)",
            )?
            .execute(params![id, now() as i64])?;
            tx.prepare_cached("UPDATE layers SET diff = ?1 WHERE id = ?2")?
                .execute(params![diff, id])?;
            Ok(())
        })?;
        Ok(applied)
    }

    fn apply_into(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        parent: Option<&str>,
        diff: &mut dyn Read,
        verified: bool,
    ) -> Result<DiffRecord> {
        let files = LayerFiles::open(driver, &self.counts, id)?;
        // Into a native diff, directories written into take their metadata
        // from the tree below: the parent, mounted for the length of the apply.
        let parent = match (&files, parent) {
            (LayerFiles::Native(_), Some(parent)) => {
                match mount_counted(driver, &self.counts, parent) {
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
        let visible = format!("state != {DELETING}");
        let found_here = self.db.read("look up a layer", |tx| {
            lookup(tx, Kind::Layer, "layers", &visible, reference)
        })?;
        match found_here {
            crate::db::Lookup::Missing
                if !reference.is_empty()
                    && self
                        .db
                        .read("read layer", |tx| row_state(tx, reference))?
                        .is_none()
                    && driver.exists(reference)? =>
            {
                Ok(reference.to_string())
            }
            other => found(Kind::Layer, reference, other),
        }
    }

    /// Gives layer `id` these names, taking any of them from the layer that
    /// had it (names are unique).
    pub fn set_names(&self, id: &str, names: &[String]) -> Result<LayerRecord> {
        self.update(id, "set names of", |tx| {
            give_names(tx, Kind::Layer, id, names, true)
        })
    }

    /// Replaces the layer's free-form metadata.
    pub fn set_metadata(&self, id: &str, metadata: Option<String>) -> Result<LayerRecord> {
        self.update(id, "set metadata of", |tx| {
            tx.prepare_cached("UPDATE layers SET metadata = ?1 WHERE id = ?2")?
                .execute(params![metadata, id])?;
            Ok(())
        })
    }

    /// Sets flag `key` (or clears it with `None`).
    pub fn set_flag(
        &self,
        id: &str,
        key: &str,
        value: Option<serde_json::Value>,
    ) -> Result<LayerRecord> {
        self.update(id, "set a flag of", |tx| {
            let mut flags = read_record(tx, id)?.expect("checked").flags;
            match value {
                Some(value) => {
                    flags.insert(key.to_string(), value);
                }
                None => {
                    flags.remove(key);
                }
            }
            let flags =
                (!flags.is_empty()).then(|| serde_json::to_string(&flags).expect("serialise"));
            tx.prepare_cached("UPDATE layers SET flags = ?1 WHERE id = ?2")?
                .execute(params![flags, id])?;
            Ok(())
        })
    }

    fn update(
        &self,
        id: &str,
        operation: &str,
        change: impl FnOnce(&Transaction) -> Result<()>,
    ) -> Result<LayerRecord> {
        self.db.write(&format!("{operation} layer {id}"), |tx| {
            if read_record(tx, id)?.is_none() {
                return Err(not_found(format!("{operation} layer {id}: no such layer")));
            }
            change(tx)?;
            Ok(read_record(tx, id)?.expect("checked above"))
        })
    }

    /// Mounts layer `id`, counted across processes: a second mount returns
    /// the same path and only the last unmount unmounts.
    pub fn mount(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        options: &MountOptions,
    ) -> Result<PathBuf> {
        // The layer's own label is read before the counts are locked (the
        // store's lock order: records, then mount counts).
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
            None => Err(not_found(format!(
                "unmount {id_or_path}: not a mounted layer or mount path"
            ))),
        }
    }

    /// How many mounts of layer `id` are held.
    pub fn mount_count(&self, id: &str) -> Result<u32> {
        self.counts.count(id)
    }

    /// Removes layer `id`; refused while another layer has it as parent.
    pub fn delete(&self, driver: &dyn GraphDriver, id: &str) -> Result<()> {
        self.delete_checked(driver, id, |_| Ok(()))
    }

    /// Removes layer `id` if `check`, run in the transaction that marks it,
    /// lets it; refused while another layer has it as parent.
    pub(crate) fn delete_checked(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        check: impl FnOnce(&Transaction) -> Result<()>,
    ) -> Result<()> {
        match self.mark_for_deletion(driver, id, check)? {
            Marked::Row => self.finish_delete(driver, id, true),
            Marked::DriverOnly => Ok(driver.remove(id)?),
        }
    }

    /// Step 1 of a delete: marks layer `id` as being deleted by this
    /// process, after `check` (run in the same transaction) and the check
    /// that no layer stands on it. A dead process's leftover is taken over.
    fn mark_for_deletion(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        check: impl FnOnce(&Transaction) -> Result<()>,
    ) -> Result<Marked> {
        let me = self.sessions.own()?;
        if self.take_over_dead(driver, id)? {
            // It was a leftover: gone now.
            return Err(not_found(format!("delete layer {id}: no such layer")));
        }
        let operation = format!("delete layer {id}");
        let in_records = self.db.write(&operation, |tx| {
            let Some(row) = row_state(tx, id)? else {
                return Ok(false);
            };
            match row.state {
                MADE => {}
                MAKING => return Err(busy(format!("{operation}: another process is making it"))),
                _ => return Err(busy(format!("{operation}: another process is deleting it"))),
            }
            check(tx)?;
            let children = children_of(tx, id)?;
            if !children.is_empty() {
                return Err(busy(format!(
                    "{operation}: layers {} are its children",
                    children.join(", ")
                )));
            }
            self.mark_in(tx, id, &me)?;
            Ok(true)
        })?;
        if in_records {
            return Ok(Marked::Row);
        }
        if driver.exists(id)? {
            return Ok(Marked::DriverOnly);
        }
        Err(not_found(format!("{operation}: no such layer")))
    }

    /// This process's session, taken before a transaction that needs it
    /// (taking it may wait for a lock, which a transaction must not).
    pub(crate) fn session(&self) -> Result<String> {
        self.sessions.own()
    }

    /// Marks layer `id` as being deleted by session `me` in the caller's
    /// transaction (the caller has checked that nothing stands on it).
    pub(crate) fn mark_in(&self, tx: &Transaction, id: &str, me: &str) -> Result<()> {
        tx.prepare_cached("UPDATE layers SET state = ?1, owner = ?2 WHERE id = ?3 AND state = ?4")?
            .execute(params![DELETING, me, id, MADE])?;
        Ok(())
    }

    /// Steps 2 and 3 of a delete (the layer is marked as being deleted by
    /// this process): the driver's layer, its mount count and tar-split
    /// record go, then the row (and a container's row on the layer). If the
    /// driver refuses, the layer is made again, as it still is whole.
    ///
    /// `was_made`: the delete started from a made layer, so a refusal by the
    /// driver leaves it made. A leftover's refusal (`false`) leaves it being
    /// deleted by this process, for the next to try once this one is gone.
    pub(crate) fn finish_delete(
        &self,
        driver: &dyn GraphDriver,
        id: &str,
        was_made: bool,
    ) -> Result<()> {
        let me = self.sessions.own()?;
        let operation = format!("delete layer {id}");
        match driver.remove(id) {
            Ok(()) => {}
            // Removed already (by a process that died before its record went).
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if !was_made => return Err(CoreError::from(e)),
            Err(e) => {
                let restored = self.db.write(&operation, |tx| {
                    tx.prepare_cached(
                        "UPDATE layers SET state = ?1, owner = NULL WHERE id = ?2 AND owner = ?3",
                    )?
                    .execute(params![MADE, id, me])?;
                    Ok(())
                });
                if let Err(restore) = restored {
                    tracing::warn!(layer = id, error = %restore, "could not mark a layer the driver kept as made again");
                }
                return Err(CoreError::from(e));
            }
        }
        self.counts.forget(id)?;
        let _ = fs::remove_file(self.tar_split_path(id));
        let _ = fs::remove_file(self.partial_tar_split_path(id));
        // The intent (being deleted) is durable since step 1: this last
        // commit need not wait for the disk.
        self.db.write_relaxed(&operation, |tx| {
            tx.prepare_cached("DELETE FROM layers WHERE id = ?1 AND state = ?2 AND owner = ?3")?
                .execute(params![id, DELETING, me])?;
            crate::db::drop_names(tx, Kind::Layer, id)?;
            // A container is its layer: without it, it is gone too.
            let containers: Vec<String> = tx
                .prepare_cached("SELECT id FROM containers WHERE layer = ?1")?
                .query_map(params![id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for container in containers {
                tx.prepare_cached("DELETE FROM containers WHERE id = ?1")?
                    .execute(params![container])?;
                crate::db::drop_names(tx, Kind::Container, &container)?;
            }
            Ok(())
        })
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
            LayerFiles::Native(_) => ApplyTarget::OVERLAY_UPPER,
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
