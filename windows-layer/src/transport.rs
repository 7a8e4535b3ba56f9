//! The transport format: the folder `HcsImportLayer` reads a layer from and
//! `HcsExportLayer` writes one to, as Windows' own layer tools lay it out.
//!
//! ```text
//! Files/                      a real directory
//! Files/<path>                a file: its attributes (u32, little-endian),
//!                             then its whole backup stream
//! Files/<dir>/                a real directory, and beside it
//! Files/<dir>.$wcidirs$       the directory's attributes and backup stream
//! Hives/, Hives/<name>        real files: the registry hive deltas
//! tombstones.txt              (export) what the layer deletes under Files/:
//!                             a BOM and "Version 1.0", then one `\path` a line
//! ```
//!
//! A transport file's times are the entry's times (its attributes are the
//! prefix). What the import folder cannot say is applied to the imported
//! layer afterwards ([`ImportPlan`]): whiteouts delete from the layer's
//! `Files/`, hard links are made there. UtilityVM trees (the utility VM of
//! Hyper-V isolation) are refused by this version.
//!
//! Pure file I/O, no Windows API: the tests run on Linux, where only the
//! times Linux can set are kept.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::backup::{BackupStreamReader, StreamHeader, id};
use crate::read::{LayerSink, LayerSummary, read_layer};
use crate::{ATTRIBUTE_DIRECTORY, FileBasicInfo, FormatError, LayerTarWriter, filetime};

/// The suffix of the file that carries a directory's attributes and stream.
pub const DIRECTORY_SUFFIX: &str = ".$wcidirs$";
/// The export's list of deletions.
pub const TOMBSTONES_FILE: &str = "tombstones.txt";
/// The first line of [`TOMBSTONES_FILE`].
const TOMBSTONES_HEADER: &str = "\u{feff}Version 1.0";
/// Files/ entries the export never carries.
const RECYCLE_BIN: &str = "Files/$Recycle.Bin";

/// `root` joined with a slash-separated layer path.
fn at(root: &Path, path: &str) -> PathBuf {
    path.split('/')
        .fold(root.to_path_buf(), |p, part| p.join(part))
}

fn io_error(path: &str, operation: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{operation} {path}: {e}"))
}

/// Sets a transport file's times to the entry's (those the platform lets
/// std set: creation time only on Windows).
fn set_times(file: &fs::File, info: &FileBasicInfo) -> io::Result<()> {
    let time = |filetime: i64| {
        // Whole seconds (down, before 1970), then the nanoseconds up.
        let (secs, nanos) = filetime::to_unix(filetime);
        let whole = std::time::Duration::from_secs(secs.unsigned_abs());
        let base = if secs >= 0 {
            std::time::UNIX_EPOCH + whole
        } else {
            std::time::UNIX_EPOCH - whole
        };
        base + std::time::Duration::from_nanos(u64::from(nanos))
    };
    let mut times = fs::FileTimes::new();
    if info.last_write_time != 0 {
        times = times.set_modified(time(info.last_write_time));
    }
    if info.last_access_time != 0 {
        times = times.set_accessed(time(info.last_access_time));
    }
    #[cfg(windows)]
    if info.creation_time != 0 {
        use std::os::windows::fs::FileTimesExt;
        times = times.set_created(time(info.creation_time));
    }
    file.set_times(times)
}

/// A file's times as FILETIMEs, from its metadata (creation and change
/// times where the platform has them, else the write time).
fn times_of(meta: &fs::Metadata) -> FileBasicInfo {
    let filetime_of = |t: io::Result<std::time::SystemTime>| {
        t.ok()
            .and_then(|t| match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => filetime::from_unix(d.as_secs() as i64, d.subsec_nanos()),
                Err(before) => {
                    // Before 1970: whole seconds down, the rest up.
                    let d = before.duration();
                    let (secs, nanos) = match d.subsec_nanos() {
                        0 => (-(d.as_secs() as i64), 0),
                        n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
                    };
                    filetime::from_unix(secs, nanos)
                }
            })
            .unwrap_or(0)
    };
    let last_write_time = filetime_of(meta.modified());
    FileBasicInfo {
        creation_time: filetime_of(meta.created()).max(0),
        last_access_time: filetime_of(meta.accessed()),
        last_write_time,
        change_time: last_write_time,
        file_attributes: 0,
    }
}

