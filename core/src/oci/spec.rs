//! The OCI image-spec's vocabulary as strata uses it: media types, the
//! descriptor, the platform, the index, and the limits import holds them to.
//! Both the bounded parser (`parse`) and the layout reader (`layout`) build on
//! it, neither on the other's types.

use super::shown::shown;
use crate::error::{CoreError, Result};
use crate::ids::Digest;

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

/// The OCI image-spec's own types, from oci-spec: what export writes and
/// import hands on once its bounded parser (`parse`) has checked what it
/// read.
pub use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

/// The tag `descriptor` carries (its [`REF_NAME`] annotation), if any.
pub fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations()
        .as_ref()?
        .get(REF_NAME)
        .map(String::as_str)
}

/// The digest `text`, checked to be `sha256:` and 64 lowercase hex digits
/// (the only algorithm strata verifies); InvalidImage otherwise, showing
/// the text escaped and cut short.
pub fn layout_digest(text: &str) -> Result<Digest> {
    Digest::new(text).map_err(|_| {
        CoreError::InvalidImage(format!(
            "digest '{}' is not sha256:<64 lowercase hex digits> (only sha256 is supported)",
            shown(text)
        ))
    })
}

/// A descriptor of the blob `digest` (checked), of `media_type` and `size`.
pub fn descriptor(media_type: &str, digest: &str, size: u64) -> Result<Descriptor> {
    let digest = layout_digest(digest)?;
    Ok(Descriptor::new(
        MediaType::from(media_type),
        size,
        oci_spec::image::Digest::from(digest),
    ))
}

/// The digest of `descriptor`, checked as [`layout_digest`] checks text.
pub fn digest_of(descriptor: &Descriptor) -> Result<Digest> {
    layout_digest(descriptor.digest().as_ref())
}

/// The most layers an image may have. More than any driver stacks (overlay
/// mounts 500), and it bounds what import holds per layer, and the layer
/// records it adds, whatever the manifest and config say.
pub const MAX_LAYERS: usize = 1024;
