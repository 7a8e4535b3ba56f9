//! How a containerd snapshot is kept in a strata store: as one layer whose
//! name is the snapshot's key (behind a prefix, so it can never be taken for
//! a layer id or collide with names strata's own users give) and whose flag
//! [`FLAG`] holds what containerd asks of a snapshot beyond the layer: its
//! kind, labels and times.
//!
//! Keeping it all in the layer's own row means every change of a snapshot
//! is one transaction of the store's database, together with the layer it
//! describes: a kill never leaves a snapshot without its layer, nor the
//! reverse (see `service` for each operation's steps).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_snapshots::{Info, Kind};
use serde::{Deserialize, Serialize};
use strata_core::layers::LayerRecord;

/// The layer flag holding a snapshot's facts.
pub const FLAG: &str = "containerd.snapshot";

/// What a snapshot key or committed name becomes as a layer name.
pub const NAME_PREFIX: &str = "containerd-snapshot:";

/// The layer name of snapshot `key`.
pub fn layer_name(key: &str) -> String {
    format!("{NAME_PREFIX}{key}")
}

/// What the layer's owner flag (`strata_core::OWNER_FLAG`) says: `strata
/// layer delete` and pruning name it when they leave the layer alone.
pub fn owner(key: &str) -> String {
    format!("containerd snapshot {key}")
}

/// The snapshot key a layer name stands for, if it is one.
pub fn key_of(layer_name: &str) -> Option<&str> {
    layer_name.strip_prefix(NAME_PREFIX)
}

/// A snapshot's kind, as kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// Read-write, made by Prepare; the only kind Commit takes.
    Active,
    /// Read-only, made by View.
    View,
    /// Read-only, made by Commit; the only kind a snapshot can be made on.
    Committed,
}

impl SnapshotKind {
    /// containerd's name for it, as filters compare it.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Active => "active",
            SnapshotKind::View => "view",
            SnapshotKind::Committed => "committed",
        }
    }

    /// Whether its tree takes writes.
    pub fn is_writable(self) -> bool {
        self == SnapshotKind::Active
    }

    fn to_containerd(self) -> Kind {
        match self {
            SnapshotKind::Active => Kind::Active,
            SnapshotKind::View => Kind::View,
            SnapshotKind::Committed => Kind::Committed,
        }
    }
}

/// A snapshot's facts beyond its layer, kept in the layer's [`FLAG`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFacts {
    /// Active, view or committed.
    pub kind: SnapshotKind,
    /// containerd's labels (its garbage collector's references among them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the snapshot was made (committed snapshots: when committed), in
    /// nanoseconds since the epoch.
    pub created_ns: u64,
    /// When it last changed.
    pub updated_ns: u64,
    /// For a driver that cannot describe its mounts: where the store's
    /// counted mount of the layer, held for containerd, shows it. Released at
    /// Commit and Remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_mount: Option<PathBuf>,
}

impl SnapshotFacts {
    /// New facts of `kind` with `labels`, made now.
    pub fn new(kind: SnapshotKind, labels: BTreeMap<String, String>) -> SnapshotFacts {
        let now = now_ns();
        SnapshotFacts {
            kind,
            labels,
            created_ns: now,
            updated_ns: now,
            held_mount: None,
        }
    }

    /// The facts a layer's record holds, if it is a snapshot's.
    pub fn of(record: &LayerRecord) -> Option<SnapshotFacts> {
        serde_json::from_value(record.flags.get(FLAG)?.clone()).ok()
    }

    /// As the flag's value.
    pub fn to_flag(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("snapshot facts serialise")
    }

    /// The containerd `Info` of the snapshot named `name` on `parent`
    /// (empty for none).
    pub fn info(&self, name: String, parent: String) -> Info {
        Info {
            kind: self.kind.to_containerd(),
            name,
            parent,
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
            created_at: at(self.created_ns),
            updated_at: at(self.updated_ns),
        }
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn at(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// The most a label's key and value may hold together, in bytes: what
/// containerd's metadata store allows.
pub const MAX_LABEL_SIZE: usize = 4096;

/// Refuses labels containerd itself would refuse: an empty key, or a key
/// and value longer than [`MAX_LABEL_SIZE`] together. The message names the
/// key (shortened), never the value.
pub fn check_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    for (key, value) in labels {
        if key.is_empty() {
            return Err("a label has an empty key".into());
        }
        if key.len() + value.len() > MAX_LABEL_SIZE {
            let shown: String = key.chars().take(64).collect();
            return Err(format!(
                "label {shown:?}: key and value are {} bytes, more than {MAX_LABEL_SIZE}",
                key.len() + value.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_never_look_like_ids() {
        let name = layer_name("default/3/extract-1 sha256:ab");
        assert_eq!(key_of(&name), Some("default/3/extract-1 sha256:ab"));
        assert!(strata_core::LayerId::new(&name).is_err());
        assert_eq!(key_of("plain"), None);
    }

    #[test]
    fn facts_round_trip_through_the_flag() {
        let mut labels = BTreeMap::new();
        labels.insert("containerd.io/gc.root".to_string(), "x".to_string());
        let facts = SnapshotFacts::new(SnapshotKind::View, labels);
        let back: SnapshotFacts = serde_json::from_value(facts.to_flag()).unwrap();
        assert_eq!(back, facts);
        let info = facts.info("v".into(), String::new());
        assert_eq!(info.kind, Kind::View);
        assert_eq!(info.labels["containerd.io/gc.root"], "x");
    }

    #[test]
    fn oversized_labels_are_refused_by_key() {
        let key = "k".to_string();
        let big = "v".repeat(MAX_LABEL_SIZE);
        let err = check_labels([(&key, &big)]).unwrap_err();
        assert!(err.contains("\"k\""), "{err}");
        assert!(!err.contains("vvvv"), "{err}");
        let empty = String::new();
        assert!(check_labels([(&empty, &key)]).is_err());
        assert!(check_labels([(&key, &key)]).is_ok());
    }
}