/// What the import folder cannot carry, applied to the imported layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportPlan {
    /// Paths under `Files/` the layer deletes from the layers below.
    pub tombstones: Vec<String>,
    /// Hard links to make: (path, target), both under `Files/`.
    pub hard_links: Vec<(String, String)>,
    /// What the tar held.
    pub summary: LayerSummary,
}

impl ImportPlan {
    /// Applies the plan to the imported layer's folder `layer`: deletes
    /// each tombstone's path (a missing one is already gone) and makes the
    /// hard links.
    pub fn apply_to(&self, layer: &Path) -> io::Result<()> {
        for path in &self.tombstones {
            let target = at(layer, path);
            let removed = match fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_dir() => fs::remove_dir_all(&target),
                Ok(_) => fs::remove_file(&target),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            removed.map_err(|e| io_error(path, "delete the whiteout's", e))?;
        }
        for (path, target) in &self.hard_links {
            fs::hard_link(at(layer, target), at(layer, path))
                .map_err(|e| io_error(path, "make the hard link", e))?;
        }
        Ok(())
    }
}

/// The file being written: a transport file (attributes and stream), or a
/// hive, whose stream is kept aside until its data can be taken out of it.
enum Current {
    Encoded(io::BufWriter<fs::File>, FileBasicInfo),
    Hive {
        stream: fs::File,
        stream_path: PathBuf,
        target: PathBuf,
        info: FileBasicInfo,
    },
}

/// Writes a layer tar's files as an import folder; the sink of
/// [`read_layer`], used through [`write_import_folder`].
struct ImportFolderWriter {
    root: PathBuf,
    current: Option<(String, Current)>,
    /// Files written so far, for hard links' targets.
    files: std::collections::HashSet<String>,
    plan: ImportPlan,
}

impl ImportFolderWriter {
    fn make_parents(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) => fs::create_dir_all(parent),
            None => Ok(()),
        }
    }
}

impl LayerSink for ImportFolderWriter {
    fn whiteout(&mut self, path: &str) -> io::Result<()> {
        if !path.starts_with("Files/") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a whiteout outside Files/ (UtilityVM layers are not supported by this version)",
            ));
        }
        self.plan.tombstones.push(path.to_string());
        Ok(())
    }

    fn hard_link(&mut self, path: &str, target: &str) -> io::Result<()> {
        if !path.starts_with("Files/") || !self.files.contains(target) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "a hard link to {target}, which is not a file of this layer under Files/ \
                     (links into lower layers are not supported by this version)"
                ),
            ));
        }
        self.plan
            .hard_links
            .push((path.to_string(), target.to_string()));
        Ok(())
    }

    fn begin_file(&mut self, path: &str, info: &FileBasicInfo) -> io::Result<()> {
        if path == "UtilityVM" || path.starts_with("UtilityVM/") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "UtilityVM (the utility VM of Hyper-V isolation) is not supported by this version",
            ));
        }
        let target = at(&self.root, path);
        self.make_parents(&target)?;
        let top_level = !path.contains('/');
        if top_level || path.starts_with("Hives/") {
            if info.is_directory() {
                fs::create_dir_all(&target)?;
                self.current = None;
                return Ok(());
            }
            if top_level {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a layer root that is a file, not a directory",
                ));
            }
            let stream_path = target.with_extension("strata-stream");
            let stream = fs::File::create_new(&stream_path)?;
            self.current = Some((
                path.to_string(),
                Current::Hive {
                    stream,
                    stream_path,
                    target,
                    info: *info,
                },
            ));
            return Ok(());
        }
        // Under Files/: a directory is real, with its record beside it.
        let record = if info.is_directory() {
            fs::create_dir_all(&target)?;
            let mut name = target.file_name().unwrap_or_default().to_os_string();
            name.push(DIRECTORY_SUFFIX);
            target.with_file_name(name)
        } else {
            target
        };
        let file = fs::File::create_new(&record)?;
        let mut out = io::BufWriter::new(file);
        out.write_all(&info.file_attributes.to_le_bytes())?;
        self.current = Some((path.to_string(), Current::Encoded(out, *info)));
        if !info.is_directory() {
            self.files.insert(path.to_string());
        }
        Ok(())
    }

    fn stream(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.current {
            Some((_, Current::Encoded(out, _))) => out.write_all(bytes),
            Some((_, Current::Hive { stream, .. })) => stream.write_all(bytes),
            // A layer root directory's stream (its security, say): the
            // root is a plain directory in the folder.
            None => Ok(()),
        }
    }

    fn end_file(&mut self) -> io::Result<()> {
        match self.current.take() {
            None => Ok(()),
            Some((_, Current::Encoded(out, info))) => {
                let file = out.into_inner().map_err(|e| e.into_error())?;
                // Set once everything is written, so they stay the entry's.
                set_times(&file, &info)
            }
            Some((
                path,
                Current::Hive {
                    mut stream,
                    stream_path,
                    target,
                    info,
                },
            )) => {
                // A hive is a real file: its data stream, nothing else
                // (Windows' tools restore hives without security too).
                stream.seek(SeekFrom::Start(0))?;
                let mut reader = BackupStreamReader::new(io::BufReader::new(stream));
                let mut file = fs::File::create_new(&target)?;
                while let Some(header) = reader.next_header()? {
                    if header.id == id::DATA {
                        io::copy(&mut reader, &mut file)?;
                    } else if header.id == id::SPARSE_BLOCK {
                        return Err(io_error(
                            &path,
                            "write",
                            io::Error::new(io::ErrorKind::Unsupported, "a sparse hive"),
                        ));
                    }
                }
                set_times(&file, &info)?;
                drop(reader);
                fs::remove_file(&stream_path)
            }
        }
    }
}

