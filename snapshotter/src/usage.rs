//! Disk usage of a tree as containerd reports a snapshot's: the blocks of
//! each inode counted once (hard links are one file), and the number of
//! inodes, without crossing into other filesystems mounted inside.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
