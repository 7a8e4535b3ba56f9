//! The store's records in one SQLite database per graph root and driver:
//! `<graphroot>/<driver>.db` (with its `-wal` and `-shm` files).
//!
//! Every change is one transaction, so a process killed at any instruction
//! leaves the records as they were before the change or after it. Where a
//! change also touches the driver (which no transaction covers), the
//! transaction that starts it records the intent in the row itself (a layer
//! `making` or `deleting`), and whoever finds a dead process's intent finishes
//! or undoes it; see `layers` and `store`.
//!
//! One connection per store, in WAL mode: readers never wait for a writer,
//! writers take the write lock at the start of their transaction (`BEGIN
//! IMMEDIATE`) and wait up to [`BUSY_TIMEOUT`] for another's.
//!
//! Lock order for the whole store (every process takes them in this order,
//! never the reverse, so no two can wait on each other): the graph root's
//! layers-in-use lock, then the database's write lock, then the mount counts'
//! lock. Nothing waits for a lock while it holds the database's write lock,
//! and no driver call is made inside a transaction.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::error::{CoreError, Result};

/// How long a writer waits for another process's transaction.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(120);

/// The schema's version, kept in SQLite's `user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE layers (
    id TEXT PRIMARY KEY NOT NULL,
    parent TEXT,
    created INTEGER NOT NULL,
    -- 0 made, 1 being made (by `owner`), 2 being deleted.
    state INTEGER NOT NULL,
    -- The session making the layer, or the import it was made for until
    -- that import records its image.
    owner TEXT,
    import_session TEXT,
    -- How many layers the chain ending here has (1 for a layer without a
    -- parent): an image's layer count without walking its chain.
    depth INTEGER NOT NULL DEFAULT 1,
    read_only INTEGER NOT NULL,
    mount_label TEXT,
    metadata TEXT,
    flags TEXT,
    diff TEXT
) WITHOUT ROWID;
CREATE INDEX layers_by_parent ON layers(parent);
CREATE INDEX layers_unsettled ON layers(state) WHERE state != 0;
CREATE INDEX layers_by_import ON layers(import_session) WHERE import_session IS NOT NULL;

CREATE TABLE images (
    id TEXT PRIMARY KEY NOT NULL,
    digest TEXT,
    top_layer TEXT,
    created INTEGER NOT NULL,
    metadata TEXT
) WITHOUT ROWID;
CREATE INDEX images_by_top_layer ON images(top_layer);

CREATE TABLE big_data (
    image TEXT NOT NULL,
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (image, key)
);

CREATE TABLE containers (
    id TEXT PRIMARY KEY NOT NULL,
    image TEXT NOT NULL,
    layer TEXT NOT NULL,
    created INTEGER NOT NULL,
    metadata TEXT
) WITHOUT ROWID;
CREATE INDEX containers_by_image ON containers(image);
CREATE INDEX containers_by_layer ON containers(layer);

-- Names of layers, images and containers: unique per kind, kept in the
-- order they were given.
CREATE TABLE names (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    UNIQUE (kind, name)
);
CREATE INDEX names_by_owner ON names(kind, owner);

CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
";

/// A connection to the database at `path`, in WAL mode (readers go on
/// while a writer writes) with FULL synchronisation (a committed change
/// survives a power cut too, not only a killed process).
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // The mode is kept in the file: set once, by whoever makes it.
    let mode: String = connection.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        connection.pragma_update(None, "journal_mode", "WAL")?;
    }
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// The kinds of record that carry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Layer,
    Image,
    Container,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Layer => "layer",
            Kind::Image => "image",
            Kind::Container => "container",
        }
    }
}

