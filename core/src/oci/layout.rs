//! Reading an OCI image layout: its index, manifests, configs and blobs,
//! every blob checked against its digest and size.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::Sha256Digest;
use crate::error::{CoreError, Result};

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const LAYOUT_VERSION: &str = "1.0.0";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// What of a config strata reads: the layers' diff ids.
#[derive(Clone, Debug, Deserialize)]
pub struct ConfigRootfs {
    pub rootfs: Rootfs,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Rootfs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// `DIR` or `DIR:TAG` as given on the command line: the tag is what follows
/// the last `:` when `DIR` itself is not a directory by that whole name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLocation {
    pub dir: PathBuf,
    pub tag: Option<String>,
}

impl ImageLocation {
    pub fn parse(text: &str) -> ImageLocation {
        if !Path::new(text).exists()
            && let Some((dir, tag)) = text.rsplit_once(':')
            && !tag.is_empty()
            && !tag.contains('/')
        {
            return ImageLocation {
                dir: PathBuf::from(dir),
                tag: Some(tag.to_string()),
            };
        }
        ImageLocation {
            dir: PathBuf::from(text),
            tag: None,
        }
    }
}

/// This machine's architecture as OCI names it.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The chain ids of a stack of diff ids: the first is the first diff id,
/// each next one the sha256 of "<previous chain id> <diff id>".
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(previous) => {
                Sha256Digest::of(format!("{previous} {diff_id}").as_bytes()).to_string()
            }
        };
        chain.push(next);
    }
    chain
}

/// The hex part of a `sha256:` digest, refusing anything else.
pub fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(hex)
        }
        _ => Err(CoreError::Image(format!(
            "digest '{digest}' is not sha256:<64 lowercase hex digits> (only sha256 is supported)"
        ))),
    }
}

