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
    /// A configuration file that cannot be read, is not valid TOML, or holds
    /// a value of the wrong type.
    #[error("configuration {}: {message}", path.display())]
    Config {
        /// The configuration file at fault.
        path: PathBuf,
        /// What is wrong with it, on one line: the reader's or parser's
        /// error, or the setting and the type it must have.
        message: String,
    },

    /// A setting that cannot be used, not tied to one configuration file: a
    /// graph or run root that is not an absolute path, a driver library
    /// holding another driver than its file name says, records of a newer
    /// schema (or old records that cannot be migrated). The message names the
    /// setting or file and what is wrong.
    #[error("configuration: {0}")]
    Setting(String),

    #[error(
        "unknown driver '{name}': no {}{name}{} in {searched}{available}",
        crate::discovery::LIBRARY_PREFIX,
        crate::discovery::LIBRARY_SUFFIX
    )]
    /// The driver asked for (configured, or recorded by the graph root) has
    /// no library on the driver search path.
    UnknownDriver {
        /// The driver name asked for.
        name: String,
        /// The directories searched, in order, each with why it is searched.
        searched: String,
        /// The rest of the message: "; found: " and the drivers that are
        /// installed, or "; no drivers were found at all".
        available: String,
    },

    /// No driver was configured or recorded, and every driver of
    /// [`PRIORITY`](crate::PRIORITY) is missing or answered "not supported"
    /// here.
    #[error("no storage driver works here; tried:\n{attempts}")]
    NoDriverAvailable {
        /// One indented line per driver tried: its name and why it was
        /// passed over.
        attempts: String,
    },

    #[error(
        "graph root {} belongs to the '{owner}' driver (it made it); refusing to open it with '{requested}'. Use driver = \"{owner}\", or another graph root",
        graphroot.display()
    )]
    /// The graph root was made by (and recorded for) one driver and another
    /// is asked for: its layers are only readable by the driver that made
    /// them.
    GraphrootOwned {
        /// The graph root.
        graphroot: PathBuf,
        /// The driver recorded in the graph root, which made it.
        owner: String,
        /// The driver the configuration asks for.
        requested: String,
    },

    /// A driver library that could not be loaded or started: not loadable,
    /// not a strata driver, built against another plugin ABI, or its driver
    /// refused to start.
    #[error(transparent)]
    Load(#[from] LoadError),

    /// A driver library that must not be loaded: others could replace it.
    #[error("refusing to load {}: {reason}", path.display())]
    UntrustedLibrary {
        /// The library file.
        path: PathBuf,
        /// Why it is not trusted: its owner, its mode, or a directory others
        /// can write to.
        reason: String,
    },

    /// Choosing a driver stopped at one whose library is installed but
    /// unusable (the next one would have been recorded for good).
    #[error(
        "driver '{driver}' is installed but its library cannot be used, so no driver is chosen (fix or remove the library, or configure a driver): {source}"
    )]
    BrokenChoice {
        /// The driver whose library cannot be used.
        driver: String,
        /// Why its library cannot be used.
        #[source]
        source: Box<CoreError>,
    },

    /// The driver failed an operation; its error carries its own kind,
    /// which [`CoreError::kind`] maps.
    #[error("{0}")]
    Driver(#[from] DriverError),

    /// A layer diff that could not be read, applied or written: a broken or
    /// hostile tar stream, or the stream failing to read.
    #[error("layer {layer}: {source}")]
    Archive {
        /// The id of the layer the diff is for.
        layer: String,
        /// What is wrong with the stream.
        #[source]
        source: crate::archive::ArchiveError,
    },

    /// A diff that is not what it was declared to be (an OCI blob whose
    /// digest or diff id does not match).
    #[error("layer {layer}: {source_name}: {what} is {actual}, expected {expected}")]
    Verify {
        /// The id of the layer the diff was applied to.
        layer: String,
        /// How the stream is named, e.g. "blob sha256:ab12.. (layer 2 of 3)".
        source_name: String,
        /// What does not match: "size", "digest" or "uncompressed digest
        /// (diff id)".
        what: String,
        /// The value declared for the stream.
        expected: String,
        /// The value the stream turned out to have.
        actual: String,
    },

    /// A blob of an OCI layout that could not be used.
    #[error("{blob}: {source}")]
    Blob {
        /// The blob's digest and what it is, e.g. "blob sha256:.. (layer 2 of 3)".
        blob: String,
        /// Why it could not be used.
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
        /// What was being done, e.g. "open" or "create layer".
        operation: String,
        /// The database file.
        path: PathBuf,
        /// SQLite's error (boxed: it is large, and every `Result` of the
        /// crate carries this enum).
        #[source]
        source: Box<rusqlite::Error>,
    },

    /// A database error not yet given its operation (inside a transaction;
    /// the store turns it into [`CoreError::Records`]).
    #[error("records: {0}")]
    Sql(#[from] rusqlite::Error),

    /// A system call on a file or directory failed.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        /// What was being done, as a verb the path follows: "read",
        /// "create directory", ...
        operation: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The system's error.
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
            CoreError::Records { source, .. } => sql_kind(source),
            CoreError::Sql(source) => sql_kind(source),
            CoreError::Io { .. } => Kind::Io,
        }
    }

    /// A [`CoreError::Io`]: `operation` (a verb such as "read") failed on
    /// `path` with `source`.
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}

/// The result of strata-core's operations.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// What kind of failure an SQLite error is: a damaged database, or I/O.
fn sql_kind(source: &rusqlite::Error) -> Kind {
    match source {
        rusqlite::Error::SqliteFailure(e, _)
            if e.code == rusqlite::ErrorCode::DatabaseCorrupt
                || e.code == rusqlite::ErrorCode::NotADatabase =>
        {
            Kind::Corrupt
        }
        _ => Kind::Io,
    }
}
