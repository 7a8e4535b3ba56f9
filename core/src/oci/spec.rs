//! The OCI image-spec's vocabulary as strata uses it: media types, the
//! descriptor, the platform, the index, and the limits import holds them to.
//! Both the bounded parser (`parse`) and the layout reader (`layout`) build on
//! it, neither on the other's types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The media type of an OCI image index: `index.json`, or an index blob
/// listing one image per platform (followed to this machine's on import).
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of an OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The media type of an uncompressed layer tar; a compressed layer's adds
/// `+gzip` or `+zstd`.
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The media type of a Docker manifest list, followed like an OCI index
/// on import.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The media type of a Docker image manifest, imported like an OCI one.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The annotation of an index entry that holds its tag (`DIR:TAG`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The `imageLayoutVersion` of the `oci-layout` file: the only one read,
/// and the one written.
pub const LAYOUT_VERSION: &str = "1.0.0";

/// An OCI content descriptor: what a blob is, where it is and how large.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is, such as [`MEDIA_TYPE_MANIFEST`].
    pub media_type: String,
    /// The blob's digest, `sha256:<hex>` (other algorithms are refused when
    /// the blob is opened); it names the file in `blobs/sha256/`.
    pub digest: String,
    /// The blob's length in bytes; a blob of any other length is refused.
    pub size: u64,
    /// The descriptor's annotations, such as [`REF_NAME`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The platform the image is for, in an index listing several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// The tag the descriptor carries (its [`REF_NAME`] annotation), if any.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
    }
}

/// The platform an image of an index is for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Platform {
    /// The CPU architecture, as OCI names it ("amd64", "arm64"; see
    /// [`oci_arch`](super::layout::oci_arch)).
    pub architecture: String,
    /// The operating system, such as "linux".
    pub os: String,
    /// The CPU variant, such as "v8"; not read on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An OCI image index: a layout's `index.json`, as export reads and
/// writes it whole.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// The format version: 2 in every index strata writes; not checked
    /// when one is read.
    pub schema_version: u32,
    /// [`MEDIA_TYPE_INDEX`], if the index says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests (or nested indexes) the layout holds, each tagged by
    /// its [`REF_NAME`] annotation.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// The index's own annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The most layers an image may have. More than any driver stacks (overlay
/// mounts 500), and it bounds what import holds per layer, and the layer
/// records it adds, whatever the manifest and config say.
pub const MAX_LAYERS: usize = 1024;
