//! Image records: an image is a top layer (its ancestors are the rest of its
//! layers), names, and "big data" items such as its manifest and config.
//!
//! An image's id is the sha256 of its config, in hex: the same image
//! imported twice is the same record. On disk, in
//! `<graphroot>/<driver>-images/`: `images.json` and a directory per image
//! holding its big data items, each in a file named by its key.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::archive::Sha256Digest;
use crate::error::{CoreError, Result};
use crate::records::{Lookup, RecordFile, found, lookup, now, take_names};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config's sha256, hex.
    pub id: String,
    /// The manifest's digest (`sha256:...`), when the image came with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The layer holding the image's whole tree; `None` for an image without
    /// layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_layer: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Free-form text the caller keeps with the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Items stored with the image, by key.
    #[serde(default)]
    pub big_data: BTreeMap<String, BigDataInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BigDataInfo {
    pub digest: String,
    pub size: u64,
}

/// Big data keys strata itself uses.
pub const MANIFEST_KEY: &str = "manifest";
pub const CONFIG_KEY: &str = "config";

/// An image to record.
#[derive(Clone, Debug, Default)]
pub struct NewImage {
    pub id: String,
    pub digest: Option<String>,
    pub names: Vec<String>,
    pub top_layer: Option<String>,
    pub metadata: Option<String>,
    pub big_data: Vec<(String, Vec<u8>)>,
}

#[derive(Default, Serialize, Deserialize)]
struct Records {
    images: BTreeMap<String, ImageRecord>,
}

pub struct ImageStore {
    records: RecordFile,
}

fn not_found(message: String) -> CoreError {
    strata_plugin_abi::DriverError::not_found(message).into()
}

/// The id an image reference may carry as a digest: `sha256:<hex>` means
/// the id `<hex>`.
fn strip_algorithm(reference: &str) -> &str {
    reference.strip_prefix("sha256:").unwrap_or(reference)
}

impl ImageStore {
    pub fn open(graphroot: &Path, driver_name: &str) -> Result<ImageStore> {
        Ok(ImageStore {
            records: RecordFile::open(
                graphroot.join(format!("{driver_name}-images")),
                "images.json",
            )?,
        })
    }

    fn data_dir(&self, id: &str) -> PathBuf {
        self.records.dir().join(id)
    }

    fn data_path(&self, id: &str, key: &str) -> PathBuf {
        // Keys are free text; the file name must not be.
        let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
        self.data_dir(id).join(format!("={name}"))
    }

