//! Layer records: the rows of the store's database, their states, and
//! looking layers up by id, name or prefix.

use super::*;

/// A row's state.
pub(crate) const MADE: i64 = 0;

pub(crate) const MAKING: i64 = 1;

pub(crate) const DELETING: i64 = 2;

/// What strata knows of a layer beyond the driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Its id, the same in the records and the driver: up to 128 letters,
    /// digits, `_`, `.` and `-`, not starting with `.` or `-`.
    pub id: LayerId,
    /// The layer this one was made as a child of; `None` for a base layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<LayerId>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Being made by a process (or left so by one that died).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// The diff the layer was filled from; `None` for a layer made without
    /// one and not applied to since, such as a container's, which is written
    /// in place.
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

/// What [`LayerStore::revise`] sets on a layer, all at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    /// Every name the layer is to have (the ones it had and are not listed
    /// are dropped).
    pub names: Vec<String>,
    /// Its flags, whole.
    pub flags: BTreeMap<String, serde_json::Value>,
    /// Whether it is read-only from now on.
    pub read_only: bool,
}

impl Revision {
    /// The record's current names, flags and mark: the start of a change.
    pub fn of(record: &LayerRecord) -> Revision {
        Revision {
            names: record.names.clone(),
            flags: record.flags.clone(),
            read_only: record.read_only,
        }
    }
}

/// A layer to make: where it goes, what it is called, and what its diff must
/// be (an OCI blob's digest and diff id), checked before the layer counts as
/// made.
#[derive(Clone, Debug)]
pub struct NewLayer {
    /// The id to make it under, which no layer may have.
    pub id: LayerId,
    /// The made layer to stack it on; `None` for a base layer.
    pub parent: Option<LayerId>,
    /// How the driver makes it: read-write (a container's) or not, its
    /// SELinux mount label, per-layer storage options.
    pub options: CreateOptions,
    /// Names to give it, taken from any layer that has them.
    pub names: Vec<String>,
    /// Free-form text the caller keeps with the layer.
    pub metadata: Option<String>,
    /// Caller-defined flags to record with it.
    pub flags: BTreeMap<String, serde_json::Value>,
    /// What its diff must turn out to be, checked before the layer counts
    /// as made (a mismatch is [`CoreError::Verify`]); `None` checks nothing.
    pub expect: Option<ExpectedDiff>,
    /// Made for an import that records its image afterwards: if this
    /// process dies first, the layer is removed (unless something else has
    /// come to use it).
    pub for_import: bool,
}

impl NewLayer {
    /// A layer `id` with no parent, names, data or checks: the start of a
    /// `NewLayer { parent: .., ..NewLayer::new(id) }`.
    pub fn new(id: LayerId) -> NewLayer {
        NewLayer {
            id,
            parent: None,
            options: CreateOptions::default(),
            names: Vec::new(),
            metadata: None,
            flags: BTreeMap::new(),
            expect: None,
            for_import: false,
        }
    }
}

/// What a diff stream must turn out to be; any field left `None` is not
/// checked.
#[derive(Clone, Debug, Default)]
pub struct ExpectedDiff {
    /// How the stream is named in errors, such as "blob sha256:ab12..".
    pub source: String,
    /// The digest of the stream as given (the blob).
    pub compressed_digest: Option<Digest>,
    /// The length of the stream as given, in bytes (the blob's size).
    pub compressed_size: Option<u64>,
    /// The digest of the decompressed tar (the OCI diff id).
    pub uncompressed_digest: Option<Digest>,
}

