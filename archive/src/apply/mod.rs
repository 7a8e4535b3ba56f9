//! Applying a layer tar stream to a directory, safely, recording tar-split
//! and computing both digests in the same pass.
//!
//! The stream is read once ([`apply_layer`]): decompressed (on its own thread),
//! split into members, each member's metadata read (`metadata`) and the
//! member made in the tree (`files`) or, for a whiteout, what it names
//! deleted or hidden (`whiteouts`); directories' modes and times are set at
//! the end, once nothing more is written into them.

mod files;
mod metadata;

mod whiteouts;

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};

use super::ArchiveError;
use super::beneath::{self, Root, name_cstr, normalize, proc_path, remove_all_at, split};
use super::bounded::{DirLog, DirRecord, OverBudget, PathBudget, PathSet};
use super::compression::{Compression, decompress};
use super::members::{Data, MAX_SPARSE_REGIONS, MAX_TRAILING, Member, Members, lossy};
use super::record;
use super::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX, WhiteoutFormat};
pub use crate::apply_options::{ApplyOptions, ApplyReport, ApplyTarget};
use crate::pipeline::{ChunkReader, PIPELINE_DEPTH, pump};
use metadata::{DroppedXattrs, layer_may_set_xattr, parse_u64};

/// Applies the (possibly compressed) layer stream `input` under `root`.
///
/// Nothing outside `root` is created, changed or deleted, whatever the stream
/// holds. On error the tree under `root` is partial: the caller discards the
/// layer. With `tar_split` given, the record to rebuild the exact stream is
/// written there as JSON lines (the caller compresses and stores it).
///
/// Hashing and recording run on a second thread, beside the one that writes
/// the files.
pub fn apply_layer(
    root: &Path,
    input: impl Read,
    options: &ApplyOptions,
    tar_split: Option<&mut (dyn Write + Send)>,
) -> Result<ApplyReport, ArchiveError> {
    let root = Root::open(root).map_err(|e| ArchiveError::io("open layer root", root, e))?;
    let lower = match (&options.lower, options.target) {
        (Some(lower), ApplyTarget::Diff(_)) => {
            Some(Root::open(lower).map_err(|e| ArchiveError::io("open the lower tree", lower, e))?)
        }
        _ => None,
    };
    let lower = lower.as_ref();
    let (tx, rx) = record::channel();
    std::thread::scope(|scope| {
        let recorder = scope.spawn(move || record::record(rx, tar_split));
        let applied = apply_stream(&root, lower, input, options, tx);
        let recorded = recorder
            .join()
            .expect("the recording thread does not panic");
        let (compression, size, entries) = applied?;
        if let Some(e) = recorded.record_error {
            return Err(ArchiveError::record(e));
        }
        let (uncompressed_digest, uncompressed_size) = recorded.uncompressed;
        let (compressed_digest, compressed_size) =
            recorded.compressed.unwrap_or(recorded.uncompressed);
        Ok(ApplyReport {
            size,
            compression,
            compressed_digest,
            compressed_size,
            uncompressed_digest,
            uncompressed_size,
            entries,
        })
    })
}

/// Decompresses and applies, feeding the recording thread through `tx`;
/// returns the compression, the size applied and the member count.
///
/// A compressed stream is inflated on this thread and applied on another,
/// so inflating overlaps with the file system calls, as `gzip -dc | tar -x`
/// overlaps them in two processes.
fn apply_stream(
    root: &Root,
    lower: Option<&Root>,
    input: impl Read,
    options: &ApplyOptions,
    tx: record::Sender,
) -> Result<(Compression, u64, u64), ArchiveError> {
    let mut compressed = record::CompressedTap::new(input, tx.clone());
    let (compression, decompressed) = decompress(&mut compressed).map_err(ArchiveError::input)?;
    let (size, entries) = if compression == Compression::None {
        apply_tar(root, lower, decompressed, options, tx)?
    } else {
        let (chunks_tx, chunks_rx) = std::sync::mpsc::sync_channel(PIPELINE_DEPTH);
        std::thread::scope(|scope| {
            let applier = scope
                .spawn(move || apply_tar(root, lower, ChunkReader::new(chunks_rx), options, tx));
            pump(decompressed, &chunks_tx);
            drop(chunks_tx);
            applier.join().expect("the applying thread does not panic")
        })?
    };
    compressed
        .drain(MAX_TRAILING)
        .map_err(ArchiveError::input)?;
    Ok((compression, size, entries))
}

/// Applies the (decompressed) tar stream; returns the size applied and the
/// member count.
fn apply_tar(
    root: &Root,
    lower: Option<&Root>,
    decompressed: impl Read,
    options: &ApplyOptions,
    tx: record::Sender,
) -> Result<(u64, u64), ArchiveError> {
    let mut tap = record::TarTap::new(decompressed, tx);
    if !options.require_end_of_archive {
        tap = tap.complete_at_eof();
    }
    let mut state = Applier::new(root, lower, options);
    let applied = apply_members(&mut state, &tap);
    // Whatever became of the layer, say what of it was left out.
    state.dropped.warn();
    applied?;
    state.finish()?;
    Ok((state.size, state.entries))
}

