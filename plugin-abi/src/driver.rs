//! The trait driver authors implement and the host calls.

use std::io::Read;
use std::path::PathBuf;

use crate::error::{DriverError, Result};
use crate::types::{
    Capabilities, CreateOptions, InitArgs, KeyValues, MountOptions, MountSpec, NativeDiff,
};

/// A storage driver: it creates, snapshots, mounts and removes layers.
///
/// The layer tar format (apply, changes, export, whiteouts) is not its
/// business: core does that over the directory `get` returns, or over the
/// directory `native_diff` names. Only a driver that must own the stream (the
/// Windows driver, where the OS imports and exports layers) implements
/// `diff`, `apply_diff` and `diff_size`, and says so with
/// [`Capabilities::OWNS_DIFF_FORMAT`].
///
/// Every method may be called from several threads at once, and from
/// several processes at once on the same home (a daemon, the CLI and other
/// tools share a store), for different layers or the same one; any of those
/// processes may be killed at any instruction. A driver serialises what it
/// must itself, and a start or an operation never disturbs another live
/// process's work. `strata-driver-kit` gives a driver all of that.
///
/// Errors name the layer and the operation ("create layer abc: ...").
pub trait GraphDriver: Send + Sync {
    /// The driver's name: `vfs`, `overlay`, ... as used in configuration.
    fn name(&self) -> String;

    /// Facts about the running driver for `strata status`: backing filesystem,
    /// methods in use, limits.
    fn status(&self) -> KeyValues;

    /// What the driver can do beyond the required operations. The host
    /// chooses how it makes layer streams from this when it opens the driver
    /// (through `diff`/`apply_diff` only with
    /// [`Capabilities::OWNS_DIFF_FORMAT`], from `native_diff` only with
    /// [`Capabilities::NATIVE_DIFF`]) and checks it again before an id-mapped
    /// mount, so the answer must not change while the instance runs. Claim
    /// only what holds on this home.
    fn capabilities(&self) -> Capabilities;

    /// Facts about one layer (its directory, its device, ...).
    fn metadata(&self, id: &str) -> Result<KeyValues>;

    /// Creates layer `id`, empty or as a copy-on-write child of `parent`.
    /// An existing `id` is `AlreadyExists`; a missing parent is `NotFound`.
    /// On failure nothing of the layer is left behind.
    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()>;

    /// Removes layer `id` and everything in it. The host has already checked
    /// that no other layer has it as parent.
    fn remove(&self, id: &str) -> Result<()>;

    /// Makes the layer's tree available and returns where.
    ///
    /// **Mounts are counted by the host, once, across processes** (in its
    /// run root, under a lock): `get` is called only for a layer's first
    /// user and `put` only when its last user lets go, whichever process
    /// each runs in. A driver does not count. Its `get` of a layer that is
    /// already mounted (by a host process that died, say) returns the same
    /// path with the same tree and mounts nothing more; its `put` takes the
    /// mount away, so the path is no longer a mount point afterwards. Options
    /// it cannot honour (`ro` where it cannot make a read-only tree) are
    /// refused, never ignored.
    ///
    /// **Filling a read-only layer.** The host writes a layer it is making
    /// (an image layer, created without `read_write`) through a native diff
    /// directory where the driver has one, and otherwise through one `get`
    /// with the `rw` option, before it records the layer as made. A driver
    /// that claims [`Capabilities::READ_ONLY_LAYERS`] without native diffs
    /// gives a writable tree for that `get` and seals the layer at the `put`
    /// that follows: from then on its tree rejects writes and `rw` is
    /// refused. Without `rw`, an image layer's tree is read-only at every
    /// mount, the first included.
    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf>;

    /// Releases what `get` made available (unmounts, for a driver that
    /// mounts).
    fn put(&self, id: &str) -> Result<()>;

    /// Whether the driver holds layer `id`; `false` as soon as `remove` has
    /// returned, even when the removal itself is deferred
    /// ([`Capabilities::DEFERRED_REMOVAL`]). An id that fails
    /// [`validate_layer_id`](crate::validate_layer_id) answers `false` or
    /// `InvalidInput`, and changes nothing.
    fn exists(&self, id: &str) -> Result<bool>;

    /// Every layer the driver holds, in no particular order.
    fn list(&self) -> Result<Vec<String>>;

    /// Called when this driver instance shuts down. It releases what the
    /// instance itself holds for the home, never a layer's mount: those are
    /// counted by the host and may belong to other processes sharing the
    /// store. Calling it twice, or with layers mounted, is harmless.
    fn cleanup(&self) -> Result<()>;

