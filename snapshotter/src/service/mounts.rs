//! A snapshot's mounts: what the driver describes, or, for a driver that
//! describes none, a bind of the store's counted mount of the layer, taken
//! once under the snapshotter lock and held until Commit or Remove.

use std::path::Path;

use containerd_snapshots::api::types::Mount;
use strata_core::layers::Revision;
use strata_core::{CoreError, DriverErrorKind, MountOptions};
use strata_driver_kit::mounts::read_only_asked;

use super::{Found, Result, Snapshots};
use crate::error::SnapshotError;
use crate::record::{self, SnapshotFacts};

impl Snapshots {
    /// Mounts: how to mount the snapshot's tree.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let context = format!("mounts of snapshot {key:?}");
        let found = self.find(key, "mounts of")?;
        if let Some(mounts) = self.described(&found, &context)? {
            return Ok(mounts);
        }
        // The fallback may take a mount and record it: under the lock, with
        // the snapshot found again.
        let _lock = self.lock()?;
        let found = self.find(key, "mounts of")?;
        self.held_bind(found, &context)
    }

    pub(super) fn mount_options(facts: &SnapshotFacts) -> MountOptions {
        MountOptions {
            options: if facts.kind.is_writable() {
                Vec::new()
            } else {
                vec!["ro".into()]
            },
            ..Default::default()
        }
    }

    /// The snapshot's mounts as the driver describes them; `None` for a
    /// driver that describes none.
    pub(super) fn described(&self, found: &Found, context: &str) -> Result<Option<Vec<Mount>>> {
        let options = Self::mount_options(&found.facts);
        match self
            .store
            .driver()
            .describe_mount(found.record.id.as_str(), &options)
        {
            Ok(specs) => Ok(Some(specs.into_iter().map(to_mount).collect())),
            Err(e) if e.kind() == DriverErrorKind::NotSupported => Ok(None),
            Err(e) => Err(SnapshotError::store(context)(e.into())),
        }
    }

    /// For a driver that describes no mounts: a bind of the store's counted
    /// mount of the layer (taken once, held until Commit or Remove; the
    /// caller holds the lock).
    pub(super) fn held_bind(&self, found: Found, context: &str) -> Result<Vec<Mount>> {
        let options = Self::mount_options(&found.facts);
        let read_only = read_only_asked(found.record.id.as_str(), &options.options)
            .map_err(|e| SnapshotError::store(context)(e.into()))?;
        let id = &found.record.id;
        if let Some(path) = &found.facts.held_mount {
            let count = self
                .store
                .layers
                .mount_count(id)
                .map_err(SnapshotError::store(context))?;
            if count > 0 {
                return Ok(vec![bind(path, read_only)]);
            }
        }
        // The store's mount comes first, then the record of it: a kill in
        // between leaves a count without a record, which the layer's removal
        // clears; the reverse would give containerd an unmounted directory.
        let path = self
            .store
            .layers
            .mount(id, &MountOptions::default())
            .map_err(SnapshotError::store(context))?;
        self.store
            .layers
            .revise(id, "hold a mount of", |record| {
                // From the record as it is now, not as it was read.
                let mut facts = SnapshotFacts::of(record).unwrap_or_else(|| found.facts.clone());
                facts.held_mount = Some(path.clone());
                let mut revision = Revision::of(record);
                revision.flags.insert(record::FLAG.into(), facts.to_flag());
                Ok(revision)
            })
            .map_err(SnapshotError::store(context))?;
        Ok(vec![bind(&path, read_only)])
    }

    pub(super) fn release_held_mount(&self, found: &Found, context: &str) {
        if found.facts.held_mount.is_none() {
            return;
        }
        match self.store.layers.unmount(found.record.id.as_str()) {
            Ok(_) | Err(CoreError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(layer = %found.record.id, error = %e, "{context}: could not release the held mount");
            }
        }
    }
}

pub(super) fn to_mount(spec: strata_core::MountSpec) -> Mount {
    Mount {
        r#type: spec.kind,
        source: spec.source,
        target: String::new(),
        options: spec.options,
    }
}

pub(super) fn bind(path: &Path, read_only: bool) -> Mount {
    to_mount(strata_core::MountSpec::bind(path, read_only))
}
