//! # strata-core
//!
//! What a container runtime links: configuration, finding and starting the
//! storage driver (a plugin loaded at run time), and the `strata` command. The
//! layer archive format and the layer and image stores build on this.
//!
//! ```no_run
//! use strata_core::{Config, Overrides, open_driver};
//! use strata_plugin_abi::{CreateOptions, GraphDriver, MountOptions};
//!
//! let config = Config::load(&Overrides::default())?;
//! let selected = open_driver(&config)?;
//! selected.driver.create("base", None, &CreateOptions::default())?;
//! let path = selected.driver.get("base", &MountOptions::default())?;
//! println!("{}", path.display());
//! # Ok::<(), strata_core::CoreError>(())
//! ```

pub mod archive;
pub mod check;
pub mod config;
pub mod containers;
mod db;
pub mod discovery;
pub mod error;
pub mod fsutil;
pub mod graphroot;
pub mod images;
pub mod layers;
mod migrate;
pub mod mounts;
pub mod oci;
pub mod selection;
mod sessions;
pub mod store;

pub use config::{Config, Overrides};
pub use error::{CoreError, Result};
pub use selection::{PRIORITY, SelectedDriver, open_driver, survey};