/// Applies every member, then reads what follows the archive.
fn apply_members<R: Read>(
    state: &mut Applier<'_>,
    tap: &record::TarTap<R>,
) -> Result<(), ArchiveError> {
    let mut members = Members::new(tap);
    // Where the last member's data ends, and its name.
    let mut last_member: Option<(u64, String)> = None;
    loop {
        let member = match members.next_member() {
            Ok(Some(member)) => member,
            Ok(None) => break,
            Err(e) if !members.saw_header() => {
                return Err(ArchiveError::input(io::Error::new(
                    e.kind(),
                    format!("not a tar stream: {e}"),
                )));
            }
            Err(e) => return Err(ArchiveError::input(e)),
        };
        tap.member_start().map_err(ArchiveError::record)?;
        last_member = Some((member.data_start + member.size, lossy(&member.name)));
        let mut data = members.data(&member);
        state.apply_entry(&member, &mut data, tap)?;
        tap.member_end(&member.name).map_err(ArchiveError::record)?;
    }
    // A tar ends with zero blocks; a stream that simply stops was cut short
    // (at a member boundary, where the tar reader alone cannot tell).
    if !members.saw_end_marker() && state.options.require_end_of_archive {
        return Err(ArchiveError::input(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the stream ends after {} members without the end-of-archive blocks: truncated",
                state.entries
            ),
        )));
    }
    // A stream completed at its end must have held all of its last member's
    // data: only the padding and the end-of-archive blocks may be missing.
    if let (Some(end), Some((data_end, name))) = (tap.completed_at(), &last_member)
        && end < *data_end
    {
        return Err(ArchiveError::input(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the stream ends inside the data of {name:?}: truncated"),
        )));
    }
    // What follows the end-of-archive blocks (record padding) is part of the
    // stream: read it so it is recorded and digested, within a limit.
    members.finish().map_err(ArchiveError::input)
}

/// Metadata of a member, taken from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    atime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Set for a member stored in one of GNU tar's PAX sparse formats.
    sparse: Option<PaxSparse>,
}

/// A PAX sparse member (GNU tar 1.0 or 0.1 format): its real name and size,
/// and the map of data regions (in the PAX records for 0.1, at the front of
/// the data for 1.0).
#[derive(Default)]
struct PaxSparse {
    name: Option<Vec<u8>>,
    real_size: Option<u64>,
    major: Option<u64>,
    map: Option<Vec<(u64, u64)>>,
}

/// Whether `component` is AUFS bookkeeping: `.wh..wh.plnk` (hard link
/// targets), `.wh..wh.aufs`, `.wh..wh.orph` and any other `.wh..wh.` name.
/// They and everything below them are left out of every target: they are
/// AUFS's private state, meaningless elsewhere, and a directory of them
/// applied would later be exported as a whiteout.
fn is_aufs_meta(component: &OsStr) -> bool {
    component.as_bytes().starts_with(b".wh..wh.")
}

/// Whether `rel` lies below AUFS bookkeeping.
fn below_aufs_meta(rel: &Path) -> bool {
    rel.parent().is_some_and(|dir| dir.iter().any(is_aufs_meta))
}

/// An open parent directory, and the group a file made in it gets.
struct ParentDir {
    fd: OwnedFd,
    /// A setgid directory gives new files its own group.
    inherited_gid: Option<u32>,
}

impl std::os::fd::AsFd for ParentDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::ops::Deref for ParentDir {
    type Target = OwnedFd;
    fn deref(&self) -> &OwnedFd {
        &self.fd
    }
}

/// Who owns a newly created file and with what mode, before any chown or
/// chmod, so those calls are made only when they change something.
struct Fresh {
    uid: u32,
    gid: u32,
    /// `None` when the umask could not be read: always chmod.
    mode: Option<u32>,
}

/// The process umask, from /proc (reading it with umask(2) would change it
/// for a moment under other threads).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

/// Parent directory handles kept open for the next members.
const PARENTS_CACHED: usize = 4;

/// A directory whose mode and times are set at the end, once its contents are in.
struct Applier<'a> {
    root: &'a Root,
    lower: Option<&'a Root>,
    options: &'a ApplyOptions,
    /// Directories this layer writes into, with their times before it did:
    /// one without a member of its own keeps those times (the layer did not
    /// say to change them), so the result does not depend on when it was
    /// applied.
    touched: DirLog,
    /// The directories in `touched` (the first record of each counts).
    touched_seen: PathSet,
    /// The parent directories of the last few members and their handles,
    /// most recent last: consecutive members mostly share one, and a tar
    /// goes back to a directory after one of its subdirectories. Dropped
    /// whenever anything is removed or a symlink made, since either can
    /// change what a path resolves to.
    parent_cache: Vec<(PathBuf, Rc<ParentDir>)>,
    /// Paths this layer made, and every directory above one of them: what
    /// the layer itself holds stays whatever its order in the stream, when a
    /// whiteout or an opaque marker hides the lower layers' content there.
    /// An overlay copy-up of a lower directory is not the layer's until it
    /// puts something in it.
    made: PathSet,
    /// Overlay only: directories of the upper whose lower contents are
    /// hidden (opaque, or made in place of a non-directory of the layer); a
    /// directory made below one is new, not a copy-up of a lower one.
    hidden: PathSet,
    /// Overlay only: the name of an opaque marker at the layer's root.
    /// overlayfs ignores the opaque xattr on the upper root, so the lower
    /// root's entries are whited out one by one at the end, once all that the
    /// layer holds there is known.
    root_opaque: Option<String>,
    /// Directories the layer describes: their modes and times are set at
    /// the end, once nothing more is written into them.
    dirs: DirLog,
    /// Xattr records the layer carried that were not applied.
    dropped: DroppedXattrs,
    size: u64,
    entries: u64,
    buf: Vec<u8>,
    umask: Option<u32>,
    euid: u32,
    egid: u32,
}

