//! Usage: the bytes and inodes a snapshot's own changes take, as
//! containerd reports a snapshot's: the blocks of each inode counted once
//! (hard links are one file), and the number of inodes, without crossing
//! into other filesystems mounted inside.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use containerd_snapshots::Usage;
use strata_core::{CoreError, MountOptions};

use super::{Result, Snapshots};
use crate::error::SnapshotError;

impl Snapshots {
    /// Usage: the bytes and inodes the snapshot's own changes take (the
    /// driver's native diff where it keeps one, else the layer's tree).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let found = self.find(key, "usage of")?;
        let context = format!("usage of snapshot {key:?}");
        let id = found.record.id.as_str();
        let driver = self.store.driver();
        let native = driver
            .native_diff(id)
            .map_err(|e| SnapshotError::store(&context)(e.into()))?;
        let measured = match native {
            Some(native) => measure(&native.path, &context)?,
            None => {
                let described = driver
                    .describe_mount(id, &Self::mount_options(&found.facts))
                    .ok()
                    .and_then(|specs| match specs.as_slice() {
                        [one] if one.kind == "bind" => Some(PathBuf::from(&one.source)),
                        _ => None,
                    });
                match described.or(found.facts.held_mount.clone()) {
                    Some(tree) => measure(&tree, &context)?,
                    None => {
                        let tree = self
                            .store
                            .layers
                            .mount(&found.record.id, &MountOptions::default())
                            .map_err(SnapshotError::store(&context))?;
                        let measured = measure(&tree, &context);
                        let _ = self.store.layers.unmount(id);
                        measured?
                    }
                }
            }
        };
        // A driver that keeps its own account of a layer's bytes says so in
        // its `used` fact (zfs: the dataset's used property, what
        // containerd's zfs snapshotter reports); reading blocks through a
        // FUSE mount would give its cached, stale attributes.
        let used = driver
            .metadata(id)
            .ok()
            .and_then(|facts| facts.get("used").and_then(|v| v.parse::<u64>().ok()));
        Ok(Usage {
            size: used.unwrap_or(measured.0) as i64,
            inodes: measured.1 as i64,
        })
    }
}

fn measure(tree: &Path, context: &str) -> Result<(u64, u64)> {
    disk_usage(tree).map_err(|e| SnapshotError::store(context)(CoreError::io("measure", tree, e)))
}

/// Bytes allocated and inodes under `root`, `root` included.
pub fn disk_usage(root: &Path) -> io::Result<(u64, u64)> {
    let top = std::fs::symlink_metadata(root)?;
    let mut seen = HashSet::new();
    let mut size = 0u64;
    let mut pending = vec![root.to_path_buf()];
    seen.insert(top.ino());
    size += top.blocks() * 512;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.dev() != top.dev() {
                continue;
            }
            if seen.insert(meta.ino()) {
                size += meta.blocks() * 512;
            }
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok((size, seen.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![7u8; 64 * 1024]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let (size, inodes) = disk_usage(dir.path()).unwrap();
        // The root, one file (two names), one directory.
        assert_eq!(inodes, 3);
        assert!(size >= 64 * 1024, "{size}");
        assert!(size < 2 * 64 * 1024, "counted the hard link twice: {size}");
    }
}
