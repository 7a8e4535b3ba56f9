//! # strata-windows-layer
//!
//! The Windows container layer format, as Docker, containerd and hcsshim
//! write it, converted to and from the Win32 backup streams that
//! `BackupRead` and `BackupWrite` use, with no Windows API: everything here
//! builds and is tested on any platform, and the windows driver does the
//! Windows side.
//!
//! A layer tar holds `Files/` (the container's C: drive), `Hives/` (registry
//! deltas) and `UtilityVM/Files/` (the utility VM's files); each member's
//! Windows metadata rides in PAX records: `MSWINDOWS.fileattr` (attributes,
//! decimal), `MSWINDOWS.rawsd` (the security descriptor, base64),
//! `MSWINDOWS.xattr.NAME` (extended attributes, base64),
//! `MSWINDOWS.mountpoint` (a junction rather than a symbolic link) and
//! `LIBARCHIVE.creationtime`; an alternate data stream is its own member,
//! `file:stream`, right after its file; a deletion is a `.wh.NAME` member.
//!
//! * [`read_layer`] turns a layer tar into backup streams, one per file,
//!   handed to a [`LayerSink`];
//! * [`LayerTarWriter`] turns backup streams back into a layer tar.
//!
//! A tar made by [`LayerTarWriter`] read by [`read_layer`] and written again
//! comes out byte for byte the same.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backup;
pub mod ea;
pub mod filetime;
mod path;
mod read;
pub mod reparse;
pub mod transport;
mod write;

pub use path::{WINDOWS_LAYER_ROOTS, check_path};
pub use read::{LayerSink, LayerSummary, read_layer};
pub use write::LayerTarWriter;

/// `FILE_ATTRIBUTE_DIRECTORY`.
pub const ATTRIBUTE_DIRECTORY: u32 = 0x10;
/// `FILE_ATTRIBUTE_REPARSE_POINT`.
pub const ATTRIBUTE_REPARSE_POINT: u32 = 0x400;

/// A file's `FILE_BASIC_INFO`: four FILETIMEs (0: not given) and its
/// attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileBasicInfo {
    /// When the file was made.
    pub creation_time: i64,
    /// When it was last read.
    pub last_access_time: i64,
    /// When its data was last written (a tar's mtime).
    pub last_write_time: i64,
    /// When its metadata last changed (a tar's ctime).
    pub change_time: i64,
    /// `FILE_ATTRIBUTE_*` bits.
    pub file_attributes: u32,
}

impl FileBasicInfo {
    /// Whether the attributes say directory.
    pub fn is_directory(&self) -> bool {
        self.file_attributes & ATTRIBUTE_DIRECTORY != 0
    }
}

/// Why a layer could not be read or written. Every variant names the
/// member (its name as the tar gives it, never its contents).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A member that must not be applied: outside the layer's roots, a
    /// name Windows cannot hold, a kind Windows has no form for.
    #[error("refused member {member:?}: {reason}")]
    Refused {
        /// The member's name.
        member: String,
        /// Why.
        reason: String,
    },
    /// A member whose Windows records or backup stream are malformed.
    #[error("member {member:?}: {reason}")]
    Malformed {
        /// The member's name (or the path of the file being written).
        member: String,
        /// What is wrong.
        reason: String,
    },
    /// The tar stream itself could not be read or written.
    #[error("{operation}: {source}")]
    Io {
        /// The step ("read the layer tar", "write the layer tar").
        operation: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// What the [`LayerSink`] answered for a member.
    #[error("member {member:?}: {source}")]
    Sink {
        /// The member's name.
        member: String,
        /// The sink's error.
        #[source]
        source: std::io::Error,
    },
}

impl FormatError {
    pub(crate) fn refused(member: &str, reason: impl Into<String>) -> Self {
        FormatError::Refused {
            member: member.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn malformed(member: &str, reason: impl Into<String>) -> Self {
        FormatError::Malformed {
            member: member.to_string(),
            reason: reason.into(),
        }
    }
}

/// The PAX record keys of the format.
pub mod pax {
    /// File attributes, decimal.
    pub const FILE_ATTRIBUTES: &str = "MSWINDOWS.fileattr";
    /// The self-relative security descriptor, base64 with padding.
    pub const RAW_SECURITY_DESCRIPTOR: &str = "MSWINDOWS.rawsd";
    /// The security descriptor as SDDL text (older writers; read only).
    pub const SDDL_SECURITY_DESCRIPTOR: &str = "MSWINDOWS.sd";
    /// Present on a junction (mount point) rather than a symbolic link.
    pub const MOUNT_POINT: &str = "MSWINDOWS.mountpoint";
    /// Prefix of one extended attribute's record; its value is base64.
    pub const EXTENDED_ATTRIBUTE_PREFIX: &str = "MSWINDOWS.xattr.";
    /// The creation time, a PAX time.
    pub const CREATION_TIME: &str = "LIBARCHIVE.creationtime";
}

/// Hex text (`"01 00 | ff"`, bars for reading) as bytes: the golden
/// sequences of the tests.
#[cfg(test)]
pub(crate) fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .filter(|t| *t != "|")
        .map(|t| u8::from_str_radix(t, 16).expect("hex"))
        .collect()
}

#[cfg(test)]
mod tests;
