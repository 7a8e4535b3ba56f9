//! Mount counts kept in the run root, shared by every process using a store:
//! a second mount of a layer returns the same path, only the last unmount
//! unmounts, and a mount can be released by its path. The run root is meant
//! to be on tmpfs, so counts do not survive a reboot (the mounts do not
//! either).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::fsutil::{FileLock, replace_atomic_volatile};

/// The mount of one layer, as counted in the run root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Where the driver mounted the layer: the path every user of the mount
    /// is given.
    pub path: PathBuf,
    /// How many acquisitions hold the mount; the last release unmounts it.
    pub count: u32,
    /// The driver's path was a mount point of its own when counted (an
    /// overlay mount; a vfs path is a plain directory): if it no longer is,
    /// the mount went behind the counts' back (unmounted by hand, or a
    /// reboot with a run root that is not tmpfs), and the count is stale.
    #[serde(default)]
    pub mounted: bool,
    /// The mount options of the first mount, which every later user shares
    /// (`rw` left out: it is what no option means); `None` in a record an
    /// earlier strata wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
}

/// Mount options as compared: sorted, once each, without `rw` (the default).
fn normalized(options: &[String]) -> Vec<String> {
    let mut options: Vec<String> = options.iter().filter(|o| *o != "rw").cloned().collect();
    options.sort();
    options.dedup();
    options
}

impl MountRecord {
    /// Whether the mount it counts is gone.
    pub fn is_stale(&self) -> bool {
        self.mounted && !is_mount_point(&self.path)
    }
}

/// Whether `path` is a mount point: its mount differs from its parent's
/// (mount ids, so a bind mount of the same filesystem counts too).
#[cfg(unix)]
pub fn is_mount_point(path: &Path) -> bool {
    let mount_id = |p: &Path| {
        rustix::fs::statx(
            rustix::fs::CWD,
            p,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            rustix::fs::StatxFlags::MNT_ID,
        )
        .ok()
        .map(|s| s.stx_mnt_id)
    };
    match (mount_id(path), path.parent().and_then(mount_id)) {
        (Some(own), Some(parent)) => own != parent,
        _ => false,
    }
}

/// Whether `path` is a mount point. On Windows a layer is made available as
/// a volume (the storage filter's `\\?\Volume{…}\`): a volume root that
/// still answers is mounted.
#[cfg(windows)]
pub fn is_mount_point(path: &Path) -> bool {
    path.parent().is_none() && path.has_root() && std::fs::metadata(path).is_ok()
}

#[derive(Default, Serialize, Deserialize)]
struct Records {
    mounts: BTreeMap<String, MountRecord>,
}

/// The mount counts of one driver's layers.
pub struct MountCounts {
    dir: PathBuf,
}

impl MountCounts {
    /// The counts of driver `driver_name`'s layers, kept in
    /// `<runroot>/<driver_name>-layers`, which is created if missing.
    pub fn open(runroot: &Path, driver_name: &str) -> Result<MountCounts> {
        let dir = runroot.join(format!("{driver_name}-layers"));
        fs::create_dir_all(&dir).map_err(|e| CoreError::io("create", &dir, e))?;
        Ok(MountCounts { dir })
    }

    fn lock(&self) -> Result<FileLock> {
        let path = self.dir.join("mountpoints.lock");
        FileLock::exclusive(&path).map_err(|e| CoreError::io("lock", path, e))
    }

    fn path(&self) -> PathBuf {
        self.dir.join("mountpoints.json")
    }

    fn load(&self) -> Result<Records> {
        match fs::read(self.path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CoreError::io(
                    "read",
                    self.path(),
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Records::default()),
            Err(e) => Err(CoreError::io("read", self.path(), e)),
        }
    }

