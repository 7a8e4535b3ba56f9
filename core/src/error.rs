//! Errors of strata-core, each naming what was wrong.

use std::path::PathBuf;

use strata_plugin_abi::{DriverError, LoadError};

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("configuration {}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("configuration: {0}")]
    Setting(String),

    #[error("unknown driver '{name}': no libstrata_driver_{name}.so in {searched}{available}")]
    UnknownDriver {
        name: String,
        searched: String,
        available: String,
    },

    #[error("no storage driver works here; tried:\n{attempts}")]
    NoDriverAvailable { attempts: String },

    #[error(
        "graph root {} belongs to the '{owner}' driver (it made it); refusing to open it with '{requested}'. Use driver = \"{owner}\", or another graph root",
        graphroot.display()
    )]
    GraphrootOwned {
        graphroot: PathBuf,
        owner: String,
        requested: String,
    },

    #[error(transparent)]
    Load(#[from] LoadError),

    /// A driver library that must not be loaded: others could replace it.
    #[error("refusing to load {}: {reason}", path.display())]
    UntrustedLibrary { path: PathBuf, reason: String },

    /// Choosing a driver stopped at one whose library is installed but
    /// unusable (the next one would have been recorded for good).
    #[error(
        "driver '{driver}' is installed but its library cannot be used, so no driver is chosen (fix or remove the library, or configure a driver): {source}"
    )]
    BrokenChoice {
        driver: String,
        #[source]
        source: Box<CoreError>,
    },

    #[error("{0}")]
    Driver(#[from] DriverError),

    #[error("layer {layer}: {source}")]
    Archive {
        layer: String,
        #[source]
        source: crate::archive::ArchiveError,
    },

    /// A diff that is not what it was declared to be (an OCI blob whose
    /// digest or diff id does not match).
    #[error("layer {layer}: {source_name}: {what} is {actual}, expected {expected}")]
    Verify {
        layer: String,
        source_name: String,
        what: String,
        expected: String,
        actual: String,
    },

    /// A blob of an OCI layout that could not be used.
    #[error("{blob}: {source}")]
    Blob {
        /// The blob's digest and what it is, e.g. "blob sha256:.. (layer 2 of 3)".
        blob: String,
        #[source]
        source: Box<CoreError>,
    },

    /// An image, container or OCI layout that is not as it must be.
    #[error("{0}")]
    Image(String),

    /// The records database refused or failed an operation.
    #[error("{operation}: records {}: {source}", path.display())]
    Records {
        operation: String,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A database error not yet given its operation (inside a transaction;
    /// the store turns it into [`CoreError::Records`]).
    #[error("records: {0}")]
    Sql(#[from] rusqlite::Error),

    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CoreError {
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
