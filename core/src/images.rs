//! Image records: an image is a top layer (its ancestors are the rest of its
//! layers), names, and "big data" items such as its manifest and config.
//!
//! An image's id is the sha256 of its config, in hex: the same image
//! imported twice is the same record. Images, their names and their big
//! data items (bytes included: manifests and configs are small, and kept in
//! the same transaction as the image they belong to) are rows of the
//! store's database (see `db`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::db::{
    Database, Kind, Lookup, all_names, drop_names, found, give_names, lookup, names_of, now,
};
use crate::error::{CoreError, Result};
use crate::ids::{Digest, ImageId, LayerId};

/// An image: what the store records of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config's sha256, hex.
    pub id: ImageId,
    /// The manifest's digest, when the image came with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Its names (such as "alpine:3.20"), in the order given; no two images
    /// share a name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The layer holding the image's whole tree; `None` for an image without
    /// layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_layer: Option<LayerId>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Free-form text the caller keeps with the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Items stored with the image, by key.
    #[serde(default)]
    pub big_data: BTreeMap<String, BigDataInfo>,
}

/// What the record of an image says of one of its big data items (the
/// bytes are read with [`ImageStore::big_data`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BigDataInfo {
    /// The sha256 of the item's bytes.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
}

/// Big data keys strata itself uses.
///
/// This one holds the image's OCI manifest, byte for byte as imported.
pub const MANIFEST_KEY: &str = "manifest";
/// The big data key of the image's OCI config, byte for byte as imported
/// (its sha256 is the image's id).
pub const CONFIG_KEY: &str = "config";

/// An image to record.
#[derive(Clone, Debug)]
pub struct NewImage {
    /// The image's id: the sha256 of its config.
    pub id: ImageId,
    /// The manifest's digest, if the image has one.
    pub digest: Option<Digest>,
    /// Names to give it, taken from any image that has them.
    pub names: Vec<String>,
    /// The layer holding its whole tree, already made; `None` for an image
    /// without layers.
    pub top_layer: Option<LayerId>,
    /// Free-form text the caller keeps with the image.
    pub metadata: Option<String>,
    /// Big data items to store with it, as (key, bytes); each item must be
    /// under 2 GiB.
    pub big_data: Vec<(String, Vec<u8>)>,
}

impl NewImage {
    /// Image `id` with no manifest digest, names, layers, metadata or big
    /// data: the start of a `NewImage { names: .., ..NewImage::new(id) }`.
    pub fn new(id: ImageId) -> NewImage {
        NewImage {
            id,
            digest: None,
            names: Vec::new(),
            top_layer: None,
            metadata: None,
            big_data: Vec::new(),
        }
    }
}

/// The image records: names, big data items and the top layer of each
/// image. An image's layers are made, and deleted with it, through
/// [`Store`](crate::store::Store).
pub struct ImageStore {
    db: Arc<Database>,
}

fn not_found(message: String) -> CoreError {
    CoreError::NotFound(message)
}

/// The id an image reference may carry as a digest: `sha256:<hex>` means
/// the id `<hex>`.
fn strip_algorithm(reference: &str) -> &str {
    reference.strip_prefix("sha256:").unwrap_or(reference)
}

const IMAGE_COLUMNS: &str = "id, digest, top_layer, created, metadata";

fn image_from_row(row: &rusqlite::Row) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        id: row.get(0)?,
        digest: row.get(1)?,
        top_layer: row.get(2)?,
        created: row.get::<_, i64>(3)? as u64,
        metadata: row.get(4)?,
        names: Vec::new(),
        big_data: BTreeMap::new(),
    })
}

/// The record of image `id`, with its names and big data items.
pub(crate) fn read_image(tx: &Connection, id: &str) -> Result<Option<ImageRecord>> {
    let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?1");
    let Some(mut record) = tx
        .prepare_cached(&sql)?
        .query_row(params![id], image_from_row)
        .optional()?
    else {
        return Ok(None);
    };
    record.names = names_of(tx, Kind::Image, id)?;
    let mut statement =
        tx.prepare_cached("SELECT key, digest, size FROM big_data WHERE image = ?1")?;
    let mut rows = statement.query(params![id])?;
    while let Some(row) = rows.next()? {
        record.big_data.insert(
            row.get(0)?,
            BigDataInfo {
                digest: row.get(1)?,
                size: row.get::<_, i64>(2)? as u64,
            },
        );
    }
    Ok(Some(record))
}