impl<'a> Applier<'a> {
    /// The whiteout format of a diff-directory target; `None` on a tree.
    fn diff_format(&self) -> Option<WhiteoutFormat> {
        match self.options.target {
            ApplyTarget::Tree => None,
            ApplyTarget::Diff(format) => Some(format),
        }
    }

    fn new(root: &'a Root, lower: Option<&'a Root>, options: &'a ApplyOptions) -> Self {
        let budget = PathBudget::new(options.max_tracked_paths);
        Applier {
            root,
            lower,
            options,
            touched: DirLog::default(),
            touched_seen: PathSet::new(&budget),
            parent_cache: Vec::with_capacity(PARENTS_CACHED),
            made: PathSet::new(&budget),
            hidden: PathSet::new(&budget),
            root_opaque: None,
            dirs: DirLog::default(),
            dropped: DroppedXattrs::default(),
            size: 0,
            entries: 0,
            buf: vec![0u8; 256 * 1024],
            umask: current_umask(),
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
        }
    }

    fn forget_parents(&mut self) {
        self.parent_cache.clear();
    }

    /// Sets directories' modes and times, deepest first, now that nothing more
    /// is written into them.
    fn finish(&mut self) -> Result<(), ArchiveError> {
        // Before the times are set: whiteouts change the root's.
        if let Some(shown) = self.root_opaque.take() {
            self.hide_lower_root(&shown)?;
        }
        // The times of existing directories written into, then what the
        // layer says of its own directories (which wins where both speak of
        // one, being set after).
        let touched = std::mem::take(&mut self.touched);
        touched
            .replay(false, |dir| {
                match self.open_dir_rw(&dir.rel) {
                    Ok(fd) => rustix::fs::futimens(&fd, &dir.times)
                        .map_err(|e| with_path(&dir.rel, "restore times", e.into())),
                    // Deleted or replaced by a later member.
                    Err(e) if gone(&e) => Ok(()),
                    Err(e) => Err(with_path(&dir.rel, "open directory", e)),
                }
            })
            .map_err(|e| ArchiveError::entry_io("", "finish directories", e))?;
        // Unprivileged, a directory's mode could keep us from those below
        // it: deepest first. Root passes whatever the modes.
        let dirs = std::mem::take(&mut self.dirs);
        dirs.replay(self.euid != 0, |dir| {
            let fd = match self.open_dir_rw(&dir.rel) {
                Ok(fd) => fd,
                // Replaced or deleted by a later member: nothing to finish.
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(with_path(&dir.rel, "open directory", e)),
            };
            if let Some(mode) = dir.mode {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                    .map_err(|e| with_path(&dir.rel, "set mode", e.into()))?;
            }
            rustix::fs::futimens(&fd, &dir.times)
                .map_err(|e| with_path(&dir.rel, "set times", e.into()))
        })
        .map_err(|e| ArchiveError::entry_io("", "finish directories", e))?;
        Ok(())
    }
}

/// An error of directory `rel`, saying which and what failed.
fn with_path(rel: &Path, operation: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{operation} {:?}: {e}", rel.display().to_string()),
    )
}

/// The error for a layer tracking more paths than an apply may.
fn over_budget(shown: &str) -> impl Fn(OverBudget) -> ArchiveError + '_ {
    move |e| ArchiveError::unsafe_entry(shown, &e.to_string())
}

/// Adds `rel` and every directory above it to `made`.
fn mark_made(made: &mut PathSet, rel: &Path) -> Result<(), OverBudget> {
    for path in rel.ancestors() {
        // Once one is there, so are those above it.
        if path.as_os_str().is_empty() || !made.insert(path)? {
            break;
        }
    }
    Ok(())
}

/// A real (not O_PATH) handle on the directory `name` in `dir`, not
/// following a symlink.
fn open_subdir(dir: &impl std::os::fd::AsFd, name: &std::ffi::CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// An open that failed because what was there is gone or is no longer a
/// directory.
fn gone(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(e.raw_os_error(), Some(code) if code == Errno::NOENT.raw_os_error() || code == Errno::NOTDIR.raw_os_error() || code == Errno::LOOP.raw_os_error())
}

fn times_of(stat: &rustix::fs::Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: stat.st_atime,
            tv_nsec: stat.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: stat.st_mtime,
            tv_nsec: stat.st_mtime_nsec as _,
        },
    }
}
