//! Making and deleting layers, and finishing or undoing what a killed
//! process left part done (see the module documentation of `layers` for the
//! steps and why a kill between any two is safe).

use super::*;

/// How a layer is deleted when [`LayerStore::delete`] is asked.
pub(super) enum Marked {
    /// Marked as being deleted by this process: finish it.
    Row,
    /// Known to the driver only (made before records were kept).
    DriverOnly,
}

impl LayerStore<'_> {
    /// Finishes or undoes every layer a dead process left being made or
    /// being deleted: children before parents, since the driver removes no
    /// layer another stands on. Returns the layers removed.
    pub fn recover(&self) -> Result<Vec<String>> {
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
                if self.take_over_dead(&id)? {
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

    /// Takes over layer `id` if a dead process left it being made or being
    /// deleted, and removes it. Returns whether it was removed here.
    pub(super) fn take_over_dead(&self, id: &str) -> Result<bool> {
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
        self.finish_delete(id, false)?;
        Ok(true)
    }

    /// Creates layer `id` (a child of `parent`), and applies `diff` to it if
    /// given. On any failure nothing of the layer is left: not in the driver,
    /// not in the records.
    pub fn create(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        options: &CreateOptions,
        diff: Option<&mut dyn Read>,
    ) -> Result<LayerRecord> {
        self.create_layer(
            &NewLayer {
                parent: parent.cloned(),
                options: options.clone(),
                ..NewLayer::new(id.clone())
            },
            diff,
        )
    }

    /// Creates the layer `new` describes, filled from `diff` if given and
    /// checked against `new.expect`. On any failure nothing of the layer is
    /// left: not in the driver, not in the records.
    pub fn create_layer(&self, new: &NewLayer, diff: Option<&mut dyn Read>) -> Result<LayerRecord> {
        self.create_layer_then(new, diff, |_, _| Ok(()))
    }

    /// [`create_layer`](Self::create_layer), with `then` run in the
    /// transaction that marks the layer made: what the caller records on the
    /// layer (a container's row) exists exactly when the layer does.
    pub(crate) fn create_layer_then(
        &self,
        new: &NewLayer,
        diff: Option<&mut dyn Read>,
        then: impl FnOnce(&Transaction, &LayerRecord) -> Result<()>,
    ) -> Result<LayerRecord> {
        let driver = self.driver();
        let id = new.id.as_str();
        let parent = new.parent.as_deref();
        validate_layer_id(id).map_err(|e| e.context(format!("create layer {id}")))?;
        let me = self.sessions.own()?;
        // A dead process's leftover under this id goes first.
        self.take_over_dead(id)?;
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
                    return Err(CoreError::AlreadyExists(format!(
                        "create layer {id}: layer exists"
                    )));
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
                        let applied =
                            self.apply_into(id, parent, diff, verified, new.options.read_write)?;
                        if let Some(expect) = &new.expect {
                            expect.check(id, &applied)?;
                            tracing::debug!(
                                layer = id,
                                digest = %applied.compressed_digest,
                                diff_id = %applied.uncompressed_digest,
                                "diff digests checked against what was declared"
                            );
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
            Ok(record) => {
                tracing::debug!(
                    layer = id,
                    parent = ?parent,
                    read_only = record.read_only,
                    size = record.diff.as_ref().map(|d| d.size),
                    "layer made"
                );
                Ok(record)
            }
            Err(err) => {
                self.undo_making(id, driver_made);
                Err(err)
            }
        }
    }

    /// Takes away what a failed make left: the driver's layer (if this call
    /// made it), the tar-split record, the row. If the driver cannot remove
    /// it, the row stays (being made by this session) and is collected once
    /// this process is gone.
    pub(super) fn undo_making(&self, id: &str, driver_made: bool) {
        let driver = self.driver();
        if driver_made
            && let Err(e) = driver.remove(id)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(layer = id, error = %e, "could not remove a layer whose making failed");
            return;
        }
        self.tar_splits.remove(id);
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
    pub fn wait_until_made(&self, id: &LayerId) -> Result<Option<LayerRecord>> {
        let mut pause = Duration::from_millis(2);
        loop {
            let Some(row) = self.db.read("read layer", |tx| row_state(tx, id))? else {
                return Ok(None);
            };
            match row.state {
                MADE => return self.get(id),
                _ if !self.is_alive(row.owner.as_deref())? => {
                    self.take_over_dead(id)?;
                }
                _ => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// Removes layer `id`; refused while another layer has it as parent.
    pub fn delete(&self, id: &LayerId) -> Result<()> {
        self.delete_checked(id, |_| Ok(()))
    }

    /// Removes layer `id` if `check`, run in the transaction that marks it,
    /// lets it; refused while another layer has it as parent.
    pub(crate) fn delete_checked(
        &self,
        id: &str,
        check: impl FnOnce(&Transaction) -> Result<()>,
    ) -> Result<()> {
        let driver = self.driver();
        match self.mark_for_deletion(id, check)? {
            Marked::Row => self.finish_delete(id, true),
            Marked::DriverOnly => Ok(driver.remove(id)?),
        }
    }

    /// Step 1 of a delete: marks layer `id` as being deleted by this
    /// process, after `check` (run in the same transaction) and the check
    /// that no layer stands on it. A dead process's leftover is taken over.
    pub(super) fn mark_for_deletion(
        &self,
        id: &str,
        check: impl FnOnce(&Transaction) -> Result<()>,
    ) -> Result<Marked> {
        let driver = self.driver();
        let me = self.sessions.own()?;
        if self.take_over_dead(id)? {
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

    /// Steps 2 and 3 of a delete (the layer is marked as being deleted by
    /// this process): the driver's layer, its mount count and tar-split
    /// record go, then the row (and a container's row on the layer). If the
    /// driver refuses, the layer is made again, as it still is whole.
    ///
    /// `was_made`: the delete started from a made layer, so a refusal by the
    /// driver leaves it made. A leftover's refusal (`false`) leaves it being
    /// deleted by this process, for the next to try once this one is gone.
    pub(crate) fn finish_delete(&self, id: &str, was_made: bool) -> Result<()> {
        let driver = self.driver();
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
        self.tar_splits.remove(id);
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
}