/// Every image, with names and big data items, in three reads.
pub(crate) fn read_images(tx: &Connection) -> Result<Vec<ImageRecord>> {
    let sql = format!("SELECT {IMAGE_COLUMNS} FROM images ORDER BY id");
    let mut records = tx
        .prepare_cached(&sql)?
        .query_map([], image_from_row)?
        .collect::<rusqlite::Result<Vec<ImageRecord>>>()?;
    let mut names = all_names(tx, Kind::Image)?;
    let mut items: std::collections::HashMap<ImageId, BTreeMap<String, BigDataInfo>> =
        Default::default();
    let mut statement = tx.prepare_cached("SELECT image, key, digest, size FROM big_data")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        items.entry(row.get(0)?).or_default().insert(
            row.get(1)?,
            BigDataInfo {
                digest: row.get(2)?,
                size: row.get::<_, i64>(3)? as u64,
            },
        );
    }
    for record in &mut records {
        record.names = names.remove(record.id.as_str()).unwrap_or_default();
        record.big_data = items.remove(record.id.as_str()).unwrap_or_default();
    }
    Ok(records)
}

/// Removes image `id`'s row, names and big data in the caller's transaction.
pub(crate) fn delete_image_rows(tx: &Connection, id: &str) -> Result<()> {
    tx.prepare_cached("DELETE FROM images WHERE id = ?1")?
        .execute(params![id])?;
    tx.prepare_cached("DELETE FROM big_data WHERE image = ?1")?
        .execute(params![id])?;
    drop_names(tx, Kind::Image, id)
}

fn put_big_data(tx: &Connection, id: &str, key: &str, bytes: &[u8]) -> Result<()> {
    // Written through incremental blob I/O into a zero-filled blob of its
    // size: binding the bytes would have SQLite copy them whole first (a
    // config may be 16 MiB).
    tx.prepare_cached(
        "INSERT OR REPLACE INTO big_data (image, key, digest, size, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id,
        key,
        Digest::of_bytes(bytes),
        bytes.len() as i64,
        rusqlite::blob::ZeroBlob(i32::try_from(bytes.len()).map_err(|_| {
            CoreError::InvalidImage(format!("image {id}: item '{key}' is over 2 GiB"))
        })?)
    ])?;
    let row = tx.last_insert_rowid();
    let mut blob = tx.blob_open(rusqlite::MAIN_DB, "big_data", "bytes", row, false)?;
    for chunk in bytes.chunks(1 << 20) {
        std::io::Write::write_all(&mut blob, chunk)
            .map_err(|e| CoreError::io("write big data of image", id, e))?;
    }
    Ok(())
}

impl ImageStore {
    /// The image records of `driver_name` under `graphroot` (a database of
    /// their own; a [`Store`](crate::store::Store) shares one).
    pub fn open(graphroot: &Path, driver_name: &str) -> Result<ImageStore> {
        Ok(ImageStore {
            db: Arc::new(Database::open(graphroot, driver_name)?),
        })
    }

    pub(crate) fn with_records(db: Arc<Database>) -> ImageStore {
        ImageStore { db }
    }

    /// Records a new image with its names and big data, in one transaction.
    /// The names move here from any image that had them. An image with this
    /// id already recorded is refused as AlreadyExists.
    pub fn create(&self, new: &NewImage) -> Result<ImageRecord> {
        self.create_then(new, |_| Ok(()))
    }

