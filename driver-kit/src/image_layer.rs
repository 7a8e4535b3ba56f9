//! The filling contract for drivers whose image layers are read-only (see
//! `GraphDriver::get` in the ABI): an image layer is made read-only, the
//! host opens it once with `rw` to fill it, and the `put` after that seals
//! it; from then on `rw` is refused.
//!
//! A driver keeps two marks in the layer's directory and makes the layer
//! read-only its own way (a subvolume flag, a dataset property, a read-only
//! mount):
//!
//! ```text
//! <layer dir>/read-only   an image layer (written at create)
//! <layer dir>/sealed      an image layer that is made
//! ```
//!
//! Sealing writes the mark first and then makes the storage read-only. A
//! kill between the two leaves a sealed layer whose storage is still
//! writable, which the next `put` (any later one) makes read-only; the
//! other order could leave read-only storage without the mark, which a
//! filling `get` would then open again.

use std::fs;
use std::path::Path;

use strata_plugin_abi::{DriverError, Result};

/// Marks an image layer.
pub const READ_ONLY_MARK: &str = "read-only";
/// Marks an image layer that is made.
pub const SEALED_MARK: &str = "sealed";

/// How a `get` may open a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read-only: an image layer opened without `rw`, or a container layer
    /// opened with `ro` where the driver allows it.
    ReadOnly,
    /// A container layer, read-write.
    ReadWrite,
    /// An image layer not yet sealed, opened by the host with `rw` to fill it.
    Fill,
}

impl Access {
    /// Whether the layer is writable through this access.
    pub fn writable(self) -> bool {
        !matches!(self, Access::ReadOnly)
    }
}

/// Marks the layer in `dir` an image layer (at create, before it is placed).
pub fn mark_image(dir: &Path, id: &str, operation: &str) -> Result<()> {
    fs::write(dir.join(READ_ONLY_MARK), b"")
        .map_err(|e| DriverError::io(format!("{operation} layer {id}: mark it read-only"), &e))
}

/// Whether the layer in `dir` is an image layer.
pub fn is_image(dir: &Path) -> bool {
    dir.join(READ_ONLY_MARK).exists()
}

/// Whether the layer in `dir` is a sealed image layer.
pub fn is_sealed(dir: &Path) -> bool {
    dir.join(SEALED_MARK).exists()
}

/// The access a `get` of the layer `id` (directory `dir`) with `options`
/// asks for. `rw` opens a container layer read-write and an image layer not
/// yet sealed to fill it; `rw` on a sealed image layer is refused. `ro` is
/// taken for an image layer (it is read-only anyway) and, where
/// `ro_for_containers`, for a container layer. Any other option is passed to
/// `other`, which answers whether the driver honours it; one it does not is
/// refused as not supported, naming the driver and what it knows.
pub fn access(
    dir: &Path,
    id: &str,
    options: &[String],
    driver: &str,
    ro_for_containers: bool,
    mut other: impl FnMut(&str) -> bool,
) -> Result<Access> {
    let image = is_image(dir);
    let mut rw = false;
    let mut ro = false;
    for option in options {
        match option.as_str() {
            "rw" => rw = true,
            "ro" if image || ro_for_containers => ro = true,
            option if other(option) => {}
            option => {
                let knows = if ro_for_containers {
                    "rw and ro"
                } else {
                    "rw, and ro for an image layer,"
                };
                return Err(DriverError::not_supported(format!(
                    "mount layer {id}: the {driver} driver cannot honour '{option}' ({knows} are \
                     what it knows)"
                )));
            }
        }
    }
    if rw && ro {
        return Err(DriverError::invalid_input(format!(
            "mount layer {id}: both rw and ro asked for"
        )));
    }
    Ok(match (image, rw) {
        (true, true) if is_sealed(dir) => {
            return Err(DriverError::invalid_input(format!(
                "mount layer {id} read-write: it is an image layer, read-only once made"
            )));
        }
        (true, true) => Access::Fill,
        (true, false) => Access::ReadOnly,
        (false, _) if ro => Access::ReadOnly,
        (false, _) => Access::ReadWrite,
    })
}

/// Seals the image layer `id` (directory `dir`) at its `put`, if it is one:
/// the mark, then `make_read_only`, which the driver gives. The caller holds
/// the layer's lock. Nothing happens for a container layer.
pub fn seal(dir: &Path, id: &str, make_read_only: impl FnOnce() -> Result<()>) -> Result<()> {
    if !is_image(dir) {
        return Ok(());
    }
    // The order is the point: see the module's documentation.
    if !is_sealed(dir) {
        fs::write(dir.join(SEALED_MARK), b"")
            .map_err(|e| DriverError::io(format!("unmount layer {id}: mark it sealed"), &e))?;
    }
    make_read_only()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn container_layers_open_read_write_and_image_layers_fill_once() {
        let dir = tempfile::tempdir().unwrap();
        let never = |_: &str| false;
        assert_eq!(
            access(dir.path(), "c", &[], "test", false, never).unwrap(),
            Access::ReadWrite
        );
        let refused = access(dir.path(), "c", &opts(&["ro"]), "test", false, never).unwrap_err();
        assert!(
            refused.message().contains("cannot honour 'ro'"),
            "{refused}"
        );
        assert_eq!(
            access(dir.path(), "c", &opts(&["ro"]), "test", true, never).unwrap(),
            Access::ReadOnly
        );

        mark_image(dir.path(), "i", "create").unwrap();
        assert_eq!(
            access(dir.path(), "i", &[], "test", false, never).unwrap(),
            Access::ReadOnly
        );
        assert_eq!(
            access(dir.path(), "i", &opts(&["rw"]), "test", false, never).unwrap(),
            Access::Fill
        );
        let mut sealed_storage = false;
        seal(dir.path(), "i", || {
            sealed_storage = true;
            Ok(())
        })
        .unwrap();
        assert!(sealed_storage && is_sealed(dir.path()));
        let refused = access(dir.path(), "i", &opts(&["rw"]), "test", false, never).unwrap_err();
        assert!(
            refused.message().contains("read-only once made"),
            "{refused}"
        );
    }

    #[test]
    fn a_failed_seal_leaves_the_mark_so_the_next_put_finishes_it() {
        let dir = tempfile::tempdir().unwrap();
        mark_image(dir.path(), "i", "create").unwrap();
        let failed = seal(dir.path(), "i", || Err(DriverError::other("flag refused")));
        assert!(failed.is_err());
        assert!(is_sealed(dir.path()), "the mark comes before the storage");
        let refused = access(dir.path(), "i", &opts(&["rw"]), "test", false, |_| false);
        assert!(refused.is_err());
    }

    #[test]
    fn other_options_go_to_the_driver_and_rw_with_ro_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let got = access(dir.path(), "c", &opts(&["nodev"]), "test", true, |o| {
            o == "nodev"
        });
        assert_eq!(got.unwrap(), Access::ReadWrite);
        let both = access(dir.path(), "c", &opts(&["rw", "ro"]), "test", true, |_| {
            false
        });
        assert!(both.unwrap_err().message().contains("both rw and ro"));
    }
}
