//! Diffs: applying a layer stream to a layer, and a layer's changes and
//! diff against its parent (the exact original stream where there is one).

use super::*;

impl LayerStore<'_> {
    /// Applies `diff` to the existing layer `id` and records it as the layer's
    /// diff.
    pub fn apply(&self, id: &LayerId, diff: &mut dyn Read) -> Result<DiffRecord> {
        let driver = self.driver();
        if !driver.exists(id)? {
            return Err(not_found(format!("apply to layer {id}: no such layer")));
        }
        let record = self.get(id)?;
        // A read-only layer is an image's: writing it would change every
        // image on it (`Store::apply_to_layer` names them).
        if record.as_ref().is_some_and(|r| r.read_only) {
            return Err(CoreError::InvalidInput(format!(
                "apply to layer {id}: the layer is read-only"
            )));
        }
        // The record rebuilds the stream applied; it is the layer's diff only
        // if the layer had no changes of its own before (an earlier diff, a
        // container's writes). Otherwise `diff` must generate.
        let pristine = self.diff_method == DiffMethod::DriverStream
            || record.as_ref().is_none_or(|r| r.diff.is_none())
                && self
                    .changes(id)?
                    .iter()
                    .all(|change| change.path.as_os_str().is_empty());
        let parent = record.and_then(|r| r.parent);
        let applied = self.apply_into(id, parent.as_deref(), diff, false, true)?;
        if !pristine {
            self.tar_splits.remove(id);
        }
        let diff = serde_json::to_string(&applied).expect("diff serialises");
        self.db.write(&format!("apply to layer {id}"), |tx| {
            // A layer made before records were kept gets one now.
            tx.prepare_cached(
                "INSERT OR IGNORE INTO layers (id, created, state, read_only) VALUES (?1, ?2, 0, 0)",
            )?
            .execute(params![id, now() as i64])?;
            tx.prepare_cached("UPDATE layers SET diff = ?1 WHERE id = ?2")?
                .execute(params![diff, id])?;
            Ok(())
        })?;
        Ok(applied)
    }

    pub(super) fn apply_into(
        &self,
        id: &str,
        parent: Option<&str>,
        diff: &mut dyn Read,
        verified: bool,
        writable: bool,
    ) -> Result<DiffRecord> {
        let driver = self.driver();
        if self.diff_method == DiffMethod::DriverStream {
            return self.apply_driver_stream(id, parent, diff);
        }
        let files = LayerFiles::open(driver, &self.counts, self.native_dir(id)?, id, true)?;
        // Into a native diff, directories written into take their metadata
        // from the tree below: the parent, mounted for the length of the apply.
        let parent = match (&files, parent) {
            (LayerFiles::Native(..), Some(parent)) => {
                match mount_counted(driver, &self.counts, parent) {
                    Ok(path) => Some((parent, path)),
                    Err(e) => {
                        let _ = files.close();
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let lower = parent.as_ref().map(|(_, path)| path.as_path());
        let result = self.apply_at(files.path(), files.target(), lower, verified, id, diff);
        if let Some((parent, _)) = &parent
            && let Err(e) = unmount_counted(driver, &self.counts, parent)
        {
            tracing::warn!(layer = %parent, error = %e, "could not unmount the parent after an apply");
        }
        let closed = files.close();
        let report = result?;
        closed?;
        if writable {
            self.settle_after_record(id);
        }
        Ok(report)
    }

    /// Hands the stream to a driver that owns its layer format, measured on
    /// the way in (no tar-split record: the driver's `diff` is the layer's).
    fn apply_driver_stream(
        &self,
        id: &str,
        parent: Option<&str>,
        diff: &mut dyn Read,
    ) -> Result<DiffRecord> {
        let driver = self.driver();
        let fed = archive::feed_measured(diff, |tar| driver.apply_diff(id, parent, tar));
        let (size, measured) = fed.map_err(|e| match e {
            archive::FeedError::Input(e) => CoreError::Archive {
                layer: id.to_string(),
                source: archive::ArchiveError::Input(e),
            },
            archive::FeedError::Consumer(e) => {
                CoreError::Driver(e.context(format!("apply a diff to layer {id}")))
            }
        })?;
        Ok(DiffRecord {
            compressed_digest: measured.compressed_digest.into(),
            compressed_size: measured.compressed_size,
            uncompressed_digest: measured.uncompressed_digest.into(),
            uncompressed_size: measured.uncompressed_size,
            compression: measured.compression.to_string(),
            size,
        })
    }

    pub(super) fn apply_at(
        &self,
        root: &Path,
        target: ApplyTarget,
        lower: Option<&Path>,
        verified: bool,
        id: &str,
        diff: &mut dyn Read,
    ) -> Result<DiffRecord> {
        let report = self.tar_splits.write(id, |record| {
            archive::apply_layer(
                root,
                diff,
                &ApplyOptions {
                    target,
                    lower: lower.map(Path::to_path_buf),
                    require_end_of_archive: !verified,
                    ..Default::default()
                },
                Some(record),
            )
            .map_err(|e| CoreError::Archive {
                layer: id.to_string(),
                source: e,
            })
        })?;
        Ok(DiffRecord {
            compressed_digest: report.compressed_digest.into(),
            compressed_size: report.compressed_size,
            uncompressed_digest: report.uncompressed_digest.into(),
            uncompressed_size: report.uncompressed_size,
            compression: report.compression.to_string(),
            size: report.size,
        })
    }

    /// The layer's changes against its parent.
    pub fn changes(&self, id: &LayerId) -> Result<Vec<Change>> {
        let driver = self.driver();
        let parent = self.get(id)?.and_then(|r| r.parent);
        // A driver that owns its format: the members of its own stream (the
        // parent is mounted only to tell added from modified).
        if self.diff_method == DiffMethod::DriverStream {
            let stream = driver.diff(id, parent.as_deref())?;
            return self.with_parent_mounted(parent.as_deref(), |lower| {
                archive::stream_changes(stream, lower).map_err(|e| CoreError::Archive {
                    layer: id.to_string(),
                    source: archive::ArchiveError::Input(e),
                })
            });
        }
        // A native diff holds exactly the changes: read it instead of
        // comparing whole trees (the parent is mounted only to tell added
        // from modified).
        if let Some((native, format)) = self.native_dir(id)? {
            return self.with_parent_mounted(parent.as_deref(), |lower| {
                archive::diff_dir_changes(&native, lower, format)
                    .map_err(|e| CoreError::io("read the changes in", native.clone(), e))
            });
        }
        with_trees(
            driver,
            &self.counts,
            id,
            parent.as_deref(),
            |layer, parent| {
                archive::changes(layer, parent).map_err(|e| CoreError::io("compare", layer, e))
            },
        )
    }

    /// Writes the layer's diff against its parent to `out`. A layer made from a
    /// diff gives back that diff's exact bytes (uncompressed) from its
    /// tar-split record; otherwise, or if its files changed since, the diff is
    /// generated from the trees.
    pub fn diff(&self, id: &LayerId, out: &mut dyn Write) -> Result<DiffSource> {
        let driver = self.driver();
        let record = self.get(id)?;
        let parent = record.as_ref().and_then(|r| r.parent.clone());
        if self.diff_method == DiffMethod::DriverStream {
            let mut stream = driver.diff(id, parent.as_deref())?;
            io::copy(&mut stream, out)
                .map_err(|e| CoreError::io("write the diff of", PathBuf::from(id.as_str()), e))?;
            return Ok(DiffSource::Driver);
        }
        let split_path = self.tar_splits.existing(id);
        if let Some(split_path) =
            split_path.filter(|_| record.as_ref().is_some_and(|r| r.diff.is_some()))
        {
            let files = LayerFiles::open(driver, &self.counts, self.native_dir(id)?, id, false)?;
            let root = files.path().to_path_buf();
            let rebuild = |out: &mut dyn Write| {
                let record = self.tar_splits.open(id)?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the tar-split record went away")
                })?;
                archive::tarsplit::reassemble(record, &root, out)
            };
            // A read-only layer's files cannot have changed since apply. A
            // writable one's may have; they have not if nothing in its tree
            // changed status after its tar-split record was written (a
            // changed file, xattr or mode changes the file's ctime, and an
            // entry added, removed or renamed its directory's). Either way
            // the stream goes straight out, and a failure part way (a file
            // written while it is read) is an error, not a reason to fall
            // back: `out` has part of a stream by then. A walk that cannot
            // finish (a file deleted under it) counts as a change.
            let unchanged = record.as_ref().is_some_and(|r| r.read_only)
                || fs::metadata(&split_path)
                    .and_then(|m| m.modified())
                    .and_then(|written| changed_after(files.path(), written))
                    .is_ok_and(|changed| !changed);
            if unchanged {
                let rebuilt = rebuild(out);
                let _ = files.close();
                return rebuilt.map(|_| DiffSource::Original).map_err(|e| {
                    CoreError::io(
                        "rebuild the original diff of",
                        PathBuf::from(id.as_str()),
                        e,
                    )
                });
            }
            let _ = files.close();
            tracing::info!(
                layer = %id,
                "the layer changed since it was made from its diff; generating its diff"
            );
        }
        // Generated from the same changes `changes` gives, exported from the
        // tree they describe (the native diff directory, or the mounted layer).
        let mut export = |root: &Path, list: &[Change]| {
            archive::export_changes(root, list, &mut *out)
                .map(|_| DiffSource::Generated)
                .map_err(|e| CoreError::io("export", root, e))
        };
        if let Some((native, _)) = self.native_dir(id)? {
            let list = self.changes(id)?;
            return export(&native, &list);
        }
        with_trees(
            driver,
            &self.counts,
            id,
            parent.as_deref(),
            |layer, parent| {
                let list = archive::changes(layer, parent)
                    .map_err(|e| CoreError::io("compare", layer, e))?;
                export(layer, &list)
            },
        )
    }

    /// Writes the diff that turns layer `from` (or an empty tree, for `None`)
    /// into layer `to`. Against `to`'s own parent this is [`diff`](Self::diff),
    /// the original bytes when there are any; against anything else it is
    /// generated by comparing the two trees.
    pub fn diff_between(
        &self,
        from: Option<&LayerId>,
        to: &LayerId,
        out: &mut dyn Write,
    ) -> Result<DiffSource> {
        let driver = self.driver();
        let parent = self.get(to)?.and_then(|r| r.parent);
        if from == parent.as_ref() {
            return self.diff(to, out);
        }
        if self.diff_method == DiffMethod::DriverStream {
            return Err(CoreError::Unsupported(format!(
                "diff of layer {to} from {}: driver '{}' owns its layer format and gives only a \
                 layer's diff against its parent",
                from.map_or("an empty tree", LayerId::as_str),
                driver.name()
            )));
        }
        with_trees(
            driver,
            &self.counts,
            to,
            from.map(LayerId::as_str),
            |layer, base| {
                let list = archive::changes(layer, base)
                    .map_err(|e| CoreError::io("compare", layer, e))?;
                archive::export_changes(layer, &list, &mut *out)
                    .map(|_| DiffSource::Generated)
                    .map_err(|e| CoreError::io("export", layer, e))
            },
        )
    }

    /// The size in bytes of the layer's diff against its parent, as
    /// [`diff`](Self::diff) would write it.
    pub fn diff_size(&self, id: &LayerId) -> Result<u64> {
        if self.diff_method == DiffMethod::DriverStream {
            let parent = self.get(id)?.and_then(|r| r.parent);
            return Ok(self.driver().diff_size(id, parent.as_deref())?);
        }
        if let Some(diff) = self.get(id)?.and_then(|r| r.diff)
            && self.tar_splits.existing(id).is_some()
        {
            return Ok(diff.uncompressed_size);
        }
        let mut counter = CountingSink(0);
        self.diff(id, &mut counter)?;
        Ok(counter.0)
    }
}

/// Where a layer's own files are written and read by the layer format: its
/// native diff directory when the driver keeps one (in overlay's whiteout
/// convention, no mount needed, and a read-only layer can still be filled),
/// otherwise its mounted tree.
pub(super) enum LayerFiles<'d> {
    Native(PathBuf, archive::WhiteoutFormat),
    Mounted {
        driver: &'d dyn GraphDriver,
        counts: &'d MountCounts,
        id: String,
        path: PathBuf,
    },
}