    /// [`create`](Self::create), with `then` run in the same transaction.
    pub(crate) fn create_then(
        &self,
        new: &NewImage,
        then: impl FnOnce(&Transaction) -> Result<()>,
    ) -> Result<ImageRecord> {
        self.db.write(&format!("create image {}", new.id), |tx| {
            if read_image(tx, &new.id)?.is_some() {
                return Err(CoreError::AlreadyExists(format!(
                    "create image {}: image exists",
                    new.id
                )));
            }
            tx.prepare_cached(
                "INSERT INTO images (id, digest, top_layer, created, metadata) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                new.id,
                new.digest,
                new.top_layer,
                now() as i64,
                new.metadata
            ])?;
            give_names(tx, Kind::Image, &new.id, &new.names, true)?;
            for (key, bytes) in &new.big_data {
                put_big_data(tx, &new.id, key, bytes)?;
            }
            then(tx)?;
            Ok(read_image(tx, &new.id)?.expect("inserted above"))
        })
    }

    /// The record of image `id` (an exact id, not a name or prefix); `None`
    /// if there is none.
    pub fn get(&self, id: &ImageId) -> Result<Option<ImageRecord>> {
        self.db
            .read(&format!("read image {id}"), |tx| read_image(tx, id))
    }

    /// Every image, by id.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        self.db.read("list images", |tx| read_images(tx))
    }

    /// The id of the image `reference` names: its id (or `sha256:` id), a
    /// name, or a unique id prefix.
    pub fn resolve(&self, reference: &str) -> Result<ImageId> {
        self.db
            .read("look up an image", |tx| resolve_image(tx, reference))
    }

    /// Adds `names` to image `id`, taking them from any image that had them.
    pub fn add_names(&self, id: &ImageId, names: &[String]) -> Result<ImageRecord> {
        self.update(id, |tx| give_names(tx, Kind::Image, id, names, false))
    }

    /// Removes `name` from image `id`.
    pub fn remove_name(&self, id: &ImageId, name: &str) -> Result<ImageRecord> {
        self.update(id, |tx| {
            tx.prepare_cached(
                "DELETE FROM names WHERE kind = 'image' AND owner = ?1 AND name = ?2",
            )?
            .execute(params![id, name])?;
            Ok(())
        })
    }

    /// Replaces the free-form metadata of image `id` (`None` clears it) and
    /// returns the updated record; NotFound if there is no such image.
    pub fn set_metadata(&self, id: &ImageId, metadata: Option<String>) -> Result<ImageRecord> {
        self.update(id, |tx| {
            tx.prepare_cached("UPDATE images SET metadata = ?1 WHERE id = ?2")?
                .execute(params![metadata, id])?;
            Ok(())
        })
    }

    fn update(
        &self,
        id: &str,
        change: impl FnOnce(&Transaction) -> Result<()>,
    ) -> Result<ImageRecord> {
        self.db.write(&format!("change image {id}"), |tx| {
            if read_image(tx, id)?.is_none() {
                return Err(not_found(format!("image {id}: no such image")));
            }
            change(tx)?;
            Ok(read_image(tx, id)?.expect("checked above"))
        })
    }

    /// Stores big data item `key` of image `id`.
    pub fn set_big_data(&self, id: &ImageId, key: &str, bytes: &[u8]) -> Result<ImageRecord> {
        self.update(id, |tx| put_big_data(tx, id, key, bytes))
    }

    /// Big data item `key` of image `id`.
    pub fn big_data(&self, id: &ImageId, key: &str) -> Result<Vec<u8>> {
        self.db.read(&format!("read image {id}"), |tx| {
            if read_image(tx, id)?.is_none() {
                return Err(not_found(format!("image {id}: no such image")));
            }
            tx.prepare_cached("SELECT bytes FROM big_data WHERE image = ?1 AND key = ?2")?
                .query_row(params![id, key], |r| r.get(0))
                .optional()?
                .ok_or_else(|| not_found(format!("image {id} has no item '{key}'")))
        })
    }

    /// Removes the record of image `id` and its big data (its layers stay;
    /// [`Store::delete_image`](crate::store::Store::delete_image) removes
    /// those nothing else uses).
    pub fn delete(&self, id: &ImageId) -> Result<ImageRecord> {
        self.db.write(&format!("delete image {id}"), |tx| {
            let record = read_image(tx, id)?
                .ok_or_else(|| not_found(format!("delete image {id}: no such image")))?;
            delete_image_rows(tx, id)?;
            Ok(record)
        })
    }
}