/// An OCI image layout on disk.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// Opens the layout in `dir`, checking its `oci-layout` marker.
    pub fn open(dir: &Path) -> Result<Layout> {
        let marker = dir.join("oci-layout");
        let bytes = fs::read(&marker).map_err(|e| {
            CoreError::Image(format!(
                "{} is not an OCI image layout: cannot read {}: {e}",
                dir.display(),
                marker.display()
            ))
        })?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| CoreError::Image(format!("{}: not JSON: {e}", marker.display())))?;
        match value.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(LAYOUT_VERSION) => {}
            other => {
                return Err(CoreError::Image(format!(
                    "{}: imageLayoutVersion {other:?}, only {LAYOUT_VERSION} is understood",
                    marker.display()
                )));
            }
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    pub fn index(&self) -> Result<Index> {
        let path = self.dir.join("index.json");
        let bytes = fs::read(&path).map_err(|e| CoreError::io("read", &path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CoreError::Image(format!("{}: not an OCI index: {e}", path.display())))
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// Opens the blob `descriptor` names, checking it is there and of the
    /// declared size; `what` says what it is in errors ("layer 2 of 5").
    pub fn open_blob(&self, descriptor: &Descriptor, what: &str) -> Result<fs::File> {
        let path = self.blob_path(&descriptor.digest)?;
        let file = fs::File::open(&path).map_err(|e| {
            CoreError::Image(format!(
                "blob {} ({what}) cannot be opened in {}: {e}",
                descriptor.digest,
                self.dir.display()
            ))
        })?;
        let size = file
            .metadata()
            .map_err(|e| CoreError::io("stat", &path, e))?
            .len();
        if size != descriptor.size {
            return Err(CoreError::Image(format!(
                "blob {} ({what}) is {size} bytes; its descriptor says {}",
                descriptor.digest, descriptor.size
            )));
        }
        Ok(file)
    }

    /// Reads a small blob (manifest, config, index) whole, checking its
    /// digest.
    pub fn read_blob(&self, descriptor: &Descriptor, what: &str) -> Result<Vec<u8>> {
        const LIMIT: u64 = 16 << 20;
        if descriptor.size > LIMIT {
            return Err(CoreError::Image(format!(
                "blob {} ({what}) declares {} bytes; a {what} over {LIMIT} bytes is refused",
                descriptor.digest, descriptor.size
            )));
        }
        let mut bytes = Vec::with_capacity(descriptor.size as usize);
        self.open_blob(descriptor, what)?
            .read_to_end(&mut bytes)
            .map_err(|e| {
                CoreError::io(
                    "read",
                    self.blob_path(&descriptor.digest).unwrap_or_default(),
                    e,
                )
            })?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != descriptor.digest {
            return Err(CoreError::Image(format!(
                "blob {} ({what}) does not match its digest: its content hashes to {actual}",
                descriptor.digest
            )));
        }
        Ok(bytes)
    }

    /// Reads a small blob and parses it as JSON of type `T`; returns the bytes
    /// too (they are what the digest is of).
    pub fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        descriptor: &Descriptor,
        what: &str,
    ) -> Result<(Vec<u8>, T)> {
        let bytes = self.read_blob(descriptor, what)?;
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            CoreError::Image(format!(
                "blob {} is not a valid {what}: {e}",
                descriptor.digest
            ))
        })?;
        Ok((bytes, value))
    }

    /// Finds the image manifest `tag` names (or the only one, without a
    /// tag), following nested indexes to the one for this machine's
    /// platform.
    pub fn find_manifest(&self, tag: Option<&str>) -> Result<Descriptor> {
        let index = self.index()?;
        let chosen = match tag {
            Some(tag) => index
                .manifests
                .iter()
                .find(|d| d.ref_name() == Some(tag))
                .cloned()
                .ok_or_else(|| {
                    let tags: Vec<&str> = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.ref_name())
                        .collect();
                    CoreError::Image(format!(
                        "{} has no image tagged '{tag}' (tags: {})",
                        self.dir.display(),
                        if tags.is_empty() {
                            "none".to_string()
                        } else {
                            tags.join(", ")
                        }
                    ))
                })?,
            None => match index.manifests.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(CoreError::Image(format!(
                        "{} holds no images (index.json lists no manifests)",
                        self.dir.display()
                    )));
                }
                many => {
                    let tags: Vec<&str> = many.iter().filter_map(|d| d.ref_name()).collect();
                    return Err(CoreError::Image(format!(
                        "{} holds {} images; name one as DIR:TAG (tags: {})",
                        self.dir.display(),
                        many.len(),
                        tags.join(", ")
                    )));
                }
            },
        };
        self.platform_manifest(chosen, 0)
    }

    fn platform_manifest(&self, descriptor: Descriptor, depth: usize) -> Result<Descriptor> {
        if descriptor.media_type != MEDIA_TYPE_INDEX
            && descriptor.media_type != DOCKER_MANIFEST_LIST
        {
            return Ok(descriptor);
        }
        if depth > 4 {
            return Err(CoreError::Image(format!(
                "index {} nests indexes too deeply",
                descriptor.digest
            )));
        }
        let (_, index): (_, Index) = self.read_json(&descriptor, "image index")?;
        let arch = oci_arch();
        let found = index
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .cloned()
            .ok_or_else(|| {
                CoreError::Image(format!(
                    "index {} has no image for linux/{arch}",
                    descriptor.digest
                ))
            })?;
        self.platform_manifest(found, depth + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}"))));
        assert_eq!(chain[1], expected);
    }

    #[test]
    fn digests_other_than_sha256_hex_are_refused() {
        assert!(digest_hex(&format!("sha256:{}", "0".repeat(64))).is_ok());
        for bad in [
            "sha512:00",
            "sha256:../../etc/passwd",
            "sha256:ABC",
            "",
            "sha256:",
        ] {
            assert!(digest_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn locations_split_a_tag_only_when_the_whole_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let with_colon = dir.path().join("odd:name");
        fs::create_dir(&with_colon).unwrap();
        let text = with_colon.to_str().unwrap();
        assert_eq!(ImageLocation::parse(text).tag, None);
        let tagged = format!("{}:v1", dir.path().join("img").display());
        let location = ImageLocation::parse(&tagged);
        assert_eq!(location.tag.as_deref(), Some("v1"));
        assert_eq!(location.dir, dir.path().join("img"));
    }
}
