//! Exporting an image from the store as an OCI layout. Each layer's diff is
//! the exact stream it was imported from (rebuilt from tar-split), so its
//! diff id, and so the config and the image id, stay the same; the blob is
//! compressed again as the original was, and the manifest declares what was
//! written.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use oci_spec::image::{ImageIndexBuilder, ImageManifestBuilder};

use super::layout::{
    Descriptor, ImageIndex, ImageLocation, ImageManifest, LAYOUT_VERSION, LocationKind,
    MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER, MediaType, REF_NAME, existing_index, oci_arch, ref_name,
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
    match location.kind {
        LocationKind::Layout => {}
        LocationKind::OciArchive => return export_archive(store, reference, location),
        LocationKind::DockerArchive => {
            return Err(CoreError::Unsupported(format!(
                "{}: strata writes OCI layouts and archives (oci:DIR, oci-archive:FILE); \
                 skopeo copy oci-archive:FILE docker-archive:{} turns one into a docker archive",
                location.dir.display(),
                location.dir.display()
            )));
        }
    }
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
    let config_descriptor = write_blob(&blobs, MediaType::from(MEDIA_TYPE_CONFIG), &config_bytes)?;

    // The manifest imported, if it reads as an OCI (or Docker v2) one:
    // what it said beyond its blobs (annotations, subject, each layer's
    // annotations) is kept.
    let imported: Option<ImageManifest> = store
        .images
        .big_data(&image.id, MANIFEST_KEY)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let layer_descriptors: Vec<Descriptor> = exported
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let mut blob = layer.blob.clone();
            let annotations = imported
                .as_ref()
                .and_then(|m| m.layers().get(i))
                .and_then(|d| d.annotations().clone());
            blob.set_annotations(annotations);
            blob
        })
        .collect();
    let manifest = match imported {
        Some(mut manifest) => {
            manifest.set_schema_version(2);
            manifest.set_media_type(Some(MediaType::ImageManifest));
            manifest.set_config(config_descriptor.clone());
            manifest.set_layers(layer_descriptors);
            manifest
        }
        None => ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_descriptor.clone())
            .layers(layer_descriptors)
            .build()
            .expect("the manifest has every required field"),
    };
    let manifest_bytes = canonical_json(&manifest);
    let mut manifest_descriptor = write_blob(&blobs, MediaType::ImageManifest, &manifest_bytes)?;
    let tag = location
        .tag
        .clone()
        .or_else(|| image.names.first().cloned());
    if let Some(tag) = &tag {
        manifest_descriptor.set_annotations(Some([(REF_NAME.to_string(), tag.clone())].into()));
    }

    let marker = dir.join("oci-layout");
    if !marker.exists() {
        let bytes =
            serde_json::to_vec(&serde_json::json!({ "imageLayoutVersion": LAYOUT_VERSION }))
                .expect("JSON values serialise");
        write_atomic(&marker, &bytes, true).map_err(|e| CoreError::io("write", &marker, e))?;
    }
    let index_path = dir.join("index.json");
    let mut index: ImageIndex = match existing_index(dir)? {
        Some(index) => index,
        None => ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(Vec::new())
            .build()
            .expect("the index has every required field"),
    };
    // The tag moves to this image; an untagged export replaces the same
    // manifest's untagged entry.
    let mut manifests = index.manifests().clone();
    manifests.retain(|d| match &tag {
        Some(tag) => ref_name(d) != Some(tag.as_str()),
        None => !(d.digest() == manifest_descriptor.digest() && ref_name(d).is_none()),
    });
    manifests.push(manifest_descriptor.clone());
    index.set_manifests(manifests);
    let bytes = canonical_json(&index);
    write_atomic(&index_path, &bytes, true).map_err(|e| CoreError::io("write", &index_path, e))?;

    Ok(ExportReport {
        image: image.id,
        manifest: manifest_descriptor,
        config_digest: Digest::try_from(config_descriptor.digest().clone())?,
        layers: exported,
        config_rewritten,
    })
}

/// Writes `bytes` as a blob and describes it.
fn write_blob(blobs: &Path, media_type: MediaType, bytes: &[u8]) -> Result<Descriptor> {
    let digest = Digest::of_bytes(bytes);
    let path = blobs.join(digest.encoded());
    write_atomic(&path, bytes, true).map_err(|e| CoreError::io("write", &path, e))?;
    Ok(Descriptor::new(media_type, bytes.len() as u64, digest))
}

/// `value` as JSON with every object's keys sorted (oci-spec keeps
/// annotations in hash maps, whose order changes from run to run): the same
/// image exported twice gives the same manifest digest.
fn canonical_json(value: &impl serde::Serialize) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("OCI types serialise");
    serde_json::to_vec(&value).expect("JSON values serialise")
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
        blob: Descriptor::new(
            MediaType::from(format!("{MEDIA_TYPE_LAYER}{suffix}").as_str()),
            size,
            digest,
        ),
        diff_id,
        original,
    })
}

/// Writes the image as an OCI archive (`oci-archive:FILE`, a tar of a
/// layout holding this image alone, as skopeo and podman write one): the
/// layout is written beside FILE, then tarred into a temporary file that
/// is renamed over FILE, so FILE is the old archive or the whole new one,
/// never a part. The layout beside it goes with it, whatever happens.
fn export_archive(
    store: &Store,
    reference: &str,
    location: &ImageLocation,
) -> Result<ExportReport> {
    let target = &location.dir;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staged = tempfile::Builder::new()
        .prefix(".strata-export-")
        .tempdir_in(&parent)
        .map_err(|e| CoreError::io("make a directory in", &parent, e))?;
    let report = export_image(
        store,
        reference,
        &ImageLocation {
            dir: staged.path().to_path_buf(),
            tag: location.tag.clone(),
            kind: LocationKind::Layout,
        },
    )?;
    let partial = tempfile::Builder::new()
        .prefix(".strata-export-")
        .suffix(".tar")
        .tempfile_in(&parent)
        .map_err(|e| CoreError::io("make a file in", &parent, e))?;
    let write = |out: &fs::File| -> io::Result<()> {
        let mut tar = tar::Builder::new(BufWriter::new(out));
        tar.mode(tar::HeaderMode::Deterministic);
        // The marker and index first, then the blobs in digest order: what
        // a reader streaming the archive wants first comes first.
        tar.append_path_with_name(staged.path().join("oci-layout"), "oci-layout")?;
        tar.append_path_with_name(staged.path().join("index.json"), "index.json")?;
        tar.append_dir("blobs", staged.path().join("blobs"))?;
        tar.append_dir("blobs/sha256", staged.path().join("blobs/sha256"))?;
        let mut blobs: Vec<_> = fs::read_dir(staged.path().join("blobs/sha256"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        blobs.sort();
        for blob in blobs {
            let name = Path::new("blobs/sha256").join(&blob);
            tar.append_path_with_name(staged.path().join(&name), &name)?;
        }
        tar.into_inner()?.flush()?;
        out.sync_all()
    };
    write(partial.as_file()).map_err(|e| CoreError::io("write", partial.path(), e))?;
    partial
        .persist(target)
        .map_err(|e| CoreError::io("write", target, e.error))?;
    Ok(report)
}