    /// Records a new image, its big data written before the record so a
    /// crash never leaves a record without its items. The names move here
    /// from any image that had them. An image with this id already recorded
    /// is refused as AlreadyExists.
    pub fn create(&self, new: &NewImage) -> Result<ImageRecord> {
        if new.id.len() != 64 || !new.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CoreError::Image(format!(
                "image id '{}' is not 64 hex digits (a sha256)",
                new.id
            )));
        }
        let _lock = self.records.lock()?;
        let mut records: Records = self.records.load()?;
        if records.images.contains_key(&new.id) {
            return Err(strata_plugin_abi::DriverError::already_exists(format!(
                "create image {}: image exists",
                new.id
            ))
            .into());
        }
        let dir = self.data_dir(&new.id);
        // Leftovers of a create that died before its record was written.
        let _ = fs::remove_dir_all(&dir);
        let mut big_data = BTreeMap::new();
        let written = fs::create_dir(&dir)
            .map_err(|e| CoreError::io("create", &dir, e))
            .and_then(|()| {
                for (key, bytes) in &new.big_data {
                    let path = self.data_path(&new.id, key);
                    crate::fsutil::write_atomic(&path, bytes, true)
                        .map_err(|e| CoreError::io("write", &path, e))?;
                    big_data.insert(
                        key.clone(),
                        BigDataInfo {
                            digest: Sha256Digest::of(bytes).to_string(),
                            size: bytes.len() as u64,
                        },
                    );
                }
                Ok(())
            });
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        take_names(
            records.images.values_mut().map(|r| &mut r.names),
            &new.names,
        );
        let record = ImageRecord {
            id: new.id.clone(),
            digest: new.digest.clone(),
            names: new.names.clone(),
            top_layer: new.top_layer.clone(),
            created: now(),
            metadata: new.metadata.clone(),
            big_data,
        };
        records.images.insert(new.id.clone(), record.clone());
        if let Err(e) = self.records.save(&records) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(record)
    }

    pub fn get(&self, id: &str) -> Result<Option<ImageRecord>> {
        Ok(self.records.read::<Records>()?.images.get(id).cloned())
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self
            .records
            .read::<Records>()?
            .images
            .into_values()
            .collect())
    }

    /// The id of the image `reference` names: its id (or `sha256:` id), a
    /// name, or a unique id prefix.
    pub fn resolve(&self, reference: &str) -> Result<String> {
        let images = self.list()?;
        let entries = images.iter().map(|r| (r.id.as_str(), r.names.as_slice()));
        let by_id = match lookup(entries.clone(), reference) {
            Lookup::Missing => lookup(entries, strip_algorithm(reference)),
            other => other,
        };
        found("image", reference, by_id)
    }

    /// Adds `names` to image `id`, taking them from any image that had them.
    pub fn add_names(&self, id: &str, names: &[String]) -> Result<ImageRecord> {
        self.update(id, |records| {
            take_names(records.images.values_mut().map(|r| &mut r.names), names);
            let record = records.images.get_mut(id).expect("checked by update");
            for name in names {
                if !record.names.contains(name) {
                    record.names.push(name.clone());
                }
            }
        })
    }

    /// Removes `name` from image `id`.
    pub fn remove_name(&self, id: &str, name: &str) -> Result<ImageRecord> {
        self.update(id, |records| {
            let record = records.images.get_mut(id).expect("checked by update");
            record.names.retain(|n| n != name);
        })
    }

    pub fn set_metadata(&self, id: &str, metadata: Option<String>) -> Result<ImageRecord> {
        self.update(id, |records| {
            records
                .images
                .get_mut(id)
                .expect("checked by update")
                .metadata = metadata;
        })
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Records)) -> Result<ImageRecord> {
        let _lock = self.records.lock()?;
        let mut records: Records = self.records.load()?;
        if !records.images.contains_key(id) {
            return Err(not_found(format!("image {id}: no such image")));
        }
        change(&mut records);
        self.records.save(&records)?;
        Ok(records.images[id].clone())
    }

    /// Stores big data item `key` of image `id`.
    pub fn set_big_data(&self, id: &str, key: &str, bytes: &[u8]) -> Result<ImageRecord> {
        let path = self.data_path(id, key);
        let _lock = self.records.lock()?;
        let mut records: Records = self.records.load()?;
        let Some(record) = records.images.get_mut(id) else {
            return Err(not_found(format!("image {id}: no such image")));
        };
        crate::fsutil::write_atomic(&path, bytes, true)
            .map_err(|e| CoreError::io("write", &path, e))?;
        record.big_data.insert(
            key.to_string(),
            BigDataInfo {
                digest: Sha256Digest::of(bytes).to_string(),
                size: bytes.len() as u64,
            },
        );
        let record = record.clone();
        self.records.save(&records)?;
        Ok(record)
    }

    /// Big data item `key` of image `id`.
    pub fn big_data(&self, id: &str, key: &str) -> Result<Vec<u8>> {
        let record = self
            .get(id)?
            .ok_or_else(|| not_found(format!("image {id}: no such image")))?;
        if !record.big_data.contains_key(key) {
            return Err(not_found(format!("image {id} has no item '{key}'")));
        }
        let path = self.data_path(id, key);
        fs::read(&path).map_err(|e| CoreError::io("read", path, e))
    }

    /// Removes the record of image `id` and its big data.
    pub fn delete(&self, id: &str) -> Result<ImageRecord> {
        let _lock = self.records.lock()?;
        let mut records: Records = self.records.load()?;
        let Some(record) = records.images.remove(id) else {
            return Err(not_found(format!("delete image {id}: no such image")));
        };
        self.records.save(&records)?;
        let dir = self.data_dir(id);
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(image = id, error = %e, "could not remove the image's data directory");
        }
        Ok(record)
    }
}

/// Parent and child relations between images: image P is the parent of image
/// C when P's top layer is the nearest ancestor of C's top layer that is some
/// image's top layer.
pub struct ImageFamily {
    parents: BTreeMap<String, String>,
}

impl ImageFamily {
    /// Works the relations out from the images and each layer's parent.
    pub fn new(images: &[ImageRecord], layer_parent: impl Fn(&str) -> Option<String>) -> Self {
        let mut by_top: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for image in images {
            if let Some(top) = &image.top_layer {
                by_top.entry(top).or_default().push(&image.id);
            }
        }
        let mut parents = BTreeMap::new();
        for image in images {
            let mut cursor = image.top_layer.as_deref().and_then(&layer_parent);
            while let Some(layer) = cursor {
                if let Some(owners) = by_top.get(layer.as_str()) {
                    parents.insert(image.id.clone(), owners[0].to_string());
                    break;
                }
                cursor = layer_parent(&layer);
            }
        }
        ImageFamily { parents }
    }

