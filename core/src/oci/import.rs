//! Importing an image from an OCI layout: manifest and config checked
//! against their digests, each layer applied from its blob while its digest
//! and diff id are computed, and checked before the layer counts as made.
//! Layers already in the store (same chain of diff ids) are reused.

use std::io::Read;

use strata_plugin_abi::CreateOptions;

use super::layout::{
    BlobReader, ConfigRootfs, DOCKER_MANIFEST, Descriptor, ImageLocation, Layout, LocationKind,
    MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, MEDIA_TYPE_MANIFEST, Manifest, chain_ids, layout_digest,
    ref_name,
};
use super::shown::{layer_error, shown};
use crate::error::{CoreError, Kind, Result};
use crate::ids::{Digest, ImageId, LayerId};
use crate::images::{CONFIG_KEY, ImageRecord, MANIFEST_KEY, NewImage};
use crate::layers::{ExpectedDiff, LayerRecord, NewLayer};
use crate::store::Store;

/// Told how an import goes, for progress bars. Every method has a default
/// that does nothing.
pub trait ImportProgress: Sync {
    /// Layer `index` (from 0) of `count` starts: `size` bytes of blob to read.
    fn layer_started(&self, _index: usize, _count: usize, _digest: &str, _size: u64) {}
    /// `bytes` more of layer `index`'s blob have been read.
    fn layer_advanced(&self, _index: usize, _bytes: u64) {}
    /// Layer `index` is in the store; `reused` when it already was.
    fn layer_finished(&self, _index: usize, _reused: bool) {}
}

/// No progress reports.
pub struct NoProgress;
impl ImportProgress for NoProgress {}

/// What [`import_image`] did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    /// The image's record as it is after the import, names included.
    pub image: ImageRecord,
    /// Layers this import made, bottom first.
    pub created_layers: Vec<LayerId>,
    /// Layers that were already in the store.
    pub reused_layers: Vec<LayerId>,
    /// The image itself was already in the store (its names were added).
    pub already_present: bool,
}

/// Imports the image at `location` (the only one in the layout, or the one
/// its tag names) and gives it `names` (the tag, when none are given). On
/// failure nothing of this import is left in the store.
pub fn import_image(
    store: &Store,
    location: &ImageLocation,
    names: &[String],
    progress: &dyn ImportProgress,
) -> Result<ImportReport> {
    let layout = match location.kind {
        LocationKind::Layout => Layout::open(&location.dir)?,
        LocationKind::OciArchive => Layout::open_archive(&location.dir)?,
        LocationKind::DockerArchive => {
            Layout::open_docker_archive(&location.dir, location.tag.as_deref())?
        }
    };
    let descriptor = layout.find_manifest(location.tag.as_deref())?;
    let media_type = descriptor.media_type().as_ref();
    if media_type != MEDIA_TYPE_MANIFEST && media_type != DOCKER_MANIFEST {
        return Err(CoreError::InvalidImage(format!(
            "{} ({}) is not an image manifest but '{}'",
            descriptor.digest(),
            location
                .tag
                .as_deref()
                .map_or("the layout's image".to_string(), |t| format!(
                    "tag '{}'",
                    shown(t)
                )),
            shown(media_type)
        )));
    }
    let (manifest_bytes, manifest): (_, Manifest) =
        layout.read_json(&descriptor, "image manifest", MAX_MANIFEST_SIZE)?;
    let config_descriptor = manifest.config.descriptor()?;
    let (config_bytes, config): (_, ConfigRootfs) = layout.read_json(
        &config_descriptor,
        "image config (with rootfs.diff_ids)",
        MAX_CONFIG_SIZE,
    )?;
    if config.rootfs.kind != "layers" {
        // What it says instead is the config's content: not shown.
        return Err(CoreError::InvalidImage(format!(
            "config {}: rootfs.type is not 'layers'",
            config_descriptor.digest()
        )));
    }
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(CoreError::InvalidImage(format!(
            "manifest {} lists {} layers but its config {} has {} diff ids",
            descriptor.digest(),
            manifest.layers.len(),
            config_descriptor.digest(),
            diff_ids.len()
        )));
    }
    let diff_ids = diff_ids
        .iter()
        .map(|d| layout_digest(d))
        .collect::<Result<Vec<Digest>>>()?;
    let layers = manifest
        .layers
        .iter()
        .map(|blob| blob.descriptor())
        .collect::<Result<Vec<Descriptor>>>()?;
    let config_digest = Digest::try_from(config_descriptor.digest().clone())?;
    let image_id = ImageId::of_config(&config_digest);
    let mut names = names.to_vec();
    if names.is_empty()
        && let Some(tag) = location
            .tag
            .clone()
            .or_else(|| ref_name(&descriptor).map(str::to_string))
    {
        // A tag read from the layout becomes an image name, shown by every
        // listing after: one with control characters is refused, not stored.
        if tag.chars().any(char::is_control) {
            return Err(CoreError::InvalidImage(format!(
                "the tag '{}' of {} holds control characters: refused as an image name",
                shown(&tag),
                descriptor.digest()
            )));
        }
        names.push(tag);
    }

    let hold = store.hold_layers()?;
    if store.images.get(&image_id)?.is_some() {
        let image = store.images.add_names(&image_id, &names)?;
        return Ok(ImportReport {
            image,
            created_layers: Vec::new(),
            reused_layers: Vec::new(),
            already_present: true,
        });
    }

    let chain = chain_ids(&diff_ids);
    let count = layers.len();
    let mut created = Vec::new();
    let mut reused = Vec::new();
    let mut parent: Option<LayerId> = None;
    for (index, (blob, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        let what = format!("layer {} of {count}", index + 1);
        let blob_digest = Digest::try_from(blob.digest().clone())?;
        let new = NewLayer {
            parent: parent.clone(),
            options: CreateOptions {
                read_write: false,
                ..Default::default()
            },
            expect: Some(ExpectedDiff {
                source: format!("blob {blob_digest} ({what})"),
                compressed_digest: Some(blob_digest.clone()),
                compressed_size: Some(blob.size()),
                uncompressed_digest: Some(diff_id.clone()),
            }),
            for_import: true,
            ..NewLayer::new(LayerId::new(chain[index].encoded())?)
        };
        progress.layer_started(index, count, &blob_digest, blob.size());
        let made = ensure_layer(store, &new, diff_id, (blob, &what), || {
            let file = layout.open_blob(blob, &what)?;
            Ok(ProgressReader {
                inner: file,
                index,
                progress,
            })
        })
        .map_err(|e| match e {
            // These already name the blob.
            CoreError::Verify { .. } | CoreError::InvalidImage(_) => e,
            // What the applier says of the stream was read before the
            // blob's digest could be checked: no content of it is shown.
            other => CoreError::Blob {
                blob: format!("blob {blob_digest} ({what})"),
                source: Box::new(layer_error(other)),
            },
        });
        match made {
            Ok((record, was_made)) => {
                tracing::debug!(
                    layer = %record.id,
                    blob = %blob_digest,
                    index = index + 1,
                    of = count,
                    reused = !was_made,
                    "image layer {}",
                    if was_made { "made" } else { "already in the store, reused" }
                );
                progress.layer_finished(index, !was_made);
                if was_made {
                    created.push(record.id.clone());
                } else {
                    reused.push(record.id.clone());
                }
                parent = Some(record.id);
            }
            Err(e) => {
                store.discard_made_layers(hold, &created);
                return Err(e);
            }
        }
    }

    let new_image = NewImage {
        id: image_id.clone(),
        digest: Some(Digest::try_from(descriptor.digest().clone())?),
        names: names.clone(),
        top_layer: parent,
        metadata: None,
        big_data: vec![
            (MANIFEST_KEY.to_string(), manifest_bytes),
            (CONFIG_KEY.to_string(), config_bytes),
        ],
    };
    let image = match store.record_imported_image(&new_image) {
        Ok(image) => image,
        // The same image, imported by another process meanwhile.
        Err(e) if e.kind() == Kind::AlreadyExists => {
            store.name_imported_image(&image_id, &names, new_image.top_layer.as_deref())?
        }
        Err(e) => {
            store.discard_made_layers(hold, &created);
            return Err(e);
        }
    };
    drop(hold);
    tracing::info!(image = %image.id, created = created.len(), reused = reused.len(), "image imported");
    Ok(ImportReport {
        image,
        created_layers: created,
        reused_layers: reused,
        already_present: false,
    })
}