/// Reads the layer tar `tar` into the import folder `root` (empty or
/// missing): what `HcsImportLayer` takes. The plan returned is applied to
/// the layer once it is imported. On error the folder is partial: the
/// caller deletes it.
pub fn write_import_folder(tar: impl Read, root: &Path) -> Result<ImportPlan, FormatError> {
    fs::create_dir_all(root).map_err(|source| FormatError::Io {
        operation: "create the import folder",
        source,
    })?;
    let mut writer = ImportFolderWriter {
        root: root.to_path_buf(),
        current: None,
        files: Default::default(),
        plan: ImportPlan::default(),
    };
    let summary = read_layer(tar, &mut writer)?;
    let mut plan = writer.plan;
    plan.summary = summary;
    Ok(plan)
}

/// The tombstones an export lists, each as a layer path (`Files/...`).
fn read_tombstones(folder: &Path) -> Result<Vec<String>, FormatError> {
    let path = folder.join(TOMBSTONES_FILE);
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(FormatError::Io {
                operation: "read the export's tombstones",
                source,
            });
        }
    };
    let bad = |why: &str| FormatError::malformed(TOMBSTONES_FILE, why);
    // Bounded: a line longer than a path can be is not one.
    let mut lines = io::BufReader::new(file.take(64 << 20)).lines();
    match lines.next() {
        Some(Ok(first)) if first.trim_end_matches('\r') == TOMBSTONES_HEADER => {}
        _ => return Err(bad("does not start with a BOM and \"Version 1.0\"")),
    }
    let mut tombstones = Vec::new();
    for line in lines {
        let line = line.map_err(|e| bad(&format!("not text: {e}")))?;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let Some(rest) = line.strip_prefix('\\') else {
            return Err(bad("a line that does not start with a backslash"));
        };
        tombstones.push(format!("Files/{}", rest.replace('\\', "/")));
    }
    Ok(tombstones)
}

/// The size of a file's data as its backup stream gives it: the data
/// stream's, or for a sparse one the end of its last block.
fn data_size(backup: impl Read) -> io::Result<u64> {
    let mut reader = BackupStreamReader::new(backup);
    let mut size = 0u64;
    let mut sparse_end = 0u64;
    while let Some(header) = reader.next_header()? {
        if header.id == id::DATA {
            size = header.size;
        } else if header.id == id::SPARSE_BLOCK {
            let offset = u64::try_from(header.offset).unwrap_or(0);
            sparse_end = sparse_end.max(offset.saturating_add(header.size));
        }
    }
    Ok(size.max(sparse_end))
}

/// One entry of an export folder, in tar order.
enum Entry {
    /// A transport file (attributes and stream) for the layer path.
    Encoded { record: PathBuf, is_dir: bool },
    /// A real file or directory (a layer root, a hive).
    Real { file: PathBuf, is_dir: bool },
}

