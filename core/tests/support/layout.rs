//! Writing OCI image layouts byte by byte, so tests control every digest,
//! size and blob (and can get them wrong on purpose).

use std::fs;
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A layer as it goes into a layout: the blob, and the diff id the config
/// declares for it.
pub struct Layer {
    pub blob: Vec<u8>,
    pub diff_id: String,
    pub media_type: &'static str,
}

impl Layer {
    /// A gzip'd layer of `tar`.
    pub fn gzip(tar: &[u8]) -> Layer {
        Layer {
            blob: gzip(tar),
            diff_id: digest(tar),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }

    /// The layer uncompressed.
    pub fn plain(tar: &[u8]) -> Layer {
        Layer {
            blob: tar.to_vec(),
            diff_id: digest(tar),
            media_type: "application/vnd.oci.image.layer.v1.tar",
        }
    }

    /// A zstd layer of `tar`.
    pub fn zstd(tar: &[u8]) -> Layer {
        Layer {
            blob: zstd::encode_all(tar, 3).unwrap(),
            diff_id: digest(tar),
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// What `write_image` wrote.
pub struct Written {
    pub manifest: String,
    pub config: String,
    pub layers: Vec<String>,
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let d = digest(bytes);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
    d
}

/// Adds an image of `layers` tagged `tag` to the layout in `dir` (made if
/// missing). `salt` goes into the config so equal layer stacks can still be
/// different images.
pub fn write_image(dir: &Path, tag: &str, layers: &[Layer], salt: &str) -> Written {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": { "salt": salt } },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = put_blob(dir, &config_bytes);
    let mut layer_digests = Vec::new();
    let descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let d = put_blob(dir, &l.blob);
            layer_digests.push(d.clone());
            serde_json::json!({ "mediaType": l.media_type, "digest": d, "size": l.blob.len() })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len() },
        "layers": descriptors,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = put_blob(dir, &manifest_bytes);
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({ "schemaVersion": 2, "manifests": [] }));
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }));
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    Written {
        manifest: manifest_digest,
        config: config_digest,
        layers: layer_digests,
    }
}

/// The path of a blob in the layout.
pub fn blob_path(dir: &Path, digest: &str) -> std::path::PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Puts `bytes` into the layout's blobs as they are and returns their digest.
pub fn put_raw_blob(dir: &Path, bytes: &[u8]) -> String {
    put_blob(dir, bytes)
}

/// A descriptor as JSON, for manifests and indexes written by hand.
pub fn descriptor(media_type: &str, digest: &str, size: u64) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// Adds `descriptor` to the layout's index (made, with the `oci-layout`
/// marker, if missing), tagged `tag`.
pub fn add_to_index(dir: &Path, tag: &str, mut descriptor: serde_json::Value) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({ "schemaVersion": 2, "manifests": [] }));
    descriptor["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
    index["manifests"].as_array_mut().unwrap().push(descriptor);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Adds an image tagged `tag` whose manifest is `manifest`, byte for byte
/// (valid or not), under its true digest and size.
pub fn write_raw_manifest(dir: &Path, tag: &str, manifest: &[u8]) -> String {
    let digest = put_blob(dir, manifest);
    add_to_index(
        dir,
        tag,
        descriptor(
            "application/vnd.oci.image.manifest.v1+json",
            &digest,
            manifest.len() as u64,
        ),
    );
    digest
}

/// Adds an image of `layers` tagged `tag` whose config is `config`, byte for
/// byte (valid or not), under its true digest and size.
pub fn write_image_with_config(dir: &Path, tag: &str, layers: &[Layer], config: &[u8]) -> Written {
    let config_digest = put_blob(dir, config);
    let layer_digests: Vec<String> = layers.iter().map(|l| put_blob(dir, &l.blob)).collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len() as u64),
        "layers": layers
            .iter()
            .zip(&layer_digests)
            .map(|(l, d)| descriptor(l.media_type, d, l.blob.len() as u64))
            .collect::<Vec<_>>(),
    });
    let manifest = write_raw_manifest(dir, tag, &serde_json::to_vec(&manifest).unwrap());
    Written {
        manifest,
        config: config_digest,
        layers: layer_digests,
    }
}