    fn save(&self, records: &Records) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(records).expect("records serialise");
        replace_atomic_volatile(&self.path(), &bytes)
            .map_err(|e| CoreError::io("write", self.path(), e))
    }

    /// Counts one more user of layer `id`, calling `mount` only for the first.
    /// `options` are the mount options a user asked for: a layer mounted
    /// already with others is refused (the second user would get the first
    /// one's mount, read-only where it asked for writable, say). `None` is
    /// the store's own short mounts (reading a tree), which share any mount.
    pub fn acquire(
        &self,
        id: &str,
        options: Option<&[String]>,
        mount: impl FnOnce() -> Result<PathBuf>,
    ) -> Result<PathBuf> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        if let Some(record) = records.mounts.get_mut(id) {
            if !record.is_stale() {
                if let (Some(asked), Some(held)) = (options, &record.options)
                    && normalized(asked) != *held
                {
                    return Err(CoreError::InUse(format!(
                        "mount layer {id}: it is mounted already, with options [{}]; a mount \
                         with [{}] would share that mount. Mount it with the same options, or \
                         unmount it everywhere first ({} mount(s) held)",
                        held.join(","),
                        normalized(asked).join(","),
                        record.count
                    )));
                }
                record.count += 1;
                let (path, count) = (record.path.clone(), record.count);
                self.save(&records)?;
                tracing::debug!(layer = id, count, "mount counted");
                return Ok(path);
            }
            // Its mount went behind our back: mounted again below, and
            // counted from one (the users the stale count stood for lost
            // their mount with it).
            tracing::warn!(layer = id, path = %record.path.display(), "a counted mount is gone; mounting again");
        }
        let path = mount()?;
        records.mounts.insert(
            id.to_string(),
            MountRecord {
                mounted: is_mount_point(&path),
                path: path.clone(),
                count: 1,
                options: Some(normalized(options.unwrap_or_default())),
            },
        );
        self.save(&records)?;
        tracing::debug!(layer = id, path = %path.display(), "mounted");
        Ok(path)
    }

    /// Counts one user fewer of the layer named by id or by its mount path,
    /// calling `unmount` with the id when none is left. Returns the id.
    pub fn release(
        &self,
        id_or_path: &str,
        unmount: impl FnOnce(&str) -> Result<()>,
    ) -> Result<Option<String>> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let id = if records.mounts.contains_key(id_or_path) {
            Some(id_or_path.to_string())
        } else {
            records
                .mounts
                .iter()
                .find(|(_, r)| r.path == Path::new(id_or_path))
                .map(|(id, _)| id.clone())
        };
        let Some(id) = id else {
            return Ok(None);
        };
        let record = records.mounts.get_mut(&id).expect("found above");
        if record.count > 1 {
            record.count -= 1;
            tracing::debug!(layer = %id, count = record.count, "mount released; still in use");
        } else {
            unmount(&id)?;
            records.mounts.remove(&id);
            tracing::debug!(layer = %id, "unmounted: the last user let go");
        }
        self.save(&records)?;
        Ok(Some(id))
    }

    /// The layer's count, 0 when not mounted.
    pub fn count(&self, id: &str) -> Result<u32> {
        let _lock = self.lock()?;
        Ok(self.load()?.mounts.get(id).map_or(0, |r| r.count))
    }

    /// Every layer counted, with its record, by layer id.
    pub fn all(&self) -> Result<BTreeMap<String, MountRecord>> {
        let _lock = self.lock()?;
        Ok(self.load()?.mounts)
    }

    /// Forgets a layer (it was removed).
    pub fn forget(&self, id: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        if records.mounts.remove(id).is_some() {
            self.save(&records)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_second_mount_with_other_options_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let counts = MountCounts::open(dir.path(), "vfs").unwrap();
        let ro = ["ro".to_string()];
        counts
            .acquire("a", Some(&ro), || Ok(PathBuf::from("/mnt/a")))
            .unwrap();
        let err = counts
            .acquire("a", Some(&[]), || unreachable!())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("mounted already, with options [ro]"),
            "{err}"
        );
        // The same options, in another order or with rw spelled out, share it.
        let same = ["rw".to_string(), "ro".to_string(), "ro".to_string()];
        counts.acquire("a", Some(&same), || unreachable!()).unwrap();
        // The store's own reading mounts share any mount.
        counts.acquire("a", None, || unreachable!()).unwrap();
        assert_eq!(counts.count("a").unwrap(), 3);
    }

    #[test]
    fn only_the_first_mount_and_the_last_unmount_reach_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let counts = MountCounts::open(dir.path(), "vfs").unwrap();
        let mounts = Cell::new(0);
        let unmounts = Cell::new(0);
        let mount = || {
            mounts.set(mounts.get() + 1);
            Ok(PathBuf::from("/mnt/a"))
        };
        assert_eq!(
            counts.acquire("a", None, mount).unwrap(),
            PathBuf::from("/mnt/a")
        );
        assert_eq!(
            counts.acquire("a", None, || unreachable!()).unwrap(),
            PathBuf::from("/mnt/a")
        );
        assert_eq!(counts.count("a").unwrap(), 2);
        // A second process sees the same counts.
        let other = MountCounts::open(dir.path(), "vfs").unwrap();
        assert_eq!(other.count("a").unwrap(), 2);
        let unmount = |_: &str| {
            unmounts.set(unmounts.get() + 1);
            Ok(())
        };
        assert_eq!(other.release("a", unmount).unwrap().as_deref(), Some("a"));
        assert_eq!(unmounts.get(), 0);
        // Released by its path the second time.
        assert_eq!(
            counts.release("/mnt/a", unmount).unwrap().as_deref(),
            Some("a")
        );
        assert_eq!((mounts.get(), unmounts.get()), (1, 1));
        assert_eq!(counts.count("a").unwrap(), 0);
        assert_eq!(counts.release("a", unmount).unwrap(), None);
    }
}
