//! Layer records above the driver: each layer's parent and, for layers made
//! from a diff, what the diff was (digests, sizes, compression) and its
//! tar-split record, so the original stream can be given back bit for bit.
//!
//! Records are rows of the store's database (see `db`); tar-split records are
//! files in `<graphroot>/<driver>-layers/<id>.tar-split.zst` (see
//! `tar_splits`).
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

mod access;
mod diff_method;
mod diffs;
mod lifecycle;
mod records;
mod tar_splits;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use strata_plugin_abi::{
    Capabilities, CreateOptions, ErrorKind, GraphDriver, MountOptions, validate_layer_id,
};

use crate::archive::{self, ApplyOptions, ApplyTarget, Change};
use crate::db::{Database, Kind, all_names, found, give_names, lookup, names_of, now};
use crate::error::{CoreError, Result};
use crate::ids::{Digest, LayerId};
use crate::mounts::MountCounts;
use crate::sessions::Sessions;

use access::{mount_counted, mount_to_fill, unmount_counted, with_trees};
pub use diff_method::{DiffMethod, NATIVE_DIFF_WHITEOUTS_KEY};
pub use diffs::DiffSource;
pub(crate) use records::{
    DELETING, MADE, MAKING, RowState, all_parents, children_of, import_sessions, read_record,
    row_state,
};
pub use records::{DiffRecord, ExpectedDiff, LayerRecord, NewLayer, Revision};
pub(crate) use tar_splits::TarSplits;

pub(super) fn busy(message: String) -> CoreError {
    CoreError::InUse(message)
}

pub(super) fn not_found(message: String) -> CoreError {
    CoreError::NotFound(message)
}

/// The layers of one graph root, bound to the driver that holds them: the
/// records, the tar-split records, the mount counts, and the driver, so no
/// call can reach a layer through another driver.
pub struct LayerStore<'d> {
    // Declared first so it is dropped first: the driver shuts down before
    // the session file and the database go.
    driver: Box<dyn GraphDriver + 'd>,
    /// How its layers become diffs and back (chosen once, at open).
    diff_method: DiffMethod,
    tar_splits: TarSplits,
    db: Arc<Database>,
    sessions: Arc<Sessions>,
    counts: MountCounts,
}

impl<'d> LayerStore<'d> {
    /// Opens the layers `driver` holds under `graphroot` (mount counts under
    /// `runroot`), finishing or undoing what dead processes left part done.
    pub fn open(
        graphroot: &Path,
        runroot: &Path,
        driver: Box<dyn GraphDriver + 'd>,
    ) -> Result<LayerStore<'d>> {
        let name = driver.name();
        let store = LayerStore::with_records(
            driver,
            graphroot,
            runroot,
            Arc::new(Database::open(graphroot, &name)?),
            Arc::new(Sessions::open(graphroot, &name)),
        )?;
        store.recover()?;
        Ok(store)
    }

    pub(crate) fn with_records(
        driver: Box<dyn GraphDriver + 'd>,
        graphroot: &Path,
        runroot: &Path,
        db: Arc<Database>,
        sessions: Arc<Sessions>,
    ) -> Result<LayerStore<'d>> {
        let driver_name = driver.name();
        let diff_method = DiffMethod::for_driver(&*driver)?;
        tracing::debug!(driver = %driver_name, method = %diff_method.describe(), "diff method");
        let dir = graphroot.join(format!("{driver_name}-layers"));
        fs::create_dir_all(&dir).map_err(|e| CoreError::io("create", &dir, e))?;
        Ok(LayerStore {
            counts: MountCounts::open(runroot, &driver_name)?,
            driver,
            diff_method,
            tar_splits: TarSplits::new(dir),
            db,
            sessions,
        })
    }

    /// The driver that holds these layers.
    pub fn driver(&self) -> &(dyn GraphDriver + 'd) {
        &*self.driver
    }

    pub(crate) fn counts(&self) -> &MountCounts {
        &self.counts
    }

    pub(crate) fn tar_splits(&self) -> &TarSplits {
        &self.tar_splits
    }
}
