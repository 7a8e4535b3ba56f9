//! Exporting an image from the store as an OCI layout. Each layer's diff is
//! the exact stream it was imported from (rebuilt from tar-split), so its
//! diff id, and so the config and the image id, stay the same; the blob is
//! compressed again as the original was, and the manifest declares what was
//! written.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::layout::{
    Descriptor, ImageLocation, Index, LAYOUT_VERSION, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER, MEDIA_TYPE_MANIFEST, REF_NAME, existing_index, oci_arch,
};
use crate::error::{CoreError, Result};
use crate::fsutil::write_atomic;
use crate::ids::{Digest, ImageId, LayerId};
use crate::images::{CONFIG_KEY, MANIFEST_KEY};
use crate::layers::{DiffSource, LayerRecord};
use crate::store::Store;

/// What [`export_image`] wrote.
#[derive(Clone, Debug)]
pub struct ExportReport {
    /// The id of the image exported (its id in the store, which the layout
    /// keeps unless [`config_rewritten`](Self::config_rewritten)).
    pub image: ImageId,
    /// The manifest written, as its index entry says, with its tag
    /// annotation when it was tagged.
    pub manifest: Descriptor,
    /// The digest of the config blob written.
    pub config_digest: Digest,
    /// The layer blobs written, base layer first.
    pub layers: Vec<ExportedLayer>,
    /// Some layer's diff is no longer the one imported, so the config names
    /// new diff ids (and the image a new id).
    pub config_rewritten: bool,
}

/// One layer an export wrote.
#[derive(Clone, Debug)]
pub struct ExportedLayer {
    /// The layer's id in the store.
    pub layer: LayerId,
    /// The blob written for it, as the manifest describes it.
    pub blob: Descriptor,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    /// The diff is the original stream (else generated from the trees, or
    /// another stream from a driver that owns its format).
    pub original: bool,
}

/// Writes image `reference` into the OCI layout at `location.dir` (made if
/// missing; an existing layout keeps its other images), tagged
/// `location.tag` or, without one, by the image's first name. The index is
/// written last, atomically: a failed export leaves the layout as it was
/// (apart from unreferenced blobs, which are content-addressed and harmless).
pub fn export_image(
    store: &Store,
    reference: &str,
    location: &ImageLocation,
) -> Result<ExportReport> {
    let image = store.image(reference)?;
    let layers = store.image_layers(&image)?;
    let dir = &location.dir;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| CoreError::io("create", &blobs, e))?;

    let mut exported = Vec::with_capacity(layers.len());
    for layer in &layers {
        exported.push(write_layer(store, layer, &blobs)?);
    }

    let stored_config = store.images.big_data(&image.id, CONFIG_KEY).ok();
    let mut config: serde_json::Value = match &stored_config {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
            CoreError::Corrupt(format!(
                "image {}: its stored config is not JSON: {e}",
                image.id
            ))
        })?,
        None => serde_json::json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [] },
        }),
    };
    let diff_ids: Vec<serde_json::Value> = exported
        .iter()
        .map(|l| serde_json::Value::String(l.diff_id.to_string()))
        .collect();
    let config_rewritten =
        config.pointer("/rootfs/diff_ids") != Some(&serde_json::Value::Array(diff_ids.clone()));
    let config_bytes = match (&stored_config, config_rewritten) {
        (Some(bytes), false) => bytes.clone(),
        _ => {
            if stored_config.is_some() {
                tracing::warn!(image = %image.id, "layers changed since import: the exported config has new diff ids");
            }
            config["rootfs"] = serde_json::json!({ "type": "layers", "diff_ids": diff_ids });
            serde_json::to_vec(&config).expect("JSON values serialise")
        }
    };
    let config_descriptor = write_blob(&blobs, MEDIA_TYPE_CONFIG, &config_bytes)?;

    let mut manifest: serde_json::Value = store
        .images
        .big_data(&image.id, MANIFEST_KEY)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| serde_json::json!({ "schemaVersion": 2 }));
    let old_layers = manifest
        .get("layers")
        .and_then(|l| l.as_array())
        .cloned()
        .unwrap_or_default();
    let layer_descriptors: Vec<serde_json::Value> = exported
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let mut value = serde_json::to_value(&layer.blob).expect("descriptors serialise");
            // Keep what the original descriptor said beyond the blob itself.
            if let Some(annotations) = old_layers.get(i).and_then(|d| d.get("annotations")) {
                value["annotations"] = annotations.clone();
            }
            value
        })
        .collect();
    manifest["schemaVersion"] = 2.into();
    manifest["mediaType"] = MEDIA_TYPE_MANIFEST.into();
    manifest["config"] = serde_json::to_value(&config_descriptor).expect("descriptors serialise");
    manifest["layers"] = layer_descriptors.into();
    let manifest_bytes = serde_json::to_vec(&manifest).expect("JSON values serialise");
    let mut manifest_descriptor = write_blob(&blobs, MEDIA_TYPE_MANIFEST, &manifest_bytes)?;
    let tag = location
        .tag
        .clone()
        .or_else(|| image.names.first().cloned());
    if let Some(tag) = &tag {
        manifest_descriptor.annotations = Some([(REF_NAME.to_string(), tag.clone())].into());
    }

    let marker = dir.join("oci-layout");
    if !marker.exists() {
        let bytes =
            serde_json::to_vec(&serde_json::json!({ "imageLayoutVersion": LAYOUT_VERSION }))
                .expect("JSON values serialise");
        write_atomic(&marker, &bytes, true).map_err(|e| CoreError::io("write", &marker, e))?;
    }
    let index_path = dir.join("index.json");
    let mut index = existing_index(dir)?.unwrap_or_else(|| Index {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_INDEX.to_string()),
        manifests: Vec::new(),
        annotations: None,
    });
    // The tag moves to this image; an untagged export replaces the same
    // manifest's untagged entry.
    index.manifests.retain(|d| match &tag {
        Some(tag) => d.ref_name() != Some(tag.as_str()),
        None => !(d.digest == manifest_descriptor.digest && d.ref_name().is_none()),
    });
    index.manifests.push(manifest_descriptor.clone());
    let bytes = serde_json::to_vec(&index).expect("indexes serialise");
    write_atomic(&index_path, &bytes, true).map_err(|e| CoreError::io("write", &index_path, e))?;

    Ok(ExportReport {
        image: image.id,
        manifest: manifest_descriptor,
        config_digest: Digest::new(&config_descriptor.digest)?,
        layers: exported,
        config_rewritten,
    })
}

