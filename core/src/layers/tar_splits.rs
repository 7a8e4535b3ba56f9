//! Tar-split storage: the record, per layer made from a diff, from which the
//! exact original stream is rebuilt, kept zstd-compressed in
//! `<graphroot>/<driver>-layers/<id>.tar-split.zst`. Records written by
//! strata before 0.2 are gzip'd (`<id>.tar-split.gz`) and still read.
//!
//! zstd, not gzip: for a layer of many small files the record (headers,
//! base64'd, as JSON lines) is most of a tar's size again, and compressing
//! it with deflate took a third of an import's spare CPU.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// The compression level of new records: zstd's fastest useful one.
const LEVEL: i32 = 1;

/// The suffixes of a record's files, current first.
const SUFFIXES: [&str; 2] = [".tar-split.zst", ".tar-split.gz"];

/// The tar-split records of one graph root and driver.
pub(crate) struct TarSplits {
    dir: PathBuf,
}

impl TarSplits {
    pub(crate) fn new(dir: PathBuf) -> TarSplits {
        TarSplits { dir }
    }

    /// The directory the records are in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a new record of layer `id` goes once whole.
    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{}", SUFFIXES[0]))
    }

    /// Where layer `id`'s record is, whichever format it was written in.
    pub(crate) fn existing(&self, id: &str) -> Option<PathBuf> {
        SUFFIXES
            .iter()
            .map(|suffix| self.dir.join(format!("{id}{suffix}")))
            .find(|path| path.exists())
    }

    /// Where a layer's tar-split record is written until it is whole.
    fn partial_path(&self, id: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!(".{id}{suffix}.partial"))
    }

    /// The layer id a record file in [`dir`](Self::dir) is of, and whether
    /// it is a partial one; `None` for any other file.
    pub(crate) fn layer_of(name: &str) -> Option<(&str, bool)> {
        SUFFIXES.iter().find_map(|suffix| {
            if let Some(partial) = name.strip_prefix('.') {
                let id = partial.strip_suffix(".partial")?.strip_suffix(suffix)?;
                return Some((id, true));
            }
            name.strip_suffix(suffix).map(|id| (id, false))
        })
    }

    /// Writes layer `id`'s record: `fill` writes it, uncompressed, into the
    /// partial file; once whole it is synced and renamed into place, so a
    /// record is either whole or absent (a kill leaves only a partial file,
    /// which the next collector of the layer or `check --repair` removes).
    pub(crate) fn write<T>(
        &self,
        id: &str,
        fill: impl FnOnce(&mut (dyn Write + Send)) -> Result<T>,
    ) -> Result<T> {
        let path = self.path(id);
        let partial = self.partial_path(id, SUFFIXES[0]);
        let failed = |e: io::Error| CoreError::io("write", path.clone(), e);
        let file = fs::File::create(&partial).map_err(|e| CoreError::io("create", &partial, e))?;
        let mut encoder = zstd::Encoder::new(io::BufWriter::with_capacity(1 << 20, file), LEVEL)
            .map_err(failed)?;
        let filled = match fill(&mut encoder) {
            Ok(filled) => filled,
            Err(e) => {
                let _ = fs::remove_file(&partial);
                return Err(e);
            }
        };
        // Synced before it is renamed into place, and the rename synced
        // before the caller records the layer made, so a crash never leaves
        // a made layer whose record is missing or partial.
        let finished = encoder
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .and_then(|()| fs::rename(&partial, &path))
            .and_then(|()| fs::File::open(&self.dir)?.sync_all());
        if let Err(e) = finished {
            let _ = fs::remove_file(&partial);
            return Err(failed(e));
        }
        // A record of an older format for the same layer is stale now.
        for suffix in &SUFFIXES[1..] {
            let _ = fs::remove_file(self.dir.join(format!("{id}{suffix}")));
        }
        Ok(filled)
    }

    /// Layer `id`'s record, uncompressed, if it has one.
    pub(crate) fn open(&self, id: &str) -> io::Result<Option<Box<dyn BufRead>>> {
        let Some(path) = self.existing(id) else {
            return Ok(None);
        };
        let file = fs::File::open(&path)?;
        let reader: Box<dyn BufRead> = if path.to_string_lossy().ends_with(".gz") {
            Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::GzDecoder::new(file),
            ))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, zstd::Decoder::new(file)?))
        };
        Ok(Some(reader))
    }

    /// Removes layer `id`'s record, whole or partial, in any format.
    pub(crate) fn remove(&self, id: &str) {
        for suffix in SUFFIXES {
            let _ = fs::remove_file(self.dir.join(format!("{id}{suffix}")));
            let _ = fs::remove_file(self.partial_path(id, suffix));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_files_name_their_layer() {
        assert_eq!(
            TarSplits::layer_of("abc.tar-split.zst"),
            Some(("abc", false))
        );
        assert_eq!(
            TarSplits::layer_of("abc.tar-split.gz"),
            Some(("abc", false))
        );
        assert_eq!(
            TarSplits::layer_of(".abc.tar-split.zst.partial"),
            Some(("abc", true))
        );
        assert_eq!(
            TarSplits::layer_of(".abc.tar-split.gz.partial"),
            Some(("abc", true))
        );
        assert_eq!(TarSplits::layer_of("abc.making"), None);
        assert_eq!(TarSplits::layer_of(".abc"), None);
    }
}
