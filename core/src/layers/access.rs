//! Layer access: mounts counted across processes, so a layer someone else
//! has mounted is never unmounted under them.

use super::*;

impl LayerStore<'_> {
    /// Mounts layer `id`, counted across processes: a second mount returns
    /// the same path and only the last unmount unmounts.
    pub fn mount(&self, id: &LayerId, options: &MountOptions) -> Result<PathBuf> {
        let driver = self.driver();
        // Id-mapped mounts only where the driver says it makes them: never
        // a mount that silently ignores the maps.
        if (!options.uid_maps.is_empty() || !options.gid_maps.is_empty())
            && !driver
                .capabilities()
                .contains(Capabilities::ID_MAPPED_MOUNTS)
        {
            return Err(CoreError::Unsupported(format!(
                "mount layer {id}: driver '{}' cannot mount with uid/gid maps (it does not claim \
                 id-mapped mounts)",
                driver.name()
            )));
        }
        // The layer's own label is read before the counts are locked (the
        // store's lock order: records, then mount counts).
        let mut options = options.clone();
        if options.mount_label.is_none() {
            options.mount_label = self.get(id)?.and_then(|r| r.mount_label);
        }
        self.counts
            .acquire(id, Some(&options.options), || Ok(driver.get(id, &options)?))
    }

    /// Releases one mount of the layer named by id or by its mount path;
    /// returns the layer's id.
    pub fn unmount(&self, id_or_path: &str) -> Result<LayerId> {
        let driver = self.driver();
        match self.counts.release(id_or_path, |id| Ok(driver.put(id)?))? {
            Some(id) => LayerId::new(id),
            None => Err(not_found(format!(
                "unmount {id_or_path}: not a mounted layer or mount path"
            ))),
        }
    }

    /// How many mounts of layer `id` are held.
    pub fn mount_count(&self, id: &LayerId) -> Result<u32> {
        self.counts.count(id)
    }

    /// Every mounted layer's count record, by layer id (one read of the
    /// counts for a whole listing).
    pub fn mounts(&self) -> Result<std::collections::BTreeMap<String, crate::mounts::MountRecord>> {
        self.counts.all()
    }
}

/// Mounts through the shared counts, so a layer someone else has mounted is
/// not unmounted under them.
pub(super) fn mount_counted(
    driver: &dyn GraphDriver,
    counts: &MountCounts,
    id: &str,
) -> Result<PathBuf> {
    counts.acquire(id, None, || Ok(driver.get(id, &MountOptions::default())?))
}

/// Mounts the layer to write its files (counted like [`mount_counted`]):
/// `get` with the `rw` option, by which a driver enforcing read-only layers
/// opens an image layer the host is making, until the `put` that ends it.
pub(super) fn mount_to_fill(
    driver: &dyn GraphDriver,
    counts: &MountCounts,
    id: &str,
) -> Result<PathBuf> {
    let writable = MountOptions {
        options: vec!["rw".to_string()],
        ..MountOptions::default()
    };
    counts.acquire(id, None, || Ok(driver.get(id, &writable)?))
}

pub(super) fn unmount_counted(
    driver: &dyn GraphDriver,
    counts: &MountCounts,
    id: &str,
) -> Result<()> {
    counts.release(id, |id| Ok(driver.put(id)?)).map(|_| ())
}

/// Mounts the layer (and its parent) for the length of `f`.
pub(super) fn with_trees<T>(
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
