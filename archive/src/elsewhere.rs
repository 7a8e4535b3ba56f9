//! The tree side of the layer format where it does not work: outside Linux.
//!
//! Applying, comparing and exporting trees rely on openat2, `*at` calls,
//! Unix modes and xattrs. On Windows a layer's files belong to a driver that
//! owns its format (its own `apply_diff` and `diff`), so these functions
//! are never the way there; they exist so that code shared by every platform
//! names one set of functions, and each answers, if reached, that it does not
//! work on this platform and why.

use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use crate::{ApplyOptions, ApplyReport, ArchiveError, Change, ExportReport, WhiteoutFormat};

/// The error every tree operation answers here, naming the operation.
pub(crate) fn not_on_this_platform(operation: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "{operation} works only on Linux (it needs openat2 and Unix file metadata); on \
             this platform a driver that owns its layer format reads and writes layers"
        ),
    )
}

/// Applying a layer to a directory tree: not on this platform.
pub fn apply_layer(
    root: &Path,
    _input: impl Read,
    _options: &ApplyOptions,
    _tar_split: Option<&mut (dyn Write + Send)>,
) -> Result<ApplyReport, ArchiveError> {
    Err(ArchiveError::io(
        "apply a layer tar to",
        root,
        not_on_this_platform("applying a layer tar to a directory"),
    ))
}

/// Comparing two trees: not on this platform.
pub fn changes(_layer: &Path, _parent: Option<&Path>) -> io::Result<Vec<Change>> {
    Err(not_on_this_platform(
        "comparing a layer's tree with its parent's",
    ))
}

/// Reading a diff directory's changes: not on this platform.
pub fn diff_dir_changes(
    _diff: &Path,
    _lower: Option<&Path>,
    _format: WhiteoutFormat,
) -> io::Result<Vec<Change>> {
    Err(not_on_this_platform("reading a diff directory's changes"))
}

/// Reading an overlay upper directory's changes: not on this platform.
pub fn overlay_changes(_upper: &Path, _lower: Option<&Path>) -> io::Result<Vec<Change>> {
    Err(not_on_this_platform("reading an overlay upper directory"))
}

/// Listing a stream's changes against a lower tree: not on this platform.
pub fn stream_changes(_stream: impl Read, _lower: Option<&Path>) -> io::Result<Vec<Change>> {
    Err(not_on_this_platform(
        "listing a layer stream's changes against a tree",
    ))
}

/// Exporting changes of a tree as a tar: not on this platform.
pub fn export_changes(
    _root: &Path,
    _changes: &[Change],
    _out: impl Write,
) -> io::Result<ExportReport> {
    Err(not_on_this_platform("exporting a tree's changes as a tar"))
}

/// Rebuilding a layer's original tar from its files: not on this platform.
pub fn reassemble(_record: impl BufRead, _root: &Path, _out: impl Write) -> io::Result<u64> {
    Err(not_on_this_platform(
        "rebuilding a layer's tar from its files",
    ))
}
