//! The two whiteout conventions a layer's deletions are written in.

/// `.wh.NAME` deletes NAME of the lower layers (OCI image layers, AUFS).
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// `.wh..wh..opq` in a directory hides everything the lower layers had there.
pub const OPAQUE_MARKER: &[u8] = b".wh..opq";
/// The full name of the opaque marker.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// overlayfs marks an opaque directory with this xattr set to `y`.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
