//! How deletions are written: the two conventions a layer's deletions come
//! in, and the formats a diff directory (a driver's native diff) keeps them
//! in. Everything that knows one filesystem's convention is here, behind
//! [`WhiteoutFormat`], so the generic apply, changes and export code does not.

#[cfg(unix)]
use std::fs::Metadata;
#[cfg(unix)]
use std::os::fd::{AsFd, OwnedFd};
#[cfg(unix)]
use std::os::unix::fs::{FileTypeExt, MetadataExt};
#[cfg(unix)]
use std::path::Path;

#[cfg(unix)]
use rustix::fs::{FileType, Mode, XattrFlags};

/// `.wh.NAME` deletes NAME of the lower layers (OCI image layers, AUFS).
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// `.wh..wh..opq` in a directory hides everything the lower layers had there.
pub const OPAQUE_MARKER: &[u8] = b".wh..opq";
/// The full name of the opaque marker.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// overlayfs marks an opaque directory with this xattr set to `y`.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How a diff directory (a directory holding exactly one layer's changes,
/// over a lower tree it is merged with) records what the layer deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WhiteoutFormat {
    /// overlayfs: a deleted path is a 0:0 character device, and a directory
    /// that hides the lower one has `trusted.overlay.opaque=y` (which
    /// overlayfs ignores on the upper directory's root).
    Overlay,
}

impl WhiteoutFormat {
    /// Every format this version of strata knows.
    pub const ALL: [WhiteoutFormat; 1] = [WhiteoutFormat::Overlay];

    /// The format's name, as drivers and messages give it.
    pub fn name(self) -> &'static str {
        match self {
            WhiteoutFormat::Overlay => "overlay",
        }
    }

    /// The format named `name`, if this version of strata knows it.
    pub fn from_name(name: &str) -> Option<WhiteoutFormat> {
        match name {
            "overlay" => Some(WhiteoutFormat::Overlay),
            _ => None,
        }
    }

    /// Whether an opaque mark on the diff directory's own root is honoured
    /// by whatever merges it; where it is not, each entry of the lower root
    /// must be whited out one by one.
    pub fn opaque_root_honoured(self) -> bool {
        match self {
            WhiteoutFormat::Overlay => false,
        }
    }

    /// Whether xattrs named `name` are this format's bookkeeping rather than
    /// a file's content (left out of exports).
    pub fn is_bookkeeping_xattr(self, name: &[u8]) -> bool {
        match self {
            WhiteoutFormat::Overlay => name.starts_with(b"trusted.overlay."),
        }
    }
}

/// How each format's whiteouts and opaque marks are read and made in a
/// Linux tree.
#[cfg(unix)]
impl WhiteoutFormat {
    /// Whether an entry with this status is a whiteout.
    pub fn is_whiteout(self, stat: &rustix::fs::Stat) -> bool {
        match self {
            WhiteoutFormat::Overlay => {
                FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice
                    && stat.st_rdev == 0
            }
        }
    }

    /// Whether an entry with this metadata is a whiteout.
    pub fn is_whiteout_metadata(self, meta: &Metadata) -> bool {
        match self {
            WhiteoutFormat::Overlay => meta.file_type().is_char_device() && meta.rdev() == 0,
        }
    }

    /// Writes a whiteout for `name` in the directory `dir`.
    pub fn make_whiteout(self, dir: &impl AsFd, name: &std::ffi::CStr) -> rustix::io::Result<()> {
        match self {
            WhiteoutFormat::Overlay => rustix::fs::mknodat(
                dir,
                name,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            ),
        }
    }

    /// Marks the directory `dir` as hiding what the lower tree has below it.
    pub fn set_opaque(self, dir: &OwnedFd) -> rustix::io::Result<()> {
        match self {
            WhiteoutFormat::Overlay => {
                rustix::fs::fsetxattr(dir, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
            }
        }
    }

    /// Whether the directory at `path` is marked opaque.
    pub fn is_opaque(self, path: &Path) -> bool {
        match self {
            WhiteoutFormat::Overlay => {
                let mut value = [0u8; 4];
                matches!(rustix::fs::lgetxattr(path, OVERLAY_OPAQUE_XATTR, &mut value[..]), Ok(1) if value[0] == b'y')
            }
        }
    }
}

impl std::fmt::Display for WhiteoutFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
