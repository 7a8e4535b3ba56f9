//! Errors of strata-core, each naming what was wrong.

use std::path::PathBuf;

use strata_plugin_abi::{DriverError, ErrorKind, LoadError};

/// What kind of failure an error is, for callers that act on it (retry when
/// in use, create when not found) rather than print it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// The layer, image, container, name or blob asked for does not exist.
    NotFound,
    /// The id or name is taken.
    AlreadyExists,
    /// Something uses it (a container, a child layer, another process at
    /// work on it), and the operation would break that use.
    InUse,
    /// What the caller gave is refused: a bad reference, option, stream,
    /// or an OCI layout that is not as it must be.
    InvalidInput,
    /// What the store holds is not as it was written (a digest that does not
    /// match, a record that does not parse, a layer missing under an image);
    /// `strata check` tells more.
    Corrupt,
    /// The driver, or this operation of it, cannot work here.
    NotSupported,
    /// The configuration is wrong, or names a driver that cannot be used.
    Config,
    /// A system call or the records database failed.
    Io,
    /// Anything else.
    Other,
}

/// An error of strata-core. Every message names what was wrong (the layer,
/// image, blob, file or option) and the operation; [`CoreError::kind`] says
/// what kind of failure it is.
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

    /// An OCI layout, manifest, config or blob that is not as it must be.
    #[error("{0}")]
    InvalidImage(String),

    /// A layer, image, container or name that does not exist.
    #[error("{0}")]
    NotFound(String),

    /// An id or name that is taken.
    #[error("{0}")]
    AlreadyExists(String),

    /// Refused because something uses it, or another process is at work on it.
    #[error("{0}")]
    InUse(String),

    /// A reference, option or argument the store refuses.
    #[error("{0}")]
    InvalidInput(String),

    /// What the store holds is not as it was written.
    #[error("{0}")]
    Corrupt(String),

    /// The driver cannot do this here (a capability it lacks, a format
    /// strata does not know).
    #[error("{0}")]
    Unsupported(String),

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
    /// What kind of failure this is.
    pub fn kind(&self) -> Kind {
        match self {
            CoreError::Config { .. }
            | CoreError::Setting(_)
            | CoreError::UnknownDriver { .. }
            | CoreError::GraphrootOwned { .. }
            | CoreError::Load(_)
            | CoreError::UntrustedLibrary { .. }
            | CoreError::BrokenChoice { .. } => Kind::Config,
            CoreError::NoDriverAvailable { .. } => Kind::NotSupported,
            CoreError::Driver(e) => match e.kind() {
                ErrorKind::NotFound => Kind::NotFound,
                ErrorKind::AlreadyExists => Kind::AlreadyExists,
                ErrorKind::Busy => Kind::InUse,
                ErrorKind::InvalidInput => Kind::InvalidInput,
                ErrorKind::NotSupported => Kind::NotSupported,
                ErrorKind::Io => Kind::Io,
                _ => Kind::Other,
            },
            CoreError::Archive { .. } | CoreError::InvalidImage(_) | CoreError::InvalidInput(_) => {
                Kind::InvalidInput
            }
            // A diff or blob that is not what it was declared to be came in
            // that way: the input is bad, not the store.
            CoreError::Verify { .. } => Kind::InvalidInput,
            CoreError::Blob { source, .. } => source.kind(),
            CoreError::NotFound(_) => Kind::NotFound,
            CoreError::AlreadyExists(_) => Kind::AlreadyExists,
            CoreError::InUse(_) => Kind::InUse,
            CoreError::Corrupt(_) => Kind::Corrupt,
            CoreError::Unsupported(_) => Kind::NotSupported,
            CoreError::Records { source, .. } | CoreError::Sql(source) => match source {
                rusqlite::Error::SqliteFailure(e, _)
                    if e.code == rusqlite::ErrorCode::DatabaseCorrupt
                        || e.code == rusqlite::ErrorCode::NotADatabase =>
                {
                    Kind::Corrupt
                }
                _ => Kind::Io,
            },
            CoreError::Io { .. } => Kind::Io,
        }
    }

    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