/// The export folder's entries by layer path: sorted, so every directory
/// comes before what it holds.
fn entries(folder: &Path) -> Result<BTreeMap<String, Entry>, FormatError> {
    let walk_error = |source| FormatError::Io {
        operation: "read the export folder",
        source,
    };
    let mut found = BTreeMap::new();
    let mut dirs = vec![(folder.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(walk_error)? {
            let entry = entry.map_err(walk_error)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                return Err(FormatError::malformed(
                    &entry.path().display().to_string(),
                    "a name that is not Unicode",
                ));
            };
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let is_dir = entry.file_type().map_err(walk_error)?.is_dir();
            if prefix.is_empty() && !crate::WINDOWS_LAYER_ROOTS.contains(&name.as_str()) {
                continue; // tombstones.txt, and anything not a layer's
            }
            if path == RECYCLE_BIN || path.starts_with(&format!("{RECYCLE_BIN}/")) {
                continue;
            }
            if path.starts_with("Files/") {
                if let Some(dir_path) = path.strip_suffix(DIRECTORY_SUFFIX) {
                    found.insert(
                        dir_path.to_string(),
                        Entry::Encoded {
                            record: entry.path(),
                            is_dir: true,
                        },
                    );
                } else if !is_dir {
                    found.insert(
                        path.clone(),
                        Entry::Encoded {
                            record: entry.path(),
                            is_dir: false,
                        },
                    );
                } else {
                    // Its record, if any, replaces this.
                    found.entry(path.clone()).or_insert(Entry::Real {
                        file: entry.path(),
                        is_dir: true,
                    });
                }
            } else {
                found.insert(
                    path.clone(),
                    Entry::Real {
                        file: entry.path(),
                        is_dir,
                    },
                );
            }
            if is_dir {
                dirs.push((entry.path(), path));
            }
        }
    }
    Ok(found)
}

/// Writes the export folder `folder` (what `HcsExportLayer` made) as a
/// layer tar to `out`: every entry of `Files/` from its transport file, the
/// layer roots and hives from the real files, each tombstone as a whiteout
/// right after its directory.
pub fn write_tar_from_export_folder(folder: &Path, out: impl Write) -> Result<(), FormatError> {
    let mut tombstones: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for tombstone in read_tombstones(folder)? {
        let parent = tombstone
            .rsplit_once('/')
            .map_or(String::new(), |(p, _)| p.to_string());
        tombstones.entry(parent).or_default().push(tombstone);
    }
    let mut tar = LayerTarWriter::new(out);
    let file_error = |path: &str, e: io::Error| FormatError::malformed(path, e.to_string());
    for (path, entry) in entries(folder)? {
        match entry {
            Entry::Encoded { record, is_dir } => {
                let mut file = fs::File::open(&record).map_err(|e| file_error(&path, e))?;
                let meta = file.metadata().map_err(|e| file_error(&path, e))?;
                let mut attributes = [0u8; 4];
                file.read_exact(&mut attributes)
                    .map_err(|e| file_error(&path, e))?;
                let mut info = times_of(&meta);
                info.file_attributes = u32::from_le_bytes(attributes);
                if is_dir {
                    info.file_attributes |= ATTRIBUTE_DIRECTORY;
                }
                let size = if is_dir {
                    0
                } else {
                    let size = data_size(io::BufReader::new(&mut file))
                        .map_err(|e| file_error(&path, e))?;
                    file.seek(SeekFrom::Start(4))
                        .map_err(|e| file_error(&path, e))?;
                    size
                };
                tar.file(&path, size, &info, io::BufReader::new(file))?;
            }
            Entry::Real { file, is_dir } => {
                let meta = fs::metadata(&file).map_err(|e| file_error(&path, e))?;
                let mut info = times_of(&meta);
                if is_dir {
                    info.file_attributes = ATTRIBUTE_DIRECTORY;
                    tar.file(&path, 0, &info, io::empty())?;
                } else {
                    // FILE_ATTRIBUTE_ARCHIVE, as Windows gives a hive.
                    info.file_attributes = 0x20;
                    let data = fs::File::open(&file).map_err(|e| file_error(&path, e))?;
                    let header_bytes = StreamHeader::new(id::DATA, meta.len()).to_bytes();
                    tar.file(
                        &path,
                        meta.len(),
                        &info,
                        io::Cursor::new(header_bytes).chain(data),
                    )?;
                }
            }
        }
        if let Some(deleted) = tombstones.remove(&path) {
            for tombstone in deleted {
                tar.whiteout(&tombstone)?;
            }
        }
    }
    if let Some((parent, _)) = tombstones.into_iter().next() {
        return Err(FormatError::malformed(
            TOMBSTONES_FILE,
            format!("a tombstone in {parent}, which the export does not hold"),
        ));
    }
    tar.finish()?;
    Ok(())
}