/// The layer `new` describes: the one already in the store (waiting if
/// another process is making it), or made now from the blob `open` gives.
/// Returns whether this call made it. `(blob, what)` name the blob for a
/// size fault.
fn ensure_layer<'p>(
    store: &Store,
    new: &NewLayer,
    diff_id: &Digest,
    (blob_descriptor, what): (&Descriptor, &str),
    open: impl FnOnce() -> Result<ProgressReader<'p>>,
) -> Result<(LayerRecord, bool)> {
    let mut open = Some(open);
    let mut blob = None;
    loop {
        if let Some(existing) = store.layers.wait_until_made(&new.id)? {
            // The id is the chain id, so a layer by this id holds these
            // diffs, unless someone made it by hand under this id.
            if let Some(diff) = &existing.diff
                && &diff.uncompressed_digest != diff_id
            {
                return Err(CoreError::Corrupt(format!(
                    "layer {} exists with diff id {}, not {diff_id} as its id says",
                    existing.id, diff.uncompressed_digest
                )));
            }
            return Ok((existing, false));
        }
        if blob.is_none() {
            blob = Some((open.take().expect("opened once"))()?);
        }
        let reader = blob.as_mut().expect("opened above");
        match store.layers.create_layer(new, Some(&mut *reader)) {
            Ok(record) => return Ok((record, true)),
            // Another process started it first: wait for it and use it.
            Err(e)
                if matches!(e.kind(), Kind::InUse | Kind::AlreadyExists)
                    && store.layers.get(&new.id)?.is_some() =>
            {
                continue;
            }
            Err(e) => {
                // A blob that is not the size it declares: that, not what
                // the layer applier made of the bytes it got, is the cause.
                return Err(match reader.inner.fault() {
                    Some(fault) => Layout::size_fault(blob_descriptor, what, fault),
                    None => e,
                });
            }
        }
    }
}

struct ProgressReader<'p> {
    inner: BlobReader,
    index: usize,
    progress: &'p dyn ImportProgress,
}

impl Read for ProgressReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.layer_advanced(self.index, n as u64);
        Ok(n)
    }
}