impl<'d> LayerFiles<'d> {
    /// The layer's native diff directory if `native` names one, otherwise
    /// its tree, mounted (counted) until [`close`](Self::close); `to_fill`
    /// when the files are to be written (see `mount_to_fill`).
    pub(super) fn open(
        driver: &'d dyn GraphDriver,
        counts: &'d MountCounts,
        native: Option<(PathBuf, archive::WhiteoutFormat)>,
        id: &str,
        to_fill: bool,
    ) -> Result<Self> {
        if let Some((native, format)) = native {
            return Ok(LayerFiles::Native(native, format));
        }
        let path = if to_fill {
            mount_to_fill(driver, counts, id)?
        } else {
            mount_counted(driver, counts, id)?
        };
        Ok(LayerFiles::Mounted {
            driver,
            counts,
            id: id.to_string(),
            path,
        })
    }

    pub(super) fn path(&self) -> &Path {
        match self {
            LayerFiles::Native(path, _) | LayerFiles::Mounted { path, .. } => path,
        }
    }

    pub(super) fn target(&self) -> ApplyTarget {
        match self {
            LayerFiles::Native(_, format) => ApplyTarget::Diff(*format),
            LayerFiles::Mounted { .. } => ApplyTarget::Tree,
        }
    }

    pub(super) fn close(self) -> Result<()> {
        match self {
            LayerFiles::Native(..) => Ok(()),
            LayerFiles::Mounted {
                driver, counts, id, ..
            } => unmount_counted(driver, counts, &id),
        }
    }
}

