//! One change of a layer against its parent: what the tree comparison, a
//! diff directory or a driver's stream yields and what export writes. Plain
//! data, on every platform.

use std::path::PathBuf;

/// What happened at a path: exported as the entry itself for `Add` and
/// `Modify`, as a whiteout for `Delete`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The parent does not have the path; the layer brings it.
    Add,
    /// Both have the path and the layer's version replaces the parent's
    /// (a tree comparison also lists every directory above another change
    /// this way, so its metadata travels with the diff).
    Modify,
    /// The parent has the path and the layer deletes it, with everything
    /// under it.
    Delete,
}

/// One change, at a path relative to the layer's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Where, relative to the layer's root; the empty path is the root.
    pub path: PathBuf,
    /// Whether the path was added, modified or deleted, which decides how
    /// it is exported.
    pub kind: ChangeKind,
    /// A directory whose lower contents are all hidden (re-created, or marked
    /// opaque in an overlay upper directory).
    pub opaque: bool,
}

impl Change {
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn new(path: PathBuf, kind: ChangeKind) -> Self {
        Change {
            path,
            kind,
            opaque: false,
        }
    }
}

/// What the export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Regular file bytes, hard links once: the same count `apply` returns.
    pub size: u64,
    /// Changes written, one per change, a whiteout counting as one (sockets,
    /// which a tar cannot hold, are skipped and not counted).
    pub entries: u64,
}
