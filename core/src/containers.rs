//! Container records: a read-write layer on top of an image's top layer.
//!
//! Containers and their names are rows of the store's database (see `db`).
//! A container's layer has the container's id; the container's row is
//! written in the transaction that marks its layer made, and deleted in the
//! one that deletes its layer's row, so neither is ever without the other.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::db::{Database, Kind, all_names, found, give_names, lookup, name_owner, names_of};
use crate::error::{CoreError, Result};
use crate::ids::{ContainerId, ImageId, LayerId};

/// A container: what the store records of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Its id: 64 random hex digits, also the id of its layer.
    pub id: ContainerId,
    /// Its names, in the order given; no two containers share a name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The image it was made from.
    pub image: ImageId,
    /// Its read-write layer.
    pub layer: LayerId,
    /// Seconds since the epoch.
    pub created: u64,
    /// Free-form data the runtime keeps with the container; strata does
    /// not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

const COLUMNS: &str = "id, image, layer, created, metadata";

fn from_row(row: &rusqlite::Row) -> rusqlite::Result<ContainerRecord> {
    Ok(ContainerRecord {
        id: row.get(0)?,
        image: row.get(1)?,
        layer: row.get(2)?,
        created: row.get::<_, i64>(3)? as u64,
        metadata: row.get(4)?,
        names: Vec::new(),
    })
}

/// The record of container `id`, read in the caller's transaction.
pub(crate) fn read_container(tx: &Connection, id: &str) -> Result<Option<ContainerRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM containers WHERE id = ?1");
    let Some(mut record) = tx
        .prepare_cached(&sql)?
        .query_row(params![id], from_row)
        .optional()?
    else {
        return Ok(None);
    };
    record.names = names_of(tx, Kind::Container, id)?;
    Ok(Some(record))
}

/// Every container, read in the caller's transaction.
pub(crate) fn read_containers(tx: &Connection) -> Result<Vec<ContainerRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM containers ORDER BY id");
    let mut records = tx
        .prepare_cached(&sql)?
        .query_map([], from_row)?
        .collect::<rusqlite::Result<Vec<ContainerRecord>>>()?;
    let mut names = all_names(tx, Kind::Container)?;
    for record in &mut records {
        record.names = names.remove(record.id.as_str()).unwrap_or_default();
    }
    Ok(records)
}

/// The containers made from image `image`, named by their first name (or id).
pub(crate) fn containers_of_image(tx: &Connection, image: &str) -> Result<Vec<String>> {
    let ids: Vec<String> = tx
        .prepare_cached("SELECT id FROM containers WHERE image = ?1 ORDER BY id")?
        .query_map(params![image], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut shown = Vec::new();
    for id in ids {
        shown.push(
            names_of(tx, Kind::Container, &id)?
                .into_iter()
                .next()
                .unwrap_or(id),
        );
    }
    Ok(shown)
}

/// Records `record` in the caller's transaction. A name another container
/// has is refused rather than moved: taking a live container's name would
/// surprise whoever uses it.
pub(crate) fn insert_container(tx: &Connection, record: &ContainerRecord) -> Result<()> {
    for name in &record.names {
        if let Some(other) = name_owner(tx, Kind::Container, name)? {
            return Err(CoreError::AlreadyExists(format!(
                "container name '{name}' is taken by container {other}"
            )));
        }
    }
    if read_container(tx, &record.id)?.is_some() {
        return Err(CoreError::AlreadyExists(format!(
            "create container {}: container exists",
            record.id
        )));
    }
    tx.prepare_cached(
        "INSERT INTO containers (id, image, layer, created, metadata) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        record.id,
        record.image,
        record.layer,
        record.created as i64,
        record.metadata
    ])?;
    give_names(tx, Kind::Container, &record.id, &record.names, true)
}

/// The container records, read and looked up by id, name or id prefix.
/// Containers are made and deleted through [`Store`](crate::store::Store),
/// which makes and deletes their layers with them.
pub struct ContainerStore {
    db: Arc<Database>,
}

impl ContainerStore {
    /// The container records of `driver_name` under `graphroot` (a database
    /// of their own; a [`Store`](crate::store::Store) shares one).
    pub fn open(graphroot: &Path, driver_name: &str) -> Result<ContainerStore> {
        Ok(ContainerStore {
            db: Arc::new(Database::open(graphroot, driver_name)?),
        })
    }

    pub(crate) fn with_records(db: Arc<Database>) -> ContainerStore {
        ContainerStore { db }
    }

    /// The record of container `id` (an exact id, not a name or prefix);
    /// `None` if there is none.
    pub fn get(&self, id: &ContainerId) -> Result<Option<ContainerRecord>> {
        self.db
            .read(&format!("read container {id}"), |tx| read_container(tx, id))
    }

    /// Every container, by id.
    pub fn list(&self) -> Result<Vec<ContainerRecord>> {
        self.db.read("list containers", |tx| read_containers(tx))
    }

    /// The id of the container `reference` names: id, name or unique prefix.
    pub fn resolve(&self, reference: &str) -> Result<ContainerId> {
        self.db.read("look up a container", |tx| {
            let lookup = lookup(tx, Kind::Container, "containers", "1", reference)?;
            found(Kind::Container, reference, lookup)
        })
    }

    /// The container `reference` names.
    pub fn find(&self, reference: &str) -> Result<ContainerRecord> {
        let id = self.resolve(reference)?;
        self.get(&id)?
            .ok_or_else(|| CoreError::NotFound(format!("container {id}: no such container")))
    }
}