impl LayerStore<'_> {
    /// Runs `f` with the layer's parent mounted (counted) if it has one: a
    /// layer's own changes are read apart from it, and the parent only tells
    /// added from modified.
    fn with_parent_mounted<T>(
        &self,
        parent: Option<&str>,
        f: impl FnOnce(Option<&Path>) -> Result<T>,
    ) -> Result<T> {
        let Some(parent) = parent else {
            return f(None);
        };
        let driver = self.driver();
        let lower = mount_counted(driver, &self.counts, parent)?;
        let found = f(Some(&lower));
        let unmounted = unmount_counted(driver, &self.counts, parent);
        let found = found?;
        unmounted?;
        Ok(found)
    }

    /// Returns once the filesystem clock has moved past the moment layer
    /// `id`'s tar-split record was written (at most one clock tick, a few
    /// milliseconds): whatever changes in the layer after this call gets a
    /// later ctime than the record, so `diff` can tell a changed writable
    /// layer from an untouched one. File times come from a coarse clock;
    /// without this, a change in the same tick would look like none.
    #[cfg(unix)]
    fn settle_after_record(&self, id: &str) {
        let Some(Ok(written)) = self
            .tar_splits
            .existing(id)
            .map(|path| fs::metadata(path).and_then(|m| m.modified()))
        else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
        loop {
            let coarse = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
            let now = std::time::UNIX_EPOCH
                + std::time::Duration::new(coarse.tv_sec as u64, coarse.tv_nsec as u32);
            if now > written || std::time::Instant::now() > deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    }

    /// Elsewhere no layer has a tar-split record (only drivers that own
    /// their format work there), so nothing waits.
    #[cfg(not(unix))]
    fn settle_after_record(&self, _id: &str) {}
}

