//! # strata-core
//!
//! What a container runtime links: configuration, finding and starting the
//! storage driver (a plugin loaded at run time), and the `strata` command. The
//! layer archive format and the layer and image stores build on this.
//!
//! ```no_run
//! use strata_core::oci::{ImageLocation, NoProgress};
//! use strata_core::{Config, MountOptions, Overrides, Store};
//!
//! let store = Store::open(&Config::load(&Overrides::default())?)?;
//! let location = ImageLocation::parse("/srv/images/alpine:3.20");
//! let imported = store.import_image(&location, &[], &NoProgress)?;
//! let container = store.create_container(&imported.image.id, &["web".into()], &Default::default())?;
//! let root = store.mount_container(&container.id, &MountOptions::default())?;
//! println!("{}", root.display());
//! store.unmount_container(&container.id)?;
//! store.delete_container(&container.id)?;
//! # Ok::<(), strata_core::CoreError>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod check;
pub mod config;
pub mod containers;
mod db;
pub mod discovery;
pub mod error;
pub mod fsutil;
pub mod graphroot;
pub mod ids;
pub mod images;
pub mod layers;
mod migrate;
pub mod mounts;
pub mod oci;
pub mod selection;
mod sessions;
pub mod store;

pub use config::{Config, Overrides};
pub use error::{CoreError, Kind as ErrorKind, Result};
pub use ids::{ContainerId, Digest, ImageId, LayerId};
pub use selection::{PRIORITY, SelectedDriver, open_driver, survey};
pub use store::{OWNER_FLAG, Store};
/// The layer format, a crate of its own: re-exported so one crate is enough.
pub use strata_archive as archive;
/// The driver-facing types a runtime passes to the store, so that one crate
/// is enough.
pub use strata_plugin_abi::{
    CreateOptions, DriverError, ErrorKind as DriverErrorKind, GraphDriver, MountOptions, MountSpec,
};
