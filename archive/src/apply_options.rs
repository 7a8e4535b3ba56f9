//! What an apply is asked to do and what it reports: plain data, so that
//! code on every platform can name them, while applying itself
//! ([`crate::apply_layer`]) works on a Linux tree.

use std::path::PathBuf;

use crate::IdMap;
use crate::compression::Compression;
use crate::digest::Sha256Digest;
use crate::whiteout::WhiteoutFormat;

/// The most paths one apply tracks by default (members made, directories
/// hidden or written into, and the directories above them): about 20 MiB of
/// hash sets at most. A layer needing more is refused.
pub const MAX_TRACKED_PATHS: usize = 1_500_000;

/// Where a layer is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyTarget {
    /// Onto a full copy of the parent's tree (vfs, btrfs, zfs, devicemapper): a
    /// whiteout deletes, an opaque directory loses what the lower layers had.
    Tree,
    /// Into a diff directory (a driver's native diff, such as an overlay
    /// upper) whose deletions are kept in the given format: a whiteout member
    /// becomes that format's whiteout, an opaque directory gets its mark. Where
    /// the format's merge ignores an opaque mark on the root, an opaque root
    /// also gets a whiteout for each entry of the lower root the layer does
    /// not replace.
    Diff(WhiteoutFormat),
}

impl ApplyTarget {
    /// An overlay upper directory.
    pub const OVERLAY_UPPER: ApplyTarget = ApplyTarget::Diff(WhiteoutFormat::Overlay);
}

/// How [`apply_layer`] applies a stream; the default is onto a full tree,
/// ids unmapped, end of archive required.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Whether `root` is a full tree or a diff directory, which decides what
    /// a whiteout does.
    pub target: ApplyTarget,
    /// Container-to-host id maps; empty means ids are written as they are.
    pub uid_maps: Vec<IdMap>,
    /// Group id maps, like `uid_maps`.
    pub gid_maps: Vec<IdMap>,
    /// For a `Diff` target: the tree the diff directory goes on (the parent
    /// layer, mounted). A directory the layer writes into without a member
    /// of its own is made in the upper as a copy of the lower one's owner,
    /// mode, xattrs and times, as overlay's own copy-up would.
    pub lower: Option<PathBuf>,
    /// Refuse a stream that stops after a whole member without the two
    /// end-of-archive blocks (it may have been cut short). Some writers omit
    /// them (umoci's `insert` does), so a caller that checks the stream's
    /// digest afterwards, which catches any cut, can accept such streams.
    pub require_end_of_archive: bool,
    /// The most paths the apply tracks (members made, directories hidden or
    /// written into, and the directories above them); a layer needing more
    /// is refused, which keeps an apply's memory bounded whatever the
    /// layer. Default 1,500,000 (about 20 MiB of hash sets at most).
    pub max_tracked_paths: usize,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            target: ApplyTarget::Tree,
            uid_maps: Vec::new(),
            gid_maps: Vec::new(),
            lower: None,
            require_end_of_archive: true,
            max_tracked_paths: MAX_TRACKED_PATHS,
        }
    }
}

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// Bytes of file data written, hard links counted once (as diff size counts).
    pub size: u64,
    /// How the stream was compressed, recognised from its first bytes.
    pub compression: Compression,
    /// Digest and length of the stream as given (the blob).
    pub compressed_digest: Sha256Digest,
    /// Length of the stream as given, in bytes: the blob's size.
    pub compressed_size: u64,
    /// Digest and length of the tar itself (the OCI diff id).
    pub uncompressed_digest: Sha256Digest,
    /// Length of the decompressed tar, in bytes: what the diff id covers.
    pub uncompressed_size: u64,
    /// Tar members applied.
    pub entries: u64,
}
