//! A graph root remembers the driver that made it, so it is never opened with
//! another (whose view of the layers would be wrong or empty).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::fsutil::write_atomic;

const RECORD: &str = "driver.json";

#[derive(Serialize, Deserialize)]
struct DriverRecord {
    driver: String,
}

fn record_path(graphroot: &Path) -> PathBuf {
    graphroot.join(RECORD)
}

/// The driver recorded for `graphroot`, if any.
pub fn recorded_driver(graphroot: &Path) -> Result<Option<String>> {
    let path = record_path(graphroot);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let record: DriverRecord = serde_json::from_slice(&bytes).map_err(|e| {
                CoreError::io(
                    "read",
                    &path,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("corrupt driver record: {e}"),
                    ),
                )
            })?;
            Ok(Some(record.driver))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoreError::io("read", path, e)),
    }
}

/// Records `driver` as the owner of `graphroot`. If another process recorded a
/// driver first, that one stands and opening with `driver` is refused.
pub fn record_driver(graphroot: &Path, driver: &str) -> Result<()> {
    let path = record_path(graphroot);
    let bytes = serde_json::to_vec_pretty(&DriverRecord {
        driver: driver.to_string(),
    })
    .expect("a string serialises");
    match write_atomic(&path, &bytes, false) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match recorded_driver(graphroot)? {
            Some(owner) if owner != driver => Err(CoreError::GraphrootOwned {
                graphroot: graphroot.to_path_buf(),
                owner,
                requested: driver.to_string(),
            }),
            _ => Ok(()),
        },
        Err(e) => Err(CoreError::io("write", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_driver_owns_the_graph_root() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded_driver(dir.path()).unwrap(), None);
        record_driver(dir.path(), "vfs").unwrap();
        record_driver(dir.path(), "vfs").unwrap();
        assert_eq!(recorded_driver(dir.path()).unwrap().as_deref(), Some("vfs"));
        let err = record_driver(dir.path(), "overlay")
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to the 'vfs' driver"), "{err}");
        assert!(err.contains("'overlay'"), "{err}");
    }
}