/// Whether anything in the tree at `root` (not crossing into other mounts)
/// changed status (its ctime) after `reference`. Stops at the first one.
#[cfg(unix)]
fn changed_after(root: &Path, reference: std::time::SystemTime) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let since_epoch = reference
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let reference = (
        since_epoch.as_secs() as i64,
        since_epoch.subsec_nanos() as i64,
    );
    let newer = |meta: &fs::Metadata| (meta.ctime(), meta.ctime_nsec()) > reference;
    let top = fs::symlink_metadata(root)?;
    if newer(&top) {
        return Ok(true);
    }
    let device = top.dev();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if newer(&meta) {
                return Ok(true);
            }
            if meta.is_dir() && meta.dev() == device {
                dirs.push(entry.path());
            }
        }
    }
    Ok(false)
}

/// Elsewhere a tree has no ctime to ask; no layer there has a tar-split
/// record to compare with anyway (only drivers that own their format work).
#[cfg(not(unix))]
fn changed_after(_root: &Path, _reference: std::time::SystemTime) -> io::Result<bool> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "telling whether a layer's tree changed works only on Linux",
    ))
}

pub(super) struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a diff's bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffSource {
    /// The exact stream the layer was made from.
    Original,
    /// Generated by comparing the layer with its parent.
    Generated,
    /// The driver's own stream (a driver that owns its layer format).
    Driver,
}