/// Writes `bytes` as a blob and describes it.
fn write_blob(blobs: &Path, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
    let hex = hex::encode(Sha256::digest(bytes));
    let path = blobs.join(&hex);
    write_atomic(&path, bytes, true).map_err(|e| CoreError::io("write", &path, e))?;
    Ok(Descriptor {
        media_type: media_type.to_string(),
        digest: format!("sha256:{hex}"),
        size: bytes.len() as u64,
        annotations: None,
        platform: None,
    })
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn digest(&self) -> Digest {
        Digest::sha256(&self.hasher.clone().finalize().into())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the layer's diff as a blob compressed as the layer came (gzip
/// when it came from no stream at all).
fn write_layer(store: &Store, layer: &LayerRecord, blobs: &Path) -> Result<ExportedLayer> {
    let compression = layer
        .diff
        .as_ref()
        .map(|d| d.compression.as_str())
        .unwrap_or("gzip");
    let (suffix, level) = match compression {
        "none" => ("", 0),
        "zstd" => ("+zstd", 3),
        // bzip2 and xz are never stored (apply refuses them); gzip it is.
        _ => ("+gzip", 6),
    };
    let mut staged = tempfile::Builder::new()
        .prefix(".layer-")
        .tempfile_in(blobs)
        .map_err(|e| CoreError::io("create a temporary file in", blobs, e))?;
    let file = Hashing::new(BufWriter::with_capacity(1 << 20, staged.as_file_mut()));
    let failed = |e: io::Error| CoreError::io("write a layer blob in", blobs.to_path_buf(), e);
    let (diff_id, source, mut file) = match suffix {
        "+gzip" => {
            let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::new(level));
            let mut tar = Hashing::new(&mut encoder);
            let source = store.layers.diff(&layer.id, &mut tar)?;
            let diff_id = tar.digest();
            (diff_id, source, encoder.finish().map_err(failed)?)
        }
        "+zstd" => {
            let mut encoder = zstd::Encoder::new(file, level as i32).map_err(failed)?;
            let mut tar = Hashing::new(&mut encoder);
            let source = store.layers.diff(&layer.id, &mut tar)?;
            let diff_id = tar.digest();
            (diff_id, source, encoder.finish().map_err(failed)?)
        }
        _ => {
            let mut tar = Hashing::new(file);
            let source = store.layers.diff(&layer.id, &mut tar)?;
            let diff_id = tar.digest();
            (diff_id, source, tar.inner)
        }
    };
    file.flush().map_err(failed)?;
    let digest = file.digest();
    let size = file.count;
    drop(file);
    staged.as_file().sync_all().map_err(failed)?;
    let path: PathBuf = blobs.join(digest.encoded());
    staged
        .persist(&path)
        .map_err(|e| CoreError::io("write", &path, e.error))?;
    // A driver that owns its format gives its own stream: the original
    // when it is the stream the layer was made from.
    let original = source == DiffSource::Original
        || (source == DiffSource::Driver
            && layer
                .diff
                .as_ref()
                .is_some_and(|d| d.uncompressed_digest == diff_id));
    Ok(ExportedLayer {
        layer: layer.id.clone(),
        blob: Descriptor {
            media_type: format!("{MEDIA_TYPE_LAYER}{suffix}"),
            digest: digest.to_string(),
            size,
            annotations: None,
            platform: None,
        },
        diff_id,
        original,
    })
}