/// One store's database connection.
pub(crate) struct Database {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl Database {
    /// The database of `driver_name` under `graphroot`, made (with its
    /// schema) if missing.
    pub(crate) fn open(graphroot: &Path, driver_name: &str) -> Result<Database> {
        std::fs::create_dir_all(graphroot).map_err(|e| CoreError::io("create", graphroot, e))?;
        let path = graphroot.join(format!("{driver_name}.db"));
        let records = |source| CoreError::Records {
            operation: "open".into(),
            path: path.clone(),
            source: Box::new(source),
        };
        // Setting the journal mode (and reading it while another process
        // opens or closes the database) can answer "busy" without waiting
        // for the busy timeout: those steps are retried until it passes.
        let started = std::time::Instant::now();
        let connection = loop {
            match connect(&path) {
                Ok(connection) => break connection,
                Err(e) if is_busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(records(e)),
            }
        };
        let database = Database {
            path: path.clone(),
            connection: Mutex::new(connection),
        };
        // Read first: the common case (an existing database) needs no write
        // transaction, whose commit would cost an fsync on every command.
        let current: i64 = database.read("read the schema version of", |tx| {
            Ok(tx.pragma_query_value(None, "user_version", |r| r.get(0))?)
        })?;
        if current == SCHEMA_VERSION {
            return Ok(database);
        }
        database.write("set up the schema of", |tx| {
            let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            match version {
                0 => {
                    tx.execute_batch(SCHEMA)?;
                    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                    Ok(())
                }
                SCHEMA_VERSION => Ok(()),
                newer => Err(CoreError::Setting(format!(
                    "{}: the records are at schema version {newer}, made by a newer strata (this one knows {SCHEMA_VERSION}); refusing to open them",
                    path.display()
                ))),
            }
        })?;
        Ok(database)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, operation: &str, source: rusqlite::Error) -> CoreError {
        CoreError::Records {
            operation: operation.to_string(),
            path: self.path.clone(),
            source: Box::new(source),
        }
    }

    /// Runs `f` in a read transaction: it sees one consistent state of the
    /// records, whatever other processes commit meanwhile.
    pub(crate) fn read<T>(
        &self,
        operation: &str,
        f: impl FnOnce(&Transaction) -> Result<T>,
    ) -> Result<T> {
        self.transact(TransactionBehavior::Deferred, false, operation, f)
    }

    /// Runs `f` in a write transaction, committed if it returns `Ok` and
    /// rolled back otherwise. `f` must not wait for any other lock, nor call
    /// the driver.
    pub(crate) fn write<T>(
        &self,
        operation: &str,
        f: impl FnOnce(&Transaction) -> Result<T>,
    ) -> Result<T> {
        self.transact(TransactionBehavior::Immediate, false, operation, f)
    }

    /// [`write`](Self::write) without waiting for the disk: for the last
    /// step of a change whose intent is already durable (the row deleted at
    /// the end of a layer delete). A power cut may lose the commit; the
    /// intent it finished is then found again and finished again. Process
    /// kills lose nothing either way (the commit is in the log).
    pub(crate) fn write_relaxed<T>(
        &self,
        operation: &str,
        f: impl FnOnce(&Transaction) -> Result<T>,
    ) -> Result<T> {
        self.transact(TransactionBehavior::Immediate, true, operation, f)
    }

    /// One transaction of `behavior` around `f`, committed if it returns
    /// `Ok`. `relaxed`: committed with `synchronous=NORMAL`, set and reset
    /// while the connection is held, so no other thread's commit runs so.
    fn transact<T>(
        &self,
        behavior: TransactionBehavior,
        relaxed: bool,
        operation: &str,
        f: impl FnOnce(&Transaction) -> Result<T>,
    ) -> Result<T> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        if relaxed {
            connection
                .pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| self.error(operation, e))?;
        }
        let result = (|| {
            let tx = connection
                .transaction_with_behavior(behavior)
                .map_err(|e| self.error(operation, e))?;
            let value = f(&tx).map_err(|e| self.contextualise(operation, e))?;
            tx.commit().map_err(|e| self.error(operation, e))?;
            Ok(value)
        })();
        // The change is committed (or not) whatever this says: a failure to
        // go back is logged, not made the change's error.
        if relaxed && let Err(e) = connection.pragma_update(None, "synchronous", "FULL") {
            tracing::warn!(error = %e, "could not set the records' synchronous mode back to FULL");
        }
        result
    }

    /// A bare SQLite error from inside a transaction gets the operation and
    /// the database's path.
    fn contextualise(&self, operation: &str, error: CoreError) -> CoreError {
        match error {
            CoreError::Sql(source) => self.error(operation, source),
            other => other,
        }
    }
}

