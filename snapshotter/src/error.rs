//! Errors of the snapshotter, each becoming the gRPC status containerd
//! expects of a snapshotter (its errdefs: NotFound, AlreadyExists,
//! FailedPrecondition, InvalidArgument), with a message that names the
//! snapshot and the operation.

use strata_core::{CoreError, DriverErrorKind, ErrorKind};

/// What went wrong with a snapshot operation.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot has that key or name.
    #[error("{0}")]
    NotFound(String),
    /// The key or name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The snapshot is not in a state that allows it (committing a view,
    /// removing a snapshot with children).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is wrong (a bad filter, label or field path).
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation broke off (its thread panicked or was cancelled).
    #[error("{0}")]
    Internal(String),
    /// The store failed; its error names the layer and the operation.
    #[error("{context}: {source}")]
    Store {
        /// The snapshot operation, naming the snapshot.
        context: String,
        /// What the store said (boxed: the store's errors are large, and
        /// every snapshot call returns this type).
        #[source]
        source: Box<CoreError>,
    },
}

impl SnapshotError {
    /// A store error met while doing `context`.
    pub fn store(context: impl Into<String>) -> impl FnOnce(CoreError) -> SnapshotError {
        let context = context.into();
        move |source| SnapshotError::Store {
            context,
            source: Box::new(source),
        }
    }
}

impl From<SnapshotError> for tonic::Status {
    fn from(err: SnapshotError) -> tonic::Status {
        let message = err.to_string();
        match &err {
            SnapshotError::NotFound(_) => tonic::Status::not_found(message),
            SnapshotError::AlreadyExists(_) => tonic::Status::already_exists(message),
            SnapshotError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            SnapshotError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            SnapshotError::Internal(_) => tonic::Status::internal(message),
            SnapshotError::Store { source, .. } => match &**source {
                CoreError::Driver(driver) => match driver.kind() {
                    DriverErrorKind::NotFound => tonic::Status::not_found(message),
                    DriverErrorKind::AlreadyExists => tonic::Status::already_exists(message),
                    DriverErrorKind::InvalidInput => tonic::Status::invalid_argument(message),
                    DriverErrorKind::Busy => tonic::Status::failed_precondition(message),
                    DriverErrorKind::NotSupported => tonic::Status::unimplemented(message),
                    _ => tonic::Status::internal(message),
                },
                other => match other.kind() {
                    ErrorKind::NotFound => tonic::Status::not_found(message),
                    ErrorKind::AlreadyExists => tonic::Status::already_exists(message),
                    ErrorKind::InUse => tonic::Status::failed_precondition(message),
                    ErrorKind::InvalidInput => tonic::Status::invalid_argument(message),
                    ErrorKind::NotSupported => tonic::Status::unimplemented(message),
                    _ => tonic::Status::internal(message),
                },
            },
        }
    }
}
