//! Tar-split storage: the record, per layer made from a diff, from which the
//! exact original stream is rebuilt, as a gzip'd file in
//! `<graphroot>/<driver>-layers/<id>.tar-split.gz`.

use std::fs;
use std::path::{Path, PathBuf};

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

    /// Where layer `id`'s record is once whole.
    pub(crate) fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.tar-split.gz"))
    }

    /// Where a layer's tar-split record is written until it is whole.
    pub(crate) fn partial_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!(".{id}.tar-split.gz.partial"))
    }

    /// Removes layer `id`'s record, whole or partial, if there is one.
    pub(crate) fn remove(&self, id: &str) {
        let _ = fs::remove_file(self.path(id));
        let _ = fs::remove_file(self.partial_path(id));
    }
}