/// The id of the image `reference` names, read in the caller's transaction.
pub(crate) fn resolve_image(tx: &Connection, reference: &str) -> Result<ImageId> {
    let by_id = match lookup(tx, Kind::Image, "images", "1", reference)? {
        Lookup::Missing => lookup(tx, Kind::Image, "images", "1", strip_algorithm(reference))?,
        other => other,
    };
    found(Kind::Image, reference, by_id)
}

/// Parent and child relations between images: image P is the parent of image
/// C when P's top layer is the nearest ancestor of C's top layer that is some
/// image's top layer.
pub struct ImageFamily {
    parents: BTreeMap<String, String>,
    children: BTreeMap<String, Vec<String>>,
    layer_counts: BTreeMap<String, usize>,
}

impl ImageFamily {
    /// Works the relations out from the images and each layer's parent.
    pub fn new(images: &[ImageRecord], layer_parent: impl Fn(&str) -> Option<LayerId>) -> Self {
        let mut by_top: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for image in images {
            if let Some(top) = &image.top_layer {
                by_top.entry(top).or_default().push(&image.id);
            }
        }
        let mut parents = BTreeMap::new();
        let mut layer_counts = BTreeMap::new();
        for image in images {
            let mut count = 0;
            let mut cursor = image.top_layer.clone();
            while let Some(layer) = cursor {
                count += 1;
                cursor = layer_parent(&layer);
            }
            layer_counts.insert(image.id.to_string(), count);
            let mut cursor = image.top_layer.as_deref().and_then(&layer_parent);
            while let Some(layer) = cursor {
                if let Some(owners) = by_top.get(layer.as_str()) {
                    parents.insert(image.id.to_string(), owners[0].to_string());
                    break;
                }
                cursor = layer_parent(&layer);
            }
        }
        let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (child, parent) in &parents {
            children
                .entry(parent.clone())
                .or_default()
                .push(child.clone());
        }
        ImageFamily {
            parents,
            children,
            layer_counts,
        }
    }

    /// How many layers image `id` has.
    pub fn layer_count(&self, id: &str) -> usize {
        self.layer_counts.get(id).copied().unwrap_or(0)
    }

    /// The image `id` was built on: the image whose top layer is the
    /// nearest below `id`'s; `None` for an image built on none.
    pub fn parent(&self, id: &str) -> Option<&str> {
        self.parents.get(id).map(String::as_str)
    }

    /// The images whose [`parent`](Self::parent) is `id`.
    pub fn children<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.children
            .get(id)
            .into_iter()
            .flatten()
            .map(String::as_str)
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

    fn id(n: u8) -> ImageId {
        ImageId::new(format!("{n:02x}").repeat(32)).unwrap()
    }

    fn layer(name: &str) -> LayerId {
        LayerId::new(name).unwrap()
    }

    fn new_image(n: u8, top: &str, names: &[&str]) -> NewImage {
        NewImage {
            names: names.iter().map(|s| s.to_string()).collect(),
            top_layer: Some(layer(top)),
            big_data: vec![(MANIFEST_KEY.into(), b"{\"m\":1}".to_vec())],
            ..NewImage::new(id(n))
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
        assert_eq!(info.digest, Digest::of_bytes(b"{\"m\":1}"));
        store.delete(&id(1)).unwrap();
        assert!(store.get(&id(1)).unwrap().is_none());
        assert!(store.big_data(&id(1), MANIFEST_KEY).is_err());
        assert!(store.create(&new_image(3, "x", &[])).is_ok());
        let bad = ImageId::new("not-hex").unwrap_err();
        assert!(bad.to_string().contains("not 64 hex digits"), "{bad}");
    }

    #[test]
    fn family_parents_children_heads() {
        // Layers: a <- b <- c <- d; images: A on a, C on c, D on d, B2 on b
        // and E on e (a <- e).
        let parent = |l: &str| match l {
            "b" => Some(layer("a")),
            "c" => Some(layer("b")),
            "d" => Some(layer("c")),
            "e" => Some(layer("a")),
            _ => None,
        };
        let images: Vec<ImageRecord> = [(1, "a"), (3, "c"), (4, "d"), (5, "e")]
            .iter()
            .map(|(n, top)| ImageRecord {
                id: id(*n),
                digest: None,
                names: vec![],
                top_layer: Some(layer(top)),
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
