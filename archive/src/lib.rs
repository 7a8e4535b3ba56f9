//! # strata-archive
//!
//! The layer tar format: the one place in strata that knows it, so no driver
//! has to. Applying a stream (any compression, whiteouts, safe extraction,
//! digests, tar-split) lives here; computing changes and exporting them follow.
//!
//! It depends on no other strata crate: the stores, the conformance suite, a
//! driver that owns its own format, or another tool can use it alone.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// Applying, computing and exporting changes work on a directory tree
// through Linux's *at calls and openat2; the stream side (members, digests,
// compression, measuring) and the data the tree side is asked for and
// reports are portable and build for Windows too, where a driver that owns
// its format reads layer streams with it. Elsewhere the tree side's
// functions exist and answer that they do not work there (`elsewhere`).
#[cfg(unix)]
mod apply;
mod apply_options;
#[cfg(unix)]
pub mod beneath;
#[cfg(unix)]
mod bounded;
pub mod change;
#[cfg(unix)]
pub mod changes;
pub mod compression;
pub mod digest;
#[cfg(not(unix))]
mod elsewhere;
#[cfg(unix)]
mod export;
mod measure;
pub mod members;
mod pipeline;
#[cfg(unix)]
mod record;
pub mod tarsplit;
pub mod whiteout;

use std::io;
use std::path::{Path, PathBuf};

/// One range of a user-namespace id mapping, as in `/proc/PID/uid_map`:
/// `size` ids from `container_id` in the layer are `host_id` onwards on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdMap {
    /// The first id as the layer's members name it.
    pub container_id: u32,
    /// The id it is written as.
    pub host_id: u32,
    /// How many consecutive ids the range covers.
    pub size: u32,
}

#[cfg(unix)]
pub use apply::apply_layer;
pub use apply_options::{ApplyOptions, ApplyReport, ApplyTarget, MAX_TRACKED_PATHS};
pub use change::{Change, ChangeKind, ExportReport};
#[cfg(unix)]
pub use changes::{changes, diff_dir_changes, overlay_changes, stream_changes};
pub use compression::Compression;
pub use digest::Sha256Digest;
#[cfg(not(unix))]
pub use elsewhere::{
    apply_layer, changes, diff_dir_changes, export_changes, overlay_changes, stream_changes,
};
#[cfg(unix)]
pub use export::export_changes;
pub use measure::{FeedError, Measured, feed_measured};
pub use whiteout::WhiteoutFormat;

/// "1 MiB", "64 KiB": a limit as the messages give it.
pub(crate) fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// Why a layer stream could not be applied or produced.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A member that would reach outside the layer's root, or otherwise must
    /// never be applied.
    #[error("refused member {entry:?}: {reason}")]
    Unsafe {
        /// The member's name as the stream gives it.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// A member that cannot be applied as it is.
    #[error("member {entry:?}: {reason}")]
    Entry {
        /// The member's name as the stream gives it.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A member whose application failed in the filesystem.
    #[error("member {entry:?}: {operation}: {source}")]
    EntryIo {
        /// The member's name as the stream gives it.
        entry: String,
        /// The step that failed ("create directory", "set xattr").
        operation: &'static str,
        /// The system's error, errno kept (ENOSPC, EDQUOT).
        #[source]
        source: io::Error,
    },
    /// The stream itself: junk, truncated, a compression that does not decode.
    #[error("bad layer stream: {0}")]
    Input(#[source] io::Error),
    /// Writing the tar-split record failed.
    #[error("writing the tar-split record: {0}")]
    Record(#[source] io::Error),
    /// A failure outside any member: opening the layer's root or the lower
    /// tree.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        /// The step that failed ("open layer root").
        operation: &'static str,
        /// The directory it was working on.
        path: PathBuf,
        /// The system's error, errno kept.
        #[source]
        source: io::Error,
    },
}

// Made by the tree side, which Windows builds leave out.
#[cfg_attr(not(unix), allow(dead_code))]
impl ArchiveError {
    pub(crate) fn unsafe_entry(entry: &str, reason: &str) -> Self {
        ArchiveError::Unsafe {
            entry: entry.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn entry(entry: &str, reason: String) -> Self {
        ArchiveError::Entry {
            entry: entry.to_string(),
            reason,
        }
    }

    pub(crate) fn entry_io(entry: &str, operation: &'static str, source: io::Error) -> Self {
        ArchiveError::EntryIo {
            entry: entry.to_string(),
            operation,
            source,
        }
    }

    pub(crate) fn input(source: io::Error) -> Self {
        ArchiveError::Input(source)
    }

    pub(crate) fn record(source: io::Error) -> Self {
        ArchiveError::Record(source)
    }

    pub(crate) fn io(operation: &'static str, path: &Path, source: io::Error) -> Self {
        ArchiveError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }
}
