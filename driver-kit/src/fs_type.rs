//! What filesystem a path is on, from statfs(2)'s magic number.

use std::fmt;
use std::path::Path;

/// A filesystem a driver may care about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    /// ext4 (and ext2/ext3, which share its magic number).
    Ext4,
    /// btrfs: reflinks and subvolumes.
    Btrfs,
    /// XFS: reflinks where it was made with them, project quotas.
    Xfs,
    /// tmpfs: in memory, gone at reboot.
    Tmpfs,
    /// overlayfs, which cannot hold another overlay's upper directory.
    Overlay,
    /// ZFS through the kernel module (zfs-fuse shows as `Fuse`).
    Zfs,
    /// Any FUSE filesystem (zfs-fuse, sshfs, ...); the magic does not say
    /// which.
    Fuse,
    /// NFS, any version: owners and xattrs are the server's to grant.
    Nfs,
    /// Any other, by its magic number.
    Other(u64),
}

impl FsType {
    fn from_magic(magic: u64) -> FsType {
        match magic {
            0xEF53 => FsType::Ext4,
            0x9123_683E => FsType::Btrfs,
            0x5846_5342 => FsType::Xfs,
            0x0102_1994 => FsType::Tmpfs,
            0x794C_7630 => FsType::Overlay,
            0x2FC1_2FC1 => FsType::Zfs,
            0x6573_5546 => FsType::Fuse,
            0x6969 => FsType::Nfs,
            other => FsType::Other(other),
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsType::Ext4 => f.write_str("ext4"),
            FsType::Btrfs => f.write_str("btrfs"),
            FsType::Xfs => f.write_str("xfs"),
            FsType::Tmpfs => f.write_str("tmpfs"),
            FsType::Overlay => f.write_str("overlay"),
            FsType::Zfs => f.write_str("zfs"),
            FsType::Fuse => f.write_str("fuse"),
            FsType::Nfs => f.write_str("nfs"),
            FsType::Other(magic) => write!(f, "unknown (magic {magic:#x})"),
        }
    }
}

/// The filesystem `path` is on.
pub fn of(path: &Path) -> std::io::Result<FsType> {
    let statfs = rustix::fs::statfs(path)?;
    Ok(FsType::from_magic(statfs.f_type as u64))
}

/// The filesystem the open file `fd` is on.
pub fn of_fd(fd: impl std::os::fd::AsFd) -> std::io::Result<FsType> {
    let statfs = rustix::fs::fstatfs(fd)?;
    Ok(FsType::from_magic(statfs.f_type as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_is_not_mistaken_for_a_known_filesystem() {
        // procfs's magic is 0x9fa0.
        assert_eq!(of(Path::new("/proc")).unwrap(), FsType::Other(0x9fa0));
        assert_eq!(FsType::Other(0x9fa0).to_string(), "unknown (magic 0x9fa0)");
    }
}