/// The names `kind` `owner` has, in the order given.
pub(crate) fn names_of(tx: &Connection, kind: Kind, owner: &str) -> Result<Vec<String>> {
    let mut statement =
        tx.prepare_cached("SELECT name FROM names WHERE kind = ?1 AND owner = ?2 ORDER BY seq")?;
    let names = statement
        .query_map(params![kind.as_str(), owner], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(names)
}

/// Every name of every `kind` record, by owner, in the order given.
pub(crate) fn all_names(
    tx: &Connection,
    kind: Kind,
) -> Result<std::collections::HashMap<String, Vec<String>>> {
    let mut statement =
        tx.prepare_cached("SELECT owner, name FROM names WHERE kind = ?1 ORDER BY seq")?;
    let mut rows = statement.query(params![kind.as_str()])?;
    let mut names: std::collections::HashMap<String, Vec<String>> = Default::default();
    while let Some(row) = rows.next()? {
        names.entry(row.get(0)?).or_default().push(row.get(1)?);
    }
    Ok(names)
}

/// Gives `owner` the names `names` in addition to those it has (or instead,
/// with `replace`), taking each from whichever record of its kind had it.
pub(crate) fn give_names(
    tx: &Connection,
    kind: Kind,
    owner: &str,
    names: &[String],
    replace: bool,
) -> Result<()> {
    if replace {
        tx.prepare_cached("DELETE FROM names WHERE kind = ?1 AND owner = ?2")?
            .execute(params![kind.as_str(), owner])?;
    }
    for name in names {
        let current: Option<String> = tx
            .prepare_cached("SELECT owner FROM names WHERE kind = ?1 AND name = ?2")?
            .query_row(params![kind.as_str(), name], |r| r.get(0))
            .optional()?;
        if current.as_deref() == Some(owner) {
            continue;
        }
        tx.prepare_cached("DELETE FROM names WHERE kind = ?1 AND name = ?2")?
            .execute(params![kind.as_str(), name])?;
        tx.prepare_cached("INSERT INTO names (kind, name, owner) VALUES (?1, ?2, ?3)")?
            .execute(params![kind.as_str(), name, owner])?;
    }
    Ok(())
}

/// Removes every name of `owner`.
pub(crate) fn drop_names(tx: &Connection, kind: Kind, owner: &str) -> Result<()> {
    tx.prepare_cached("DELETE FROM names WHERE kind = ?1 AND owner = ?2")?
        .execute(params![kind.as_str(), owner])?;
    Ok(())
}

/// The owner of `name`, if any record of `kind` has it.
pub(crate) fn name_owner(tx: &Connection, kind: Kind, name: &str) -> Result<Option<String>> {
    Ok(tx
        .prepare_cached("SELECT owner FROM names WHERE kind = ?1 AND name = ?2")?
        .query_row(params![kind.as_str(), name], |r| r.get(0))
        .optional()?)
}

/// How a reference matched.
pub(crate) enum Lookup {
    Found(String),
    Missing,
    Ambiguous(Vec<String>),
}

/// Finds the one record of `kind` in `table` that `reference` names: its id,
/// one of its names, or a prefix of exactly one id. `visible` is an SQL
/// condition a row must meet to be found (records being deleted are not).
pub(crate) fn lookup(
    tx: &Connection,
    kind: Kind,
    table: &str,
    visible: &str,
    reference: &str,
) -> Result<Lookup> {
    if reference.is_empty() {
        return Ok(Lookup::Missing);
    }
    let exists = format!("SELECT 1 FROM {table} WHERE id = ?1 AND {visible}");
    if tx
        .prepare_cached(&exists)?
        .query_row(params![reference], |_| Ok(()))
        .optional()?
        .is_some()
    {
        return Ok(Lookup::Found(reference.to_string()));
    }
    if let Some(owner) = name_owner(tx, kind, reference)?
        && tx
            .prepare_cached(&exists)?
            .query_row(params![owner], |_| Ok(()))
            .optional()?
            .is_some()
    {
        return Ok(Lookup::Found(owner));
    }
    // Ids from the reference on, in order: those that start with it come
    // first and together. Up to 21 are read: enough to list an ambiguity.
    let prefixed =
        format!("SELECT id FROM {table} WHERE id >= ?1 AND {visible} ORDER BY id LIMIT 21");
    let mut statement = tx.prepare_cached(&prefixed)?;
    let mut matches = Vec::new();
    let mut rows = statement.query(params![reference])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        if !id.starts_with(reference) {
            break;
        }
        matches.push(id);
    }
    Ok(match matches.len() {
        0 => Lookup::Missing,
        1 => Lookup::Found(matches.pop().expect("one match")),
        _ => Lookup::Ambiguous(matches),
    })
}

