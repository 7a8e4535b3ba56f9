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

    #[error("{0}")]
    Driver(#[from] DriverError),

    #[error("layer {layer}: {source}")]
    Archive {
        layer: String,
        #[source]
        source: crate::archive::ArchiveError,
    },

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
