//! Applying a layer tar stream to a directory, safely, recording tar-split
//! and computing both digests in the same pass.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};

use super::beneath::{self, Root, name_cstr, normalize, proc_path, remove_all_at, split};
pub use super::bounded::MAX_TRACKED_PATHS;
use super::bounded::{DirLog, DirRecord, OverBudget, PathBudget, PathSet};
use super::compression::{Compression, decompress};
use super::digest::Sha256Digest;
use super::members::{Data, MAX_SPARSE_REGIONS, MAX_TRAILING, Member, Members, lossy};
use super::record;
use super::whiteout::{OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};
use super::{ArchiveError, IdMap};

/// Where a layer is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyTarget {
    /// Onto a full copy of the parent's tree (vfs, btrfs, zfs, devicemapper): a
    /// whiteout deletes, an opaque directory loses what the lower layers had.
    Tree,
    /// Into an overlay upper directory: a whiteout becomes a 0:0 character
    /// device, an opaque directory gets `trusted.overlay.opaque=y`. overlayfs
    /// ignores that xattr on the upper root, so an opaque root also gets a
    /// whiteout for each entry of the lower root the layer does not replace.
    OverlayUpper,
}

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub target: ApplyTarget,
    /// Container-to-host id maps; empty means ids are written as they are.
    pub uid_maps: Vec<IdMap>,
    pub gid_maps: Vec<IdMap>,
    /// For `OverlayUpper`: the tree the upper directory goes on (the parent
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
    /// layer. Default [`MAX_TRACKED_PATHS`].
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
    pub compression: Compression,
    /// Digest and length of the stream as given (the blob).
    pub compressed_digest: Sha256Digest,
    pub compressed_size: u64,
    /// Digest and length of the tar itself (the OCI diff id).
    pub uncompressed_digest: Sha256Digest,
    pub uncompressed_size: u64,
    /// Tar members applied.
    pub entries: u64,
}

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
        (Some(lower), ApplyTarget::OverlayUpper) => {
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
    tx: std::sync::mpsc::SyncSender<Vec<record::Message>>,
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

/// Chunks of decompressed stream in flight between the two threads.
const PIPELINE_DEPTH: usize = 4;
const CHUNK: usize = 256 * 1024;

/// Reads `from` to its end (or first error) in chunks sent to `to`; stops
/// early when the other side has gone (it failed and needs no more).
fn pump(mut from: impl Read, to: &std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>) {
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        let outcome = loop {
            match from.read(&mut chunk[filled..]) {
                Ok(0) => break Ok(true),
                Ok(n) => {
                    filled += n;
                    if filled == CHUNK {
                        break Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        chunk.truncate(filled);
        if filled > 0 && to.send(Ok(chunk)).is_err() {
            return;
        }
        match outcome {
            Ok(false) => {}
            Ok(true) => return,
            Err(e) => {
                let _ = to.send(Err(e));
                return;
            }
        }
    }
}

/// The receiving end of `pump`, read as a stream.
struct ChunkReader {
    chunks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    fn new(chunks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        ChunkReader {
            chunks,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.current.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The pump is done: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Applies the (decompressed) tar stream; returns the size applied and the
/// member count.
fn apply_tar(
    root: &Root,
    lower: Option<&Root>,
    decompressed: impl Read,
    options: &ApplyOptions,
    tx: std::sync::mpsc::SyncSender<Vec<record::Message>>,
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

fn parse_u64(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// A PAX 0.1 sparse map, `offset,length,offset,length...`.
fn parse_sparse_map(value: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let bad = || "bad GNU.sparse.map".to_string();
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let mut numbers = text.split(',').filter(|s| !s.is_empty());
    let mut map = Vec::new();
    while let Some(offset) = numbers.next() {
        let length = numbers.next().ok_or_else(bad)?;
        if map.len() >= MAX_SPARSE_REGIONS {
            return Err(format!(
                "more than {MAX_SPARSE_REGIONS} regions in GNU.sparse.map"
            ));
        }
        map.push((
            offset.parse().map_err(|_| bad())?,
            length.parse().map_err(|_| bad())?,
        ));
    }
    Ok(map)
}

/// Whether a layer may set the xattr `name` (the part after
/// `SCHILY.xattr.`).
///
/// What a layer means comes from its members and its whiteout entries,
/// never from xattr records, so only xattrs that are part of a file's
/// content are kept: `user.*`, file capabilities (`security.capability`)
/// and POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`).
/// The rest is dropped, because
///
/// * `trusted.overlay.*` (and any `trusted.*`) in a tar is overlay
///   bookkeeping leaked from an upper directory, or an attack. On overlay a
///   smuggled `redirect` makes a directory show another part of the lower
///   tree (the kernel follows redirects even with `redirect_dir=off`),
///   `opaque` hides lower content, `metacopy` makes reads fail with EIO,
///   `origin` points file handles elsewhere. Opaque directories come only
///   from `.wh..wh..opq`: the applier sets that xattr itself;
/// * `security.selinux`, `security.ima`, `security.evm` and the other
///   `security.*` labels are assigned by the host's policy, not by an image;
/// * an unknown namespace has no meaning a layer could rely on.
///
/// Dropping (not refusing) keeps real images that carry such records
/// (tars of overlay uppers, of SELinux hosts) importable, while the attack
/// does nothing.
fn layer_may_set_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || matches!(
            name,
            b"security.capability" | b"system.posix_acl_access" | b"system.posix_acl_default"
        )
}

/// Distinct keys reported one by one; more are only counted.
const MAX_DROPPED_KEYS: usize = 64;

/// The xattr records a layer carried that were dropped, for one warning per
/// key (not per file: a tar of an overlay upper can carry one per directory).
#[derive(Default)]
struct DroppedXattrs {
    /// Key, the first member that carried it, and how many did.
    keys: BTreeMap<String, (String, u64)>,
    /// Records of keys beyond the first `MAX_DROPPED_KEYS`.
    others: u64,
}

impl DroppedXattrs {
    fn note(&mut self, key: &[u8], member: &str) {
        let key = lossy(key);
        if let Some((_, count)) = self.keys.get_mut(&key) {
            *count += 1;
        } else if self.keys.len() < MAX_DROPPED_KEYS {
            self.keys.insert(key, (member.to_string(), 1));
        } else {
            self.others += 1;
        }
    }

    /// Logs what was dropped (names and keys escaped: they are the stream's).
    fn warn(&mut self) {
        for (key, (member, count)) in std::mem::take(&mut self.keys) {
            tracing::warn!(
                "layer xattr {key:?} dropped from {count} member(s), first {member:?}: a layer \
                 may set only user.*, security.capability and POSIX ACL xattrs"
            );
        }
        if self.others > 0 {
            tracing::warn!(
                "{} more layer xattr record(s) of other keys dropped",
                std::mem::take(&mut self.others)
            );
        }
    }
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
    /// The parent directory of the last member and its handle: consecutive
    /// members mostly share one. Dropped whenever anything is removed or a
    /// symlink made, since either can change what a path resolves to.
    parent_cache: Option<(PathBuf, Rc<ParentDir>)>,
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

fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = match text.split_once('.') {
        Some((s, f)) => (s, f),
        None => (text, ""),
    };
    let tv_sec: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: i64 = if frac.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    // A negative time with a fraction counts the fraction towards zero.
    let (tv_sec, tv_nsec) = if tv_sec < 0 && nanos > 0 {
        (tv_sec - 1, 1_000_000_000 - nanos)
    } else {
        (tv_sec, nanos)
    };
    Some(Timespec {
        tv_sec,
        tv_nsec: tv_nsec as _,
    })
}

fn map_id(id: u32, maps: &[IdMap]) -> Option<u32> {
    if maps.is_empty() {
        return Some(id);
    }
    maps.iter().find_map(|m| {
        (id >= m.container_id && id - m.container_id < m.size)
            .then(|| m.host_id + (id - m.container_id))
    })
}

impl<'a> Applier<'a> {
    fn new(root: &'a Root, lower: Option<&'a Root>, options: &'a ApplyOptions) -> Self {
        let budget = PathBudget::new(options.max_tracked_paths);
        Applier {
            root,
            lower,
            options,
            touched: DirLog::default(),
            touched_seen: PathSet::new(&budget),
            parent_cache: None,
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

    fn meta(&mut self, member: &Member, shown: &str) -> Result<Meta, ArchiveError> {
        let header = &member.header;
        let bad = |why: String| ArchiveError::entry(shown, why);
        // The tar crate's messages for a bad field quote the field's bytes
        // (and the raw name): only which field it was is said.
        let field = |name: &'static str| move |_| bad(format!("its {name} field is not a number"));
        let mode = header.mode().map_err(field("mode"))? & 0o7777;
        let uid = match member.pax_uid {
            Some(uid) => uid,
            None => header.uid().map_err(field("uid"))?,
        };
        let gid = match member.pax_gid {
            Some(gid) => gid,
            None => header.gid().map_err(field("gid"))?,
        };
        let mtime_secs = header.mtime().map_err(field("mtime"))?;
        let mut mtime = Timespec {
            tv_sec: mtime_secs as i64,
            tv_nsec: 0,
        };
        let mut atime = None;
        let mut xattrs = Vec::new();
        let mut sparse: Option<PaxSparse> = None;
        for (key, value) in member.pax_records() {
            if key == b"mtime" {
                mtime = parse_pax_time(value).ok_or_else(|| bad("bad PAX mtime".into()))?;
            } else if key == b"atime" {
                atime = parse_pax_time(value);
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if layer_may_set_xattr(name) {
                    xattrs.push((name.to_vec(), value.to_vec()));
                } else {
                    self.dropped.note(name, shown);
                }
            } else if let Some(field) = key.strip_prefix(b"GNU.sparse.") {
                let info = sparse.get_or_insert_with(PaxSparse::default);
                match field {
                    b"name" => info.name = Some(value.to_vec()),
                    b"realsize" | b"size" => info.real_size = parse_u64(value),
                    b"major" => info.major = parse_u64(value),
                    b"map" => info.map = Some(parse_sparse_map(value).map_err(bad)?),
                    _ => {}
                }
            }
        }
        let uid = u32::try_from(uid)
            .ok()
            .and_then(|u| map_id(u, &self.options.uid_maps));
        let gid = u32::try_from(gid)
            .ok()
            .and_then(|g| map_id(g, &self.options.gid_maps));
        let (Some(uid), Some(gid)) = (uid, gid) else {
            return Err(bad("its owner is outside the uid/gid maps".into()));
        };
        Ok(Meta {
            mode,
            uid,
            gid,
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
            sparse,
        })
    }

    /// The handle of `rel`'s parent directory, made if missing.
    fn parent(&mut self, parent: &Path, shown: &str) -> Result<Rc<ParentDir>, ArchiveError> {
        if let Some((cached, dir)) = &self.parent_cache
            && cached == parent
        {
            return Ok(dir.clone());
        }
        let fd = self.dir_creating(parent, shown, "open parent directory")?;
        let stat = rustix::fs::fstat(&fd)
            .map_err(|e| ArchiveError::entry_io(shown, "stat parent directory", e.into()))?;
        self.note_touched(parent, &stat, shown)?;
        let inherited_gid = (stat.st_mode & 0o2000 != 0).then_some(stat.st_gid);
        let dir = Rc::new(ParentDir { fd, inherited_gid });
        self.parent_cache = Some((parent.to_path_buf(), dir.clone()));
        Ok(dir)
    }

    /// Opens directory `rel`, making what is missing of it; in an overlay
    /// upper, a directory made there takes the lower one's metadata, and one
    /// in the place of a whiteout of this layer is made new and opaque.
    fn dir_creating(
        &mut self,
        rel: &Path,
        shown: &str,
        operation: &'static str,
    ) -> Result<OwnedFd, ArchiveError> {
        loop {
            let mut created = Vec::new();
            let opened = self
                .root
                .dir_creating(rel, |dir| created.push(dir.to_path_buf()));
            for dir in created {
                self.adopt_created_dir(dir, shown)?;
            }
            match opened {
                Ok(fd) => return Ok(fd),
                // On a full tree a whited-out directory is simply gone; in an
                // upper its whiteout is in the way.
                Err(e)
                    if self.options.target == ApplyTarget::OverlayUpper
                        && e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
                {
                    if !self.dir_over_whiteout(rel, shown)? {
                        return Err(ArchiveError::entry_io(shown, operation, e));
                    }
                }
                Err(e) => return Err(ArchiveError::entry_io(shown, operation, e)),
            }
        }
    }

    /// Takes note of a directory `dir_creating` made. In an upper, one that
    /// the lower tree has (and does not hide) is a copy-up of it: it gets
    /// its metadata and is not yet the layer's own.
    fn adopt_created_dir(&mut self, dir: PathBuf, shown: &str) -> Result<(), ArchiveError> {
        let lower = self.lower.filter(|_| !self.is_hidden_below(&dir));
        let copied_up = match lower {
            Some(lower) => copy_dir_meta(lower, self.root, &dir).map_err(|e| {
                ArchiveError::entry_io(shown, "copy the lower directory's metadata", e)
            })?,
            None => None,
        };
        match copied_up {
            Some(times) => {
                self.touched_seen.insert(&dir).map_err(over_budget(shown))?;
                self.touched
                    .push(DirRecord {
                        rel: dir,
                        mode: None,
                        times,
                    })
                    .map_err(|e| ArchiveError::entry_io(shown, "remember a directory", e))?;
            }
            None => mark_made(&mut self.made, &dir).map_err(over_budget(shown))?,
        }
        Ok(())
    }

    /// Remembers the times of the existing directory `rel` before this
    /// layer writes into it (the first time only).
    fn note_touched(
        &mut self,
        rel: &Path,
        stat: &rustix::fs::Stat,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        if self.touched_seen.insert(rel).map_err(over_budget(shown))? {
            self.touched
                .push(DirRecord {
                    rel: rel.to_path_buf(),
                    mode: None,
                    times: times_of(stat),
                })
                .map_err(|e| ArchiveError::entry_io(shown, "remember a directory", e))?;
        }
        Ok(())
    }

    /// Whether a directory above `rel` hides what the lower tree has below it.
    fn is_hidden_below(&self, rel: &Path) -> bool {
        !self.hidden.is_empty() && rel.ancestors().skip(1).any(|a| self.hidden.contains(a))
    }

    /// Replaces the first whiteout on the way to `rel` with a new, opaque
    /// directory (the whiteout hid the lower one, and this layer's directory
    /// must go on hiding it); says whether there was one.
    fn dir_over_whiteout(&mut self, rel: &Path, shown: &str) -> Result<bool, ArchiveError> {
        let failed = |e: io::Error| ArchiveError::entry_io(shown, "replace a whiteout", e);
        let mut so_far = PathBuf::new();
        for part in rel.components() {
            let above = so_far.clone();
            so_far.push(part);
            match self.root.dir(&so_far) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {}
                Err(_) => return Ok(false),
            }
            let parent = self.root.dir(&above).map_err(failed)?;
            let name = name_cstr(part.as_os_str()).map_err(failed)?;
            let stat = rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| failed(e.into()))?;
            if !is_whiteout(&stat) {
                return Ok(false);
            }
            self.forget_parents();
            rustix::fs::unlinkat(&parent, &name, AtFlags::empty()).map_err(|e| failed(e.into()))?;
            rustix::fs::mkdirat(&parent, &name, Mode::from_raw_mode(0o755))
                .map_err(|e| failed(e.into()))?;
            let dir = open_subdir(&parent, &name).map_err(|e| failed(e.into()))?;
            set_opaque(&dir).map_err(|e| failed(e.into()))?;
            self.hidden.insert(&so_far).map_err(over_budget(shown))?;
            mark_made(&mut self.made, &so_far).map_err(over_budget(shown))?;
            return Ok(true);
        }
        Ok(false)
    }

    fn forget_parents(&mut self) {
        self.parent_cache = None;
    }

    /// Applies one member.
    fn apply_entry<R: Read>(
        &mut self,
        member: &Member,
        data: &mut Data<'_, R>,
        tap: &record::TarTap<R>,
    ) -> Result<(), ArchiveError> {
        self.entries += 1;
        let shown = lossy(&member.name);
        let kind = member.kind();
        if kind.is_pax_global_extensions() {
            return Ok(()); // no effect on the tree
        }
        let meta = self.meta(member, &shown)?;
        // A PAX sparse member is stored under a made-up name; its real one is
        // in the records.
        let real_name = meta.sparse.as_ref().and_then(|s| s.name.clone());
        let name = real_name.as_deref().unwrap_or(&member.name);
        let shown = lossy(name);
        let rel = normalize(name).map_err(|why| ArchiveError::unsafe_entry(&shown, why))?;

        // AUFS bookkeeping is never applied, nor anything below it (the
        // entries themselves are whiteout-named and skipped below).
        if below_aufs_meta(&rel) {
            tracing::debug!("skipped {shown:?}: below AUFS bookkeeping");
            return Ok(());
        }

        // Whiteouts first: their names are instructions, not files.
        if let Some((dir, base)) = split(&rel)
            && let Some(target) = base.as_bytes().strip_prefix(WHITEOUT_PREFIX)
        {
            let dir = dir.to_path_buf();
            return self.whiteout(&dir, target, &shown);
        }

        let Some((parent_rel, base)) = split(&rel) else {
            // The root itself: only a directory can describe it.
            if !kind.is_dir() {
                return Err(ArchiveError::unsafe_entry(
                    &shown,
                    "only a directory can stand for the layer's root",
                ));
            }
            self.chown_chattrs_dir(Path::new(""), &meta, &shown)?;
            self.dirs
                .push(DirRecord {
                    rel,
                    mode: Some(meta.mode),
                    times: Timestamps {
                        last_access: meta.atime,
                        last_modification: meta.mtime,
                    },
                })
                .map_err(|e| ArchiveError::entry_io(&shown, "remember a directory", e))?;
            return Ok(());
        };
        let parent_rel = parent_rel.to_path_buf();
        let base = base.to_os_string();
        let cname = name_cstr(&base).map_err(|e| ArchiveError::entry_io(&shown, "name", e))?;
        let parent = self.parent(&parent_rel, &shown)?;

        if kind.is_dir() {
            match rustix::fs::mkdirat(&parent, &cname, Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {
                    let existing = rustix::fs::statat(&parent, &cname, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| ArchiveError::entry_io(&shown, "stat", e.into()))?;
                    if FileType::from_raw_mode(existing.st_mode) != FileType::Directory {
                        self.replace(&parent, &cname, &shown)?;
                        rustix::fs::mkdirat(&parent, &cname, Mode::from_raw_mode(0o700)).map_err(
                            |e| ArchiveError::entry_io(&shown, "create directory", e.into()),
                        )?;
                        if self.options.target == ApplyTarget::OverlayUpper {
                            // What was there (a whiteout or another member of
                            // this layer) hid the lower path; a plain upper
                            // directory would merge with a lower one again.
                            let dir = open_subdir(&parent, &cname).map_err(|e| {
                                ArchiveError::entry_io(&shown, "open directory", e.into())
                            })?;
                            set_opaque(&dir).map_err(|e| {
                                ArchiveError::entry_io(&shown, "mark directory opaque", e.into())
                            })?;
                            self.hidden.insert(&rel).map_err(over_budget(&shown))?;
                        }
                    }
                }
                Err(e) => return Err(ArchiveError::entry_io(&shown, "create directory", e.into())),
            }
            self.chown_chattrs_dir(&rel, &meta, &shown)?;
            self.dirs
                .push(DirRecord {
                    rel: rel.clone(),
                    mode: Some(meta.mode),
                    times: Timestamps {
                        last_access: meta.atime,
                        last_modification: meta.mtime,
                    },
                })
                .map_err(|e| ArchiveError::entry_io(&shown, "remember a directory", e))?;
        } else if let Some(map) = member.gnu_sparse.as_ref() {
            // GNU's old sparse format: the map was in the headers. Data
            // regions only; the map and the data stay in the record.
            let (file, fresh) = self.create_file(&parent, &cname, meta.mode, &shown)?;
            let mut file = std::fs::File::from(file);
            let written =
                self.write_regions(data, &mut file, &map.regions, map.real_size, &shown)?;
            if written != member.size {
                return Err(ArchiveError::entry(
                    &shown,
                    "sparse member: the map does not account for the member's data".into(),
                ));
            }
            set_sparse_len(&file, map.real_size, &shown)?;
            self.size += map.real_size;
            let fd = std::os::fd::OwnedFd::from(file);
            self.set_meta_fd(&fd, &meta, &fresh, &shown)?;
        } else if let Some(info) = meta.sparse.as_ref().filter(|_| kind.is_file()) {
            // Data regions only; the map and the data stay in the record.
            let (file, fresh) = self.create_file(&parent, &cname, meta.mode, &shown)?;
            let mut file = std::fs::File::from(file);
            let real_size = self.copy_pax_sparse(data, member.size, &mut file, info, &shown)?;
            self.size += real_size;
            let fd = std::os::fd::OwnedFd::from(file);
            self.set_meta_fd(&fd, &meta, &fresh, &shown)?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let (file, fresh) = self.create_file(&parent, &cname, meta.mode, &shown)?;
            let mut file = std::fs::File::from(file);
            // A plain file's data is read as payload and left out of the
            // record.
            tap.begin_payload();
            let written = self.copy_data(data, &mut file, &shown);
            tap.end_payload();
            let written = written?;
            if written != member.size {
                return Err(ArchiveError::input(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{shown:?}: the stream ends inside the member's data ({written} of {} bytes)",
                        member.size
                    ),
                )));
            }
            self.size += written;
            let fd = std::os::fd::OwnedFd::from(file);
            self.set_meta_fd(&fd, &meta, &fresh, &shown)?;
        } else if kind.is_symlink() {
            let target = member
                .link
                .clone()
                .ok_or_else(|| ArchiveError::entry(&shown, "a symlink without a target".into()))?;
            let target = std::ffi::CString::new(target)
                .map_err(|_| ArchiveError::entry(&shown, "NUL in symlink target".into()))?;
            self.create_with(&parent, &cname, &shown, |p, n| {
                rustix::fs::symlinkat(target.as_c_str(), p, n)
            })?;
            self.forget_parents();
            self.set_meta_at(&parent, &base, &meta, &shown, false)?;
        } else if kind.is_hard_link() {
            let target = member.link.as_deref().ok_or_else(|| {
                ArchiveError::entry(&shown, "a hard link without a target".into())
            })?;
            let target_rel =
                normalize(target).map_err(|why| ArchiveError::unsafe_entry(&shown, why))?;
            if target_rel.iter().any(is_aufs_meta) {
                // AUFS kept hard-linked files there; nothing of it is applied.
                return Err(ArchiveError::entry(
                    &shown,
                    "a hard link into AUFS bookkeeping (.wh..wh.*), which is never applied".into(),
                ));
            }
            let Some((target_dir, target_base)) = split(&target_rel) else {
                return Err(ArchiveError::unsafe_entry(
                    &shown,
                    "a hard link to the layer's root",
                ));
            };
            let target_parent = self
                .root
                .dir(target_dir)
                .map_err(|e| ArchiveError::entry_io(&shown, "find the hard link's target", e))?;
            let target_name =
                name_cstr(target_base).map_err(|e| ArchiveError::entry_io(&shown, "name", e))?;
            self.create_with(&parent, &cname, &shown, |p, n| {
                rustix::fs::linkat(&target_parent, &target_name, p, n, AtFlags::empty())
            })?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let file_type = if kind.is_character_special() {
                FileType::CharacterDevice
            } else if kind.is_block_special() {
                FileType::BlockDevice
            } else {
                FileType::Fifo
            };
            let header = &member.header;
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            let dev = rustix::fs::makedev(major, minor);
            self.create_with(&parent, &cname, &shown, |p, n| {
                rustix::fs::mknodat(p, n, file_type, Mode::from_raw_mode(0o600), dev)
            })?;
            self.set_meta_at(&parent, &base, &meta, &shown, true)?;
        } else {
            return Err(ArchiveError::entry(
                &shown,
                format!("unsupported member type {:?}", kind),
            ));
        }
        mark_made(&mut self.made, &rel).map_err(over_budget(&shown))?;
        Ok(())
    }

    /// Creates a regular file, replacing what is there.
    /// Creates a regular file with `mode`'s permission bits, replacing what is
    /// there; says who owns it and with what mode.
    fn create_file(
        &mut self,
        parent: &ParentDir,
        name: &std::ffi::CStr,
        mode: u32,
        shown: &str,
    ) -> Result<(OwnedFd, Fresh), ArchiveError> {
        let open = || {
            rustix::fs::openat(
                parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode & 0o777),
            )
        };
        let fd = match open() {
            Ok(fd) => fd,
            Err(rustix::io::Errno::EXIST) => {
                self.replace(parent, name, shown)?;
                open().map_err(|e| ArchiveError::entry_io(shown, "create", e.into()))?
            }
            Err(e) => return Err(ArchiveError::entry_io(shown, "create", e.into())),
        };
        let fresh = Fresh {
            uid: self.euid,
            gid: parent.inherited_gid.unwrap_or(self.egid),
            mode: self.umask.map(|umask| mode & 0o777 & !umask),
        };
        Ok((fd, fresh))
    }

    /// Runs `make`, replacing what is at `name` if it exists.
    fn create_with(
        &mut self,
        parent: &OwnedFd,
        name: &std::ffi::CStr,
        shown: &str,
        make: impl Fn(&OwnedFd, &std::ffi::CStr) -> rustix::io::Result<()>,
    ) -> Result<(), ArchiveError> {
        match make(parent, name) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => {
                self.replace(parent, name, shown)?;
                make(parent, name).map_err(|e| ArchiveError::entry_io(shown, "create", e.into()))
            }
            Err(e) => Err(ArchiveError::entry_io(shown, "create", e.into())),
        }
    }

    /// Removes what is at `name` so a member can take its place.
    fn replace(
        &mut self,
        parent: &OwnedFd,
        name: &std::ffi::CStr,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        self.forget_parents();
        remove_all_at(parent, name).map_err(|e| ArchiveError::entry_io(shown, "replace", e))
    }

    /// Writes a member's data, leaving every all-zero 4 KiB block as a hole:
    /// a sparse member's holes stay holes, and so do the holes of a sparse file
    /// exported densely (as export writes every file). Contents are unchanged.
    fn copy_data(
        &mut self,
        entry: &mut impl Read,
        file: &mut std::fs::File,
        shown: &str,
    ) -> Result<u64, ArchiveError> {
        use std::os::unix::fs::FileExt;
        const BLOCK: usize = 4096;
        let mut written = 0u64;
        let mut ends_in_hole = false;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ArchiveError::input(e)),
            };
            // Runs of blocks with data are written in one call each.
            let chunk = &self.buf[..n];
            let mut run_start: Option<usize> = None;
            for (i, block) in chunk.chunks(BLOCK).enumerate() {
                let hole = block.len() == BLOCK && block.iter().all(|b| *b == 0);
                match (hole, run_start) {
                    (false, None) => run_start = Some(i * BLOCK),
                    (true, Some(start)) => {
                        file.write_all_at(&chunk[start..i * BLOCK], written + start as u64)
                            .map_err(|e| ArchiveError::entry_io(shown, "write", e))?;
                        run_start = None;
                    }
                    _ => {}
                }
                ends_in_hole = hole;
            }
            if let Some(start) = run_start {
                file.write_all_at(&chunk[start..], written + start as u64)
                    .map_err(|e| ArchiveError::entry_io(shown, "write", e))?;
            }
            written += n as u64;
        }
        if ends_in_hole {
            file.set_len(written)
                .map_err(|e| ArchiveError::entry_io(shown, "set length", e))?;
        }
        Ok(written)
    }

    /// Writes a PAX sparse member's data regions at their offsets and sets the
    /// real size; returns it. `size` is the member's data in the stream.
    fn copy_pax_sparse(
        &mut self,
        entry: &mut impl Read,
        size: u64,
        file: &mut std::fs::File,
        info: &PaxSparse,
        shown: &str,
    ) -> Result<u64, ArchiveError> {
        let bad = |why: &str| ArchiveError::entry(shown, format!("sparse member: {why}"));
        // The 1.0 map is read a byte at a time: from a buffer, not from the
        // stream (the reader stops at the member's end all the same).
        let entry = &mut io::BufReader::with_capacity(64 * 1024, entry);
        let mut consumed = 0u64;
        let map = match (&info.map, info.major) {
            (Some(map), _) => map.clone(),
            (None, Some(1)) => {
                // Format 1.0: decimal lines (count, then offset/size pairs)
                // at the front of the data, padded to a 512-byte block.
                let mut map = Vec::new();
                let mut pending_offset = None;
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                let mut wanted = None;
                while wanted.is_none_or(|w| map.len() < w) {
                    entry.read_exact(&mut byte).map_err(ArchiveError::input)?;
                    consumed += 1;
                    if byte[0] == b'\n' {
                        let n = parse_u64(&line).ok_or_else(|| bad("bad number in the map"))?;
                        line.clear();
                        if wanted.is_none() {
                            if n > MAX_SPARSE_REGIONS as u64 {
                                return Err(bad(&format!(
                                    "more than {MAX_SPARSE_REGIONS} regions in its map"
                                )));
                            }
                            wanted = Some(n as usize);
                        } else if let Some(offset) = pending_offset.take() {
                            map.push((offset, n));
                        } else {
                            pending_offset = Some(n);
                        }
                    } else if line.len() > 20 {
                        return Err(bad("bad number in the map"));
                    } else {
                        line.push(byte[0]);
                    }
                }
                let padding = (512 - consumed % 512) % 512;
                io::copy(&mut entry.by_ref().take(padding), &mut io::sink())
                    .map_err(ArchiveError::input)?;
                consumed += padding;
                map
            }
            _ => return Err(bad("an unknown GNU sparse format")),
        };
        let real_size = info.real_size.ok_or_else(|| bad("no real size recorded"))?;
        let written = self.write_regions(entry, file, &map, real_size, shown)?;
        if consumed + written != size {
            return Err(bad("the map does not account for the member's data"));
        }
        set_sparse_len(file, real_size, shown)?;
        Ok(real_size)
    }

    /// Writes a sparse member's data regions, stored one after the other
    /// in `entry`, at their offsets in `file`; returns the bytes written. A
    /// region past `real_size` is refused before anything is written.
    fn write_regions(
        &mut self,
        entry: &mut impl Read,
        file: &mut std::fs::File,
        map: &[(u64, u64)],
        real_size: u64,
        shown: &str,
    ) -> Result<u64, ArchiveError> {
        use std::os::unix::fs::FileExt;
        if map.iter().any(|(offset, length)| {
            offset
                .checked_add(*length)
                .is_none_or(|end| end > real_size)
        }) {
            return Err(ArchiveError::entry(
                shown,
                "sparse member: a region beyond the file's size".into(),
            ));
        }
        let mut written = 0u64;
        for &(offset, length) in map {
            let mut left = length;
            let mut at = offset;
            while left > 0 {
                let want = (left as usize).min(self.buf.len());
                let n = entry
                    .read(&mut self.buf[..want])
                    .map_err(ArchiveError::input)?;
                if n == 0 {
                    return Err(ArchiveError::input(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{shown:?}: the stream ends inside a sparse region"),
                    )));
                }
                file.write_all_at(&self.buf[..n], at)
                    .map_err(|e| ArchiveError::entry_io(shown, "write", e))?;
                at += n as u64;
                left -= n as u64;
                written += n as u64;
            }
        }
        Ok(written)
    }

    fn set_meta_fd(
        &self,
        fd: &OwnedFd,
        meta: &Meta,
        fresh: &Fresh,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        // Owner before mode (chown clears setuid/setgid) and before xattrs
        // (chown clears security.capability). Either call is skipped when the
        // new file already has what the member asks for: most image files are
        // root's, made by root, with a mode the umask leaves alone.
        if (meta.uid, meta.gid) != (fresh.uid, fresh.gid) {
            rustix::fs::fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| ArchiveError::entry_io(shown, "set owner", e.into()))?;
        }
        if fresh.mode != Some(meta.mode) {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| ArchiveError::entry_io(shown, "set mode", e.into()))?;
        }
        for (name, value) in &meta.xattrs {
            rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())
                .map_err(|e| ArchiveError::entry_io(shown, "set xattr", e.into()))?;
        }
        rustix::fs::futimens(
            fd,
            &Timestamps {
                last_access: meta.atime,
                last_modification: meta.mtime,
            },
        )
        .map_err(|e| ArchiveError::entry_io(shown, "set times", e.into()))
    }

    /// Metadata of a symlink or device node, by name in its parent.
    fn set_meta_at(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        shown: &str,
        with_mode: bool,
    ) -> Result<(), ArchiveError> {
        let cname = name_cstr(name).map_err(|e| ArchiveError::entry_io(shown, "name", e))?;
        rustix::fs::chownat(
            parent,
            &cname,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ArchiveError::entry_io(shown, "set owner", e.into()))?;
        if with_mode {
            rustix::fs::chmodat(
                parent,
                &cname,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(|e| ArchiveError::entry_io(shown, "set mode", e.into()))?;
        }
        if !meta.xattrs.is_empty() {
            let path = proc_path(parent, name);
            for (xname, value) in &meta.xattrs {
                rustix::fs::lsetxattr(&path, xname.as_slice(), value, XattrFlags::empty())
                    .map_err(|e| ArchiveError::entry_io(shown, "set xattr", e.into()))?;
            }
        }
        rustix::fs::utimensat(
            parent,
            &cname,
            &Timestamps {
                last_access: meta.atime,
                last_modification: meta.mtime,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ArchiveError::entry_io(shown, "set times", e.into()))
    }

    /// Owner and xattrs of a directory now; its mode and times at the end.
    fn chown_chattrs_dir(&self, rel: &Path, meta: &Meta, shown: &str) -> Result<(), ArchiveError> {
        let fd = self
            .open_dir_rw(rel)
            .map_err(|e| ArchiveError::entry_io(shown, "open directory", e))?;
        rustix::fs::fchown(
            &fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| ArchiveError::entry_io(shown, "set owner", e.into()))?;
        for (name, value) in &meta.xattrs {
            rustix::fs::fsetxattr(&fd, name.as_slice(), value, XattrFlags::empty())
                .map_err(|e| ArchiveError::entry_io(shown, "set xattr", e.into()))?;
        }
        Ok(())
    }

    /// A real (not O_PATH) handle on directory `rel`, not following a final symlink.
    fn open_dir_rw(&self, rel: &Path) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return Ok(rustix::fs::openat(
                self.root.fd(),
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        Ok(rustix::fs::openat2(
            self.root.fd(),
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
        )?)
    }

    fn whiteout(&mut self, dir: &Path, target: &[u8], shown: &str) -> Result<(), ArchiveError> {
        self.forget_parents();
        if target == OPAQUE_MARKER {
            return self.opaque(dir, shown);
        }
        if target.starts_with(WHITEOUT_PREFIX) {
            // AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs, .wh..wh.orph):
            // never applied, nor what is below it (see `is_aufs_meta`).
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
            return Err(ArchiveError::unsafe_entry(
                shown,
                "a whiteout that names no single entry",
            ));
        }
        let target_name = OsStr::from_bytes(target);
        let cname = name_cstr(target_name).map_err(|e| ArchiveError::entry_io(shown, "name", e))?;
        let parent = self.parent(dir, shown)?;
        let rel = dir.join(target_name);
        // A whiteout hides only the lower layers' content (OCI image spec):
        // what this layer already made there stays.
        if self.made.contains(&rel) {
            match rustix::fs::statat(&parent, &cname, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => return self.hide_lower_at(&parent, &cname, &rel, &stat, shown),
                // Gone with a directory above it that a later member replaced.
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    return Err(ArchiveError::entry_io(
                        shown,
                        "stat what the whiteout names",
                        e.into(),
                    ));
                }
            }
        }
        match self.options.target {
            ApplyTarget::Tree => remove_all_at(&parent, &cname)
                .map_err(|e| ArchiveError::entry_io(shown, "delete what the whiteout names", e)),
            ApplyTarget::OverlayUpper => {
                // Whatever is in the upper there is not the layer's own (a
                // copy-up holding other whiteouts): the whiteout takes its place.
                remove_all_at(&parent, &cname)
                    .map_err(|e| ArchiveError::entry_io(shown, "replace", e))?;
                // overlayfs lists a whiteout in a directory that nothing
                // lower merges with as an entry that cannot be opened: one
                // goes only where it hides something.
                if !self
                    .lower_may_have(&rel)
                    .map_err(|e| ArchiveError::entry_io(shown, "look in the lower tree", e))?
                {
                    return Ok(());
                }
                make_whiteout(&parent, &cname)
                    .map_err(|e| ArchiveError::entry_io(shown, "create overlay whiteout", e.into()))
            }
        }
    }

    /// Whether the merged tree could show something of the lower tree at
    /// `rel`: not below a directory that hides the lower one, and, when the
    /// lower tree is given, there.
    fn lower_may_have(&self, rel: &Path) -> io::Result<bool> {
        if self.is_hidden_below(rel) {
            return Ok(false);
        }
        let (Some(lower), Some((dir, name))) = (self.lower, split(rel)) else {
            return Ok(true);
        };
        let dir = match lower.dir(dir) {
            Ok(dir) => dir,
            Err(e) if gone(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, &name_cstr(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Hides what the lower layers have at `rel` (`name` in `parent`, with
    /// `stat`) while keeping what this layer made there.
    fn hide_lower_at(
        &mut self,
        parent: &OwnedFd,
        name: &std::ffi::CStr,
        rel: &Path,
        stat: &rustix::fs::Stat,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            // A non-directory of this layer already replaced (on a full tree)
            // or hides (in an upper) all the lower layers had at its path.
            return Ok(());
        }
        let dir = open_subdir(parent, name)
            .map_err(|e| ArchiveError::entry_io(shown, "open what the whiteout names", e.into()))?;
        match self.options.target {
            ApplyTarget::Tree => remove_lower_entries(&dir, rel, &self.made)
                .map_err(|e| ArchiveError::entry_io(shown, "delete what the whiteout names", e)),
            ApplyTarget::OverlayUpper => {
                self.make_opaque(&dir, rel)
                    .map_err(|e| ArchiveError::entry_io(shown, "mark directory opaque", e))?;
                self.hidden.insert(rel).map_err(over_budget(shown))?;
                Ok(())
            }
        }
    }

    fn opaque(&mut self, dir: &Path, shown: &str) -> Result<(), ArchiveError> {
        let path_fd = self.dir_creating(dir, shown, "open opaque directory")?;
        let stat = rustix::fs::fstat(&path_fd)
            .map_err(|e| ArchiveError::entry_io(shown, "stat opaque directory", e.into()))?;
        self.note_touched(dir, &stat, shown)?;
        // The directory as resolved in the root (through in-root symlinks),
        // opened for reading and xattrs.
        let fd = rustix::fs::openat(
            &path_fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ArchiveError::entry_io(shown, "open opaque directory", e.into()))?;
        match self.options.target {
            ApplyTarget::Tree => remove_lower_entries(&fd, dir, &self.made)
                .map_err(|e| ArchiveError::entry_io(shown, "clear opaque directory", e)),
            ApplyTarget::OverlayUpper => {
                // Compared by inode: a name like `x/..` or a symlink can lead
                // to the root too.
                let root = rustix::fs::fstat(self.root.fd()).map_err(|e| {
                    ArchiveError::entry_io(shown, "stat the layer's root", e.into())
                })?;
                if (stat.st_dev, stat.st_ino) == (root.st_dev, root.st_ino) {
                    // The xattr too, though overlayfs ignores it there: it
                    // says what the layer meant to whoever reads the upper.
                    // What is not the layer's own goes now, as on a full
                    // tree, so that what it makes from here on is new.
                    self.make_opaque(&fd, dir)
                        .map_err(|e| ArchiveError::entry_io(shown, "mark directory opaque", e))?;
                    self.root_opaque.get_or_insert_with(|| shown.to_string());
                    self.hidden
                        .insert(Path::new(""))
                        .map_err(over_budget(shown))?;
                } else {
                    self.make_opaque(&fd, dir)
                        .map_err(|e| ArchiveError::entry_io(shown, "mark directory opaque", e))?;
                    self.hidden.insert(dir).map_err(over_budget(shown))?;
                }
                Ok(())
            }
        }
    }

    /// Marks the upper directory `dir` (at `rel`) opaque, and takes out of
    /// it what is not the layer's own (copy-ups that hold only whiteouts,
    /// and whiteouts): under an opaque directory nothing lower merges, so
    /// overlayfs would show them as they are.
    fn make_opaque(&self, dir: &OwnedFd, rel: &Path) -> io::Result<()> {
        set_opaque(dir)?;
        remove_lower_entries(dir, rel, &self.made)
    }

    /// For an opaque root in an upper: whites out every entry of the lower
    /// root the layer did not make, and makes each directory it did make
    /// there opaque, so nothing of the lower tree shows through the mount.
    /// (Below the marker's root nothing that is not the layer's own is left:
    /// it was taken out then, and none is made after it.)
    fn hide_lower_root(&mut self, shown: &str) -> Result<(), ArchiveError> {
        let Some(lower) = self.lower else {
            // No lower tree given: nothing to hide.
            return Ok(());
        };
        self.forget_parents();
        let failed = |e: io::Error| ArchiveError::entry_io(shown, "hide the lower root", e);
        let lower_root = open_subdir(lower.fd(), c".").map_err(|e| failed(e.into()))?;
        let upper_root = open_subdir(self.root.fd(), c".").map_err(|e| failed(e.into()))?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&lower_root).map_err(|e| failed(e.into()))? {
            let entry = entry.map_err(|e| failed(e.into()))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        for name in names {
            let rel = Path::new(OsStr::from_bytes(name.to_bytes()));
            let upper = match rustix::fs::statat(&upper_root, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => Some(stat),
                Err(rustix::io::Errno::NOENT) => None,
                Err(e) => return Err(failed(e.into())),
            };
            match upper {
                Some(stat) if self.made.contains(rel) => {
                    if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                        let dir = open_subdir(&upper_root, &name).map_err(|e| failed(e.into()))?;
                        set_opaque(&dir).map_err(|e| failed(e.into()))?;
                    }
                }
                Some(stat) if is_whiteout(&stat) => {}
                // Missing (or, defensively, anything else not the layer's).
                _ => {
                    remove_all_at(&upper_root, &name).map_err(failed)?;
                    make_whiteout(&upper_root, &name).map_err(|e| failed(e.into()))?;
                }
            }
        }
        Ok(())
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

/// Gives a sparse member's file its real size (the holes at its end).
fn set_sparse_len(file: &std::fs::File, real_size: u64, shown: &str) -> Result<(), ArchiveError> {
    file.set_len(real_size)
        .map_err(|e| ArchiveError::entry_io(shown, "set length", e))
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

/// Makes the upper directory `dir` hide what the lower layers have below it.
fn set_opaque(dir: &OwnedFd) -> rustix::io::Result<()> {
    rustix::fs::fsetxattr(dir, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
}

/// An overlay whiteout: a 0:0 character device.
fn make_whiteout(dir: &impl std::os::fd::AsFd, name: &std::ffi::CStr) -> rustix::io::Result<()> {
    rustix::fs::mknodat(
        dir,
        name,
        FileType::CharacterDevice,
        Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
}

fn is_whiteout(stat: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice && stat.st_rdev == 0
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

/// Gives the directory `rel` just made in `upper` the owner, mode and xattrs
/// of the same directory in `lower` (only those a layer may set: overlay's
/// bookkeeping and the host's labels left out); returns the lower one's
/// times, or `None` if `lower` has no directory there.
fn copy_dir_meta(lower: &Root, upper: &Root, rel: &Path) -> io::Result<Option<Timestamps>> {
    let lower_dir = match lower.dir(rel) {
        Ok(fd) => fd,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let read = |fd: &OwnedFd| -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    };
    let from = read(&lower_dir)?;
    let to = read(&upper.dir(rel)?)?;
    let stat = rustix::fs::fstat(&from)?;
    rustix::fs::fchown(
        &to,
        Some(Uid::from_raw(stat.st_uid)),
        Some(Gid::from_raw(stat.st_gid)),
    )?;
    rustix::fs::fchmod(&to, Mode::from_raw_mode(stat.st_mode & 0o7777))?;
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::flistxattr(&from, &mut names) {
        Ok(len) => len,
        Err(rustix::io::Errno::RANGE) => {
            names = vec![0u8; 65536];
            rustix::fs::flistxattr(&from, &mut names)?
        }
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => return Err(e.into()),
    };
    let mut value = vec![0u8; 65536];
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        // What a layer could not set itself is not copied up either: the
        // lower tree's overlay bookkeeping and the host's labels stay there.
        if !layer_may_set_xattr(name) {
            continue;
        }
        let n = rustix::fs::fgetxattr(&from, name, &mut value)?;
        rustix::fs::fsetxattr(&to, name, &value[..n], XattrFlags::empty())?;
    }
    Ok(Some(times_of(&stat)))
}

/// Removes from the directory `fd` (at `rel`) everything this layer did not
/// make: what it made stays, and a directory it made (or merged into) keeps
/// only what it made below, since an opaque directory hides all of the lower
/// layers' contents at every depth. (In an upper directory, what the layer
/// did not make is its whiteouts and the copy-ups that hold them.)
fn remove_lower_entries(fd: &OwnedFd, rel: &Path, made: &PathSet) -> io::Result<()> {
    let mut keep_dirs = Vec::new();
    beneath::remove_children(fd, |child| {
        let child_rel = rel.join(OsStr::from_bytes(child.to_bytes()));
        if made.contains(&child_rel) {
            keep_dirs.push((child.to_owned(), child_rel));
            false
        } else {
            true
        }
    })?;
    for (name, child_rel) in keep_dirs {
        let sub = match rustix::fs::openat(
            fd,
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(sub) => sub,
            // Not a directory (or a symlink): kept as it is.
            Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => continue,
            Err(e) => return Err(e.into()),
        };
        remove_lower_entries(&sub, &child_rel, made)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_keep_nanoseconds() {
        let t = parse_pax_time(b"1700000000.123456789").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 123_456_789));
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        assert!(parse_pax_time(b"soon").is_none());
    }

    #[test]
    fn ids_map_through_ranges_or_are_refused() {
        let maps = [IdMap {
            container_id: 0,
            host_id: 100_000,
            size: 65536,
        }];
        assert_eq!(map_id(0, &maps), Some(100_000));
        assert_eq!(map_id(1000, &maps), Some(101_000));
        assert_eq!(map_id(70_000, &maps), None);
        assert_eq!(map_id(70_000, &[]), Some(70_000));
    }
}