/// The id a lookup found, or the error that says why there is none.
pub(crate) fn found<Id: TryFrom<String, Error = CoreError>>(
    kind: Kind,
    reference: &str,
    lookup: Lookup,
) -> Result<Id> {
    let kind = kind.as_str();
    match lookup {
        Lookup::Found(id) => Id::try_from(id),
        Lookup::Missing => Err(CoreError::NotFound(format!(
            "no {kind} has the id, name or id prefix '{reference}'"
        ))),
        Lookup::Ambiguous(many) => Err(CoreError::InvalidInput(format!(
            "'{reference}' is a prefix of {}{} {kind}s ({}); give more of the id",
            if many.len() > 20 { "more than " } else { "" },
            many.len().min(20),
            many.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A new random 64-hex-digit id, as container ids are.
pub(crate) fn random_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        CoreError::io(
            "read random bytes for",
            "a new id",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), "vfs").unwrap();
        (dir, db)
    }

    fn add_image(db: &Database, id: &str, names: &[&str]) {
        db.write("test", |tx| {
            tx.execute(
                "INSERT INTO images (id, created) VALUES (?1, 0)",
                params![id],
            )?;
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            give_names(tx, Kind::Image, id, &names, false)
        })
        .unwrap();
    }

    fn find(db: &Database, reference: &str) -> Lookup {
        db.read("test", |tx| {
            lookup(tx, Kind::Image, "images", "1", reference)
        })
        .unwrap()
    }

    #[test]
    fn id_then_name_then_unique_prefix() {
        let (_dir, db) = database();
        add_image(&db, "abc123", &["web"]);
        add_image(&db, "abd456", &[]);
        add_image(&db, "ff0000", &["abc"]);
        assert!(matches!(find(&db, "abd456"), Lookup::Found(id) if id == "abd456"));
        assert!(matches!(find(&db, "web"), Lookup::Found(id) if id == "abc123"));
        // A name beats a prefix of another id.
        assert!(matches!(find(&db, "abc"), Lookup::Found(id) if id == "ff0000"));
        assert!(matches!(find(&db, "abd"), Lookup::Found(id) if id == "abd456"));
        assert!(matches!(find(&db, "ab"), Lookup::Ambiguous(m) if m.len() == 2));
        assert!(matches!(find(&db, "zz"), Lookup::Missing));
        assert!(matches!(find(&db, ""), Lookup::Missing));
    }

    #[test]
    fn names_move_and_keep_their_order() {
        let (_dir, db) = database();
        add_image(&db, "a", &["x", "y"]);
        add_image(&db, "b", &["z", "x"]);
        db.read("test", |tx| {
            assert_eq!(names_of(tx, Kind::Image, "a")?, vec!["y".to_string()]);
            assert_eq!(names_of(tx, Kind::Image, "b")?, vec!["z", "x"]);
            // Kinds do not share names.
            assert_eq!(name_owner(tx, Kind::Layer, "x")?, None);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let (dir, db) = database();
        db.write("test", |tx| {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
            Ok(())
        })
        .unwrap();
        drop(db);
        let err = Database::open(dir.path(), "vfs").err().unwrap().to_string();
        assert!(err.contains("newer strata"), "{err}");
    }

    #[test]
    fn random_ids_differ() {
        let a = random_id().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_id().unwrap());
    }
}