    pub fn parent(&self, id: &str) -> Option<&str> {
        self.parents.get(id).map(String::as_str)
    }

    pub fn children<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.parents
            .iter()
            .filter(move |(_, p)| p.as_str() == id)
            .map(|(c, _)| c.as_str())
    }

    /// Images that are nobody's parent.
    pub fn heads<'a>(&'a self, images: &'a [ImageRecord]) -> impl Iterator<Item = &'a str> + 'a {
        images
            .iter()
            .map(|i| i.id.as_str())
            .filter(move |id| self.children(id).next().is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn new_image(n: u8, top: &str, names: &[&str]) -> NewImage {
        NewImage {
            id: id(n),
            names: names.iter().map(|s| s.to_string()).collect(),
            top_layer: Some(top.to_string()),
            big_data: vec![(MANIFEST_KEY.into(), b"{\"m\":1}".to_vec())],
            ..Default::default()
        }
    }

    #[test]
    fn records_names_big_data_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), "vfs").unwrap();
        store.create(&new_image(1, "l1", &["base:1"])).unwrap();
        let err = store.create(&new_image(1, "l1", &[])).unwrap_err();
        assert!(err.to_string().contains("image exists"), "{err}");
        store.create(&new_image(2, "l2", &["app"])).unwrap();
        assert_eq!(store.resolve("base:1").unwrap(), id(1));
        assert_eq!(store.resolve(&format!("sha256:{}", id(2))).unwrap(), id(2));
        assert_eq!(store.resolve("0202").unwrap(), id(2));
        let err = store.resolve("nothing").unwrap_err().to_string();
        assert!(err.contains("'nothing'"), "{err}");
        // A name moves to the image it is given to.
        store.add_names(&id(2), &["base:1".into()]).unwrap();
        assert_eq!(store.resolve("base:1").unwrap(), id(2));
        assert!(store.get(&id(1)).unwrap().unwrap().names.is_empty());
        assert_eq!(store.big_data(&id(1), MANIFEST_KEY).unwrap(), b"{\"m\":1}");
        let info = &store.get(&id(1)).unwrap().unwrap().big_data[MANIFEST_KEY];
        assert_eq!(info.size, 7);
        assert_eq!(info.digest, Sha256Digest::of(b"{\"m\":1}").to_string());
        store.delete(&id(1)).unwrap();
        assert!(store.get(&id(1)).unwrap().is_none());
        assert!(!store.data_dir(&id(1)).exists());
        assert!(store.create(&new_image(3, "x", &[])).is_ok());
        let bad = NewImage {
            id: "not-hex".into(),
            ..Default::default()
        };
        assert!(store.create(&bad).is_err());
    }

    #[test]
    fn family_parents_children_heads() {
        // Layers: a <- b <- c <- d; images: A on a, C on c, D on d, B2 on b
        // and E on e (a <- e).
        let parent = |l: &str| match l {
            "b" => Some("a".to_string()),
            "c" => Some("b".to_string()),
            "d" => Some("c".to_string()),
            "e" => Some("a".to_string()),
            _ => None,
        };
        let images: Vec<ImageRecord> = [(1, "a"), (3, "c"), (4, "d"), (5, "e")]
            .iter()
            .map(|(n, top)| ImageRecord {
                id: id(*n),
                digest: None,
                names: vec![],
                top_layer: Some(top.to_string()),
                created: 0,
                metadata: None,
                big_data: BTreeMap::new(),
            })
            .collect();
        let family = ImageFamily::new(&images, parent);
        assert_eq!(family.parent(&id(3)), Some(id(1).as_str()));
        assert_eq!(family.parent(&id(4)), Some(id(3).as_str()));
        assert_eq!(family.parent(&id(5)), Some(id(1).as_str()));
        assert_eq!(family.parent(&id(1)), None);
        let first = id(1);
        let mut kids: Vec<&str> = family.children(&first).collect();
        kids.sort();
        assert_eq!(kids, vec![id(3).as_str(), id(5).as_str()]);
        let heads: Vec<&str> = family.heads(&images).collect();
        assert_eq!(heads, vec![id(4).as_str(), id(5).as_str()]);
    }
}