    /// Where this layer's own changes are kept, if the driver keeps them apart
    /// from its parent's and they are exact right now.
    fn native_diff(&self, id: &str) -> Result<Option<NativeDiff>> {
        let _ = id;
        Ok(None)
    }

    /// The layer's changes against `parent` as a tar stream, for drivers that
    /// own the format.
    fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn Read + Send>> {
        let _ = parent;
        Err(not_supported(&self.name(), "diff", id))
    }

    /// Applies a tar stream to layer `id` and returns the size applied, for
    /// drivers that own the format.
    fn apply_diff(
        &self,
        id: &str,
        parent: Option<&str>,
        diff: &mut (dyn Read + Send),
    ) -> Result<u64> {
        let _ = (parent, diff);
        Err(not_supported(&self.name(), "apply diff", id))
    }

    /// The size of the layer's changes against `parent`, for drivers that own
    /// the format.
    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        let _ = parent;
        Err(not_supported(&self.name(), "diff size", id))
    }

    /// The mounts that show layer `id`'s tree, as data, for a caller that
    /// mounts for itself (containerd, through `strata-snapshotter`): the same
    /// tree `get` would give with these `options`, performed in order on one
    /// target. Nothing is mounted by this call and no mount is counted; the
    /// caller mounts, and unmounts before it removes the layer.
    ///
    /// `options` carries `ro` for a read-only view (the description must then
    /// give a tree that refuses writes) and the mount label; a read-write
    /// layer described without `ro` must take writes exactly as a `get` of it
    /// would (overlay: the same upper directory).
    ///
    /// Optional (appended in ABI 1.1): a driver that cannot describe its
    /// mounts (its tree exists only while `get` holds it, such as a device to
    /// activate first) keeps this default, and the host falls back to a bind
    /// mount of what `get` returns, holding that `get` while the caller needs
    /// the tree.
    fn describe_mount(&self, id: &str, options: &MountOptions) -> Result<Vec<MountSpec>> {
        let _ = options;
        Err(DriverError::not_supported(format!(
            "describe the mount of layer {id}: the {} driver does not describe its mounts as data; \
             the host binds what get returns",
            self.name()
        )))
    }
}

fn not_supported(driver: &str, op: &str, id: &str) -> DriverError {
    DriverError::not_supported(format!(
        "{op} of layer {id}: the {driver} driver does not produce layer streams itself; core computes them"
    ))
}

/// What makes a type a loadable driver: its name, a one-line description and
/// how to start it. `export_driver!` turns it into a plugin.
pub trait DriverPlugin: GraphDriver + Sized + 'static {
    /// The driver's name in configuration; the library must be called
    /// `libstrata_driver_<NAME>.so`.
    const NAME: &'static str;
    /// One line for `strata drivers`.
    const DESCRIPTION: &'static str;

    /// Starts the driver on its home. A driver whose backend is missing here
    /// answers `NotSupported` with the reason.
    fn init(args: &InitArgs) -> Result<Self>;
}

/// A driver behind a pointer is a driver: a boxed one (what the loader
/// hands out) and a borrowed one (what the conformance suite holds) forward
/// every method, the optional ones included.
macro_rules! forward_graph_driver {
    ($($pointer:ty),*) => {$(
        impl<T: GraphDriver + ?Sized> GraphDriver for $pointer {
            fn name(&self) -> String {
                (**self).name()
            }
            fn status(&self) -> KeyValues {
                (**self).status()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            fn metadata(&self, id: &str) -> Result<KeyValues> {
                (**self).metadata(id)
            }
            fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
                (**self).create(id, parent, options)
            }
            fn remove(&self, id: &str) -> Result<()> {
                (**self).remove(id)
            }
            fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
                (**self).get(id, options)
            }
            fn put(&self, id: &str) -> Result<()> {
                (**self).put(id)
            }
            fn exists(&self, id: &str) -> Result<bool> {
                (**self).exists(id)
            }
            fn list(&self) -> Result<Vec<String>> {
                (**self).list()
            }
            fn cleanup(&self) -> Result<()> {
                (**self).cleanup()
            }
            fn native_diff(&self, id: &str) -> Result<Option<NativeDiff>> {
                (**self).native_diff(id)
            }
            fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn Read + Send>> {
                (**self).diff(id, parent)
            }
            fn apply_diff(
                &self,
                id: &str,
                parent: Option<&str>,
                diff: &mut (dyn Read + Send),
            ) -> Result<u64> {
                (**self).apply_diff(id, parent, diff)
            }
            fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
                (**self).diff_size(id, parent)
            }
            fn describe_mount(&self, id: &str, options: &MountOptions) -> Result<Vec<MountSpec>> {
                (**self).describe_mount(id, options)
            }
        }
    )*};
}

forward_graph_driver!(Box<T>, &T);