impl ExpectedDiff {
    pub(super) fn check(&self, layer: &str, found: &DiffRecord) -> Result<()> {
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
                self.compressed_digest.as_ref().map(Digest::to_string),
                found.compressed_digest.to_string(),
            ),
            (
                "uncompressed digest (diff id)",
                self.uncompressed_digest.as_ref().map(Digest::to_string),
                found.uncompressed_digest.to_string(),
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
    /// The digest of the stream as it was given (the blob, compressed or
    /// not).
    pub compressed_digest: Digest,
    /// The length of the stream as it was given, in bytes.
    pub compressed_size: u64,
    /// The digest of the decompressed tar (the OCI diff id).
    pub uncompressed_digest: Digest,
    /// The length of the decompressed tar, in bytes.
    pub uncompressed_size: u64,
    /// How the stream was compressed, recognised from its first bytes:
    /// "none", "gzip", "zstd", "bzip2" or "xz".
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

pub(super) const RECORD_COLUMNS: &str =
    "id, parent, created, state, read_only, mount_label, metadata, flags, diff";

pub(super) fn record_from_row(row: &rusqlite::Row) -> rusqlite::Result<LayerRecord> {
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
pub(crate) fn all_parents(tx: &Connection) -> Result<HashMap<LayerId, Option<LayerId>>> {
    let mut statement = tx.prepare_cached("SELECT id, parent FROM layers")?;
    let parents = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<HashMap<LayerId, Option<LayerId>>>>()?;
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
pub(crate) fn children_of(tx: &Connection, id: &str) -> Result<Vec<LayerId>> {
    let mut statement = tx.prepare_cached("SELECT id FROM layers WHERE parent = ?1 ORDER BY id")?;
    let children = statement
        .query_map(params![id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<LayerId>>>()?;
    Ok(children)
}

impl LayerStore<'_> {
    /// The record of layer `id` (an exact id, not a name or prefix); `None`
    /// if there is none or it is being deleted.
    pub fn get(&self, id: &LayerId) -> Result<Option<LayerRecord>> {
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
                record.names = names.remove(record.id.as_str()).unwrap_or_default();
            }
            Ok(records)
        })
    }

    /// Every layer's parent, in one read.
    pub fn parents(&self) -> Result<HashMap<LayerId, Option<LayerId>>> {
        self.db.read("list layer parents", |tx| all_parents(tx))
    }

    /// The id of the layer `reference` names: an id, a name, or a prefix of
    /// exactly one id. An ambiguous prefix is an error that lists the matches.
    /// A layer the driver has but the records do not (made before records
    /// were kept) is found by its full id.
    pub fn resolve(&self, reference: &str) -> Result<LayerId> {
        let driver = self.driver();
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
                LayerId::new(reference)
            }
            other => found(Kind::Layer, reference, other),
        }
    }

    /// Gives layer `id` these names, taking any of them from the layer that
    /// had it (names are unique).
    pub fn set_names(&self, id: &LayerId, names: &[String]) -> Result<LayerRecord> {
        self.update(id, "set names of", |tx| {
            give_names(tx, Kind::Layer, id, names, true)
        })
    }

    /// Changes layer `id`'s names, flags and read-only mark together, in one
    /// transaction: `change` gets the current record and answers the new
    /// values, or an error that changes nothing. Unlike
    /// [`set_names`](Self::set_names), a name another layer has is refused
    /// ([`CoreError::AlreadyExists`]), not taken: a caller renaming (a
    /// containerd snapshot committed under its name) must never steal.
    pub fn revise(
        &self,
        id: &LayerId,
        operation: &str,
        change: impl FnOnce(&LayerRecord) -> Result<Revision>,
    ) -> Result<LayerRecord> {
        self.update(id, operation, |tx| {
            let current = read_record(tx, id)?.expect("checked");
            let revision = change(&current)?;
            for name in &revision.names {
                if let Some(owner) = crate::db::name_owner(tx, Kind::Layer, name)?
                    && owner != id.as_str()
                {
                    return Err(CoreError::AlreadyExists(format!(
                        "{operation} layer {id}: the name {name:?} belongs to layer {owner}"
                    )));
                }
            }
            give_names(tx, Kind::Layer, id, &revision.names, true)?;
            let flags = (!revision.flags.is_empty())
                .then(|| serde_json::to_string(&revision.flags).expect("serialise"));
            tx.prepare_cached("UPDATE layers SET flags = ?1, read_only = ?2 WHERE id = ?3")?
                .execute(params![flags, revision.read_only, id])?;
            Ok(())
        })
    }

    /// Replaces the layer's free-form metadata.
    pub fn set_metadata(&self, id: &LayerId, metadata: Option<String>) -> Result<LayerRecord> {
        self.update(id, "set metadata of", |tx| {
            tx.prepare_cached("UPDATE layers SET metadata = ?1 WHERE id = ?2")?
                .execute(params![metadata, id])?;
            Ok(())
        })
    }

    /// Sets flag `key` (or clears it with `None`).
    pub fn set_flag(
        &self,
        id: &LayerId,
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

    pub(super) fn update(
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

    pub(super) fn is_alive(&self, owner: Option<&str>) -> Result<bool> {
        match owner {
            Some(owner) => self.sessions.is_alive(owner),
            None => Ok(false),
        }
    }
}
