//! The JSON record files the layer, image and container stores keep, and
//! the lookup by id, name or id prefix they share.
//!
//! A record file is read and written only under its store's lock (a flock
//! on `lock` beside it), and written atomically, so a process always sees
//! another's complete change and a crash leaves the old file or the new.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{CoreError, Result};
use crate::fsutil::{FileLock, write_atomic};

/// One store's record file and lock, in a directory of its own.
pub(crate) struct RecordFile {
    dir: PathBuf,
    file: &'static str,
}

impl RecordFile {
    /// The record file `file` in `dir`, making `dir` if missing.
    pub(crate) fn open(dir: PathBuf, file: &'static str) -> Result<RecordFile> {
        fs::create_dir_all(&dir).map_err(|e| CoreError::io("create", &dir, e))?;
        Ok(RecordFile { dir, file })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store's lock: held for every change and for reading.
    pub(crate) fn lock(&self) -> Result<FileLock> {
        let path = self.dir.join("lock");
        FileLock::exclusive(&path).map_err(|e| CoreError::io("lock", path, e))
    }

    fn path(&self) -> PathBuf {
        self.dir.join(self.file)
    }

    /// The records (empty when the file does not exist yet). Call with the
    /// lock held.
    pub(crate) fn load<T: DeserializeOwned + Default>(&self) -> Result<T> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CoreError::io("read", &path, io::Error::new(io::ErrorKind::InvalidData, e))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(CoreError::io("read", path, e)),
        }
    }

    /// The records as they are now, for reading only (takes the lock for the
    /// read).
    pub(crate) fn read<T: DeserializeOwned + Default>(&self) -> Result<T> {
        let _lock = self.lock()?;
        self.load()
    }

    /// Replaces the records atomically. Call with the lock held.
    pub(crate) fn save<T: Serialize>(&self, records: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(records).expect("records serialise");
        let path = self.path();
        write_atomic(&path, &bytes, true).map_err(|e| CoreError::io("write", path, e))
    }
}

/// How a reference matched.
pub(crate) enum Lookup {
    Found(String),
    Missing,
    Ambiguous(Vec<String>),
}

/// Finds the one entry `reference` names among `(id, names)` pairs: its id,
/// one of its names, or a prefix of exactly one id.
pub(crate) fn lookup<'a>(
    entries: impl Iterator<Item = (&'a str, &'a [String])> + Clone,
    reference: &str,
) -> Lookup {
    if reference.is_empty() {
        return Lookup::Missing;
    }
    if let Some((id, _)) = entries.clone().find(|(id, _)| *id == reference) {
        return Lookup::Found(id.to_string());
    }
    if let Some((id, _)) = entries
        .clone()
        .find(|(_, names)| names.iter().any(|n| n == reference))
    {
        return Lookup::Found(id.to_string());
    }
    let matches: Vec<String> = entries
        .filter(|(id, _)| id.starts_with(reference))
        .map(|(id, _)| id.to_string())
        .collect();
    match matches.len() {
        0 => Lookup::Missing,
        1 => Lookup::Found(matches.into_iter().next().expect("one match")),
        _ => Lookup::Ambiguous(matches),
    }
}

/// The id a lookup found, or the error that says why there is none: `kind`
/// is what is looked up ("layer", "image", "container").
pub(crate) fn found(kind: &str, reference: &str, lookup: Lookup) -> Result<String> {
    match lookup {
        Lookup::Found(id) => Ok(id),
        Lookup::Missing => Err(strata_plugin_abi::DriverError::not_found(format!(
            "no {kind} has the id, name or id prefix '{reference}'"
        ))
        .into()),
        Lookup::Ambiguous(many) => Err(strata_plugin_abi::DriverError::invalid_input(format!(
            "'{reference}' is a prefix of {} {kind}s ({}); give more of the id",
            many.len(),
            many.join(", ")
        ))
        .into()),
    }
}

/// Takes `names` away from every other entry (names are unique in a store).
pub(crate) fn take_names<'a>(others: impl Iterator<Item = &'a mut Vec<String>>, names: &[String]) {
    for existing in others {
        existing.retain(|n| !names.contains(n));
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A new random 64-hex-digit id, as container ids are.
pub(crate) fn random_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .map_err(|e| CoreError::io("read random bytes for", "a new id", e.into()))?;
    }
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<(String, Vec<String>)> {
        vec![
            ("abc123".into(), vec!["web".into()]),
            ("abd456".into(), vec![]),
            ("ff0000".into(), vec!["abc".into()]),
        ]
    }

    fn find(reference: &str) -> Lookup {
        let e = entries();
        lookup(e.iter().map(|(i, n)| (i.as_str(), n.as_slice())), reference)
    }

    #[test]
    fn id_then_name_then_unique_prefix() {
        assert!(matches!(find("abd456"), Lookup::Found(id) if id == "abd456"));
        assert!(matches!(find("web"), Lookup::Found(id) if id == "abc123"));
        // A name beats a prefix of another id.
        assert!(matches!(find("abc"), Lookup::Found(id) if id == "ff0000"));
        assert!(matches!(find("abd"), Lookup::Found(id) if id == "abd456"));
        assert!(matches!(find("ab"), Lookup::Ambiguous(m) if m.len() == 2));
        assert!(matches!(find("zz"), Lookup::Missing));
        assert!(matches!(find(""), Lookup::Missing));
    }

    #[test]
    fn random_ids_differ() {
        let a = random_id().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_id().unwrap());
    }
}
