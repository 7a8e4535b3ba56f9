//! OCI image layouts (a directory with `oci-layout`, `index.json` and
//! `blobs/sha256/...`) in and out of the store.

mod export;
mod files;
mod import;
pub mod layout;
mod parse;
mod shown;
mod spec;

pub use export::{ExportReport, export_image};
pub use import::{ImportProgress, ImportReport, NoProgress, import_image};
pub use layout::{
    Descriptor, ImageIndex, ImageLocation, ImageManifest, LocationKind, Manifest, MediaType,
    chain_ids,
};
