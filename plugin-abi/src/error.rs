//! The error every driver operation returns, on both sides of the boundary.

use std::fmt;
use std::io;

/// What kind of failure a driver reports. The host decides what to do from the
/// kind (automatic selection passes over `NotSupported`, the store maps
/// `NotFound` to "no such layer") and shows the message to people.
///
/// On the wire the kind is a number, so a newer driver may send a kind this
/// host does not know yet; it arrives as `Unknown(code)` rather than failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The layer (or parent, or option) named does not exist.
    NotFound,
    /// The layer id is already taken.
    AlreadyExists,
    /// The driver, or this operation of it, cannot work here: a missing
    /// backend, kernel feature or tool. Automatic selection moves on.
    NotSupported,
    /// The layer is in use (mounted, has children) and the operation would
    /// break that use.
    Busy,
    /// The caller passed something the driver refuses: an unknown option, a
    /// malformed id, a size that is not a size.
    InvalidInput,
    /// A system call failed; `DriverError::errno` tells which errno.
    Io,
    /// The driver panicked; the operation did not complete and the driver's
    /// state for that layer is unknown.
    Panicked,
    /// Anything else.
    Other,
    /// A kind added by a newer ABI minor version than this host knows.
    Unknown(u32),
}

impl ErrorKind {
    /// The stable wire code of this kind. Codes are never reused.
    pub const fn code(self) -> u32 {
        match self {
            ErrorKind::Other => 0,
            ErrorKind::NotFound => 1,
            ErrorKind::AlreadyExists => 2,
            ErrorKind::NotSupported => 3,
            ErrorKind::Busy => 4,
            ErrorKind::InvalidInput => 5,
            ErrorKind::Io => 6,
            ErrorKind::Panicked => 7,
            ErrorKind::Unknown(code) => code,
        }
    }

    /// The kind a wire code stands for.
    pub const fn from_code(code: u32) -> Self {
        match code {
            0 => ErrorKind::Other,
            1 => ErrorKind::NotFound,
            2 => ErrorKind::AlreadyExists,
            3 => ErrorKind::NotSupported,
            4 => ErrorKind::Busy,
            5 => ErrorKind::InvalidInput,
            6 => ErrorKind::Io,
            7 => ErrorKind::Panicked,
            other => ErrorKind::Unknown(other),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::NotSupported => "not supported",
            ErrorKind::Busy => "busy",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Io => "i/o error",
            ErrorKind::Panicked => "driver panicked",
            ErrorKind::Other => "error",
            ErrorKind::Unknown(_) => "error of a kind this host does not know",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A driver failure: its kind, the errno when a system call failed, and a
/// message that names the layer and the operation ("create layer abc: parent
/// def does not exist").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverError {
    kind: ErrorKind,
    errno: Option<i32>,
    message: String,
}

/// The result of every driver operation.
pub type Result<T, E = DriverError> = std::result::Result<T, E>;

impl DriverError {
    /// An error of `kind` with no errno; `message` names the layer and the
    /// operation. The helpers below are this with the kind filled in.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DriverError {
            kind,
            errno: None,
            message: message.into(),
        }
    }

    /// [`ErrorKind::NotFound`]: the layer, parent or option named does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// [`ErrorKind::AlreadyExists`]: `create` of an id that is taken.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }

    /// [`ErrorKind::NotSupported`]: the driver or this operation cannot work
    /// here. Say what is missing: from `init`, the message is the reason
    /// automatic selection gives for passing the driver over.
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotSupported, message)
    }

    /// [`ErrorKind::Busy`]: the layer is in use (mounted, has children) and
    /// the operation would break that use.
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, message)
    }

    /// [`ErrorKind::InvalidInput`]: the caller passed something the driver
    /// refuses (an unknown option, a malformed id).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// [`ErrorKind::Other`]: a failure that fits no other kind; the host can
    /// only show it.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, message)
    }

    /// An I/O failure while doing `context` ("create layer abc: copy usr/bin/ls").
    /// The errno is kept so the host can act on it (ENOSPC, EDQUOT, EBUSY).
    pub fn io(context: impl fmt::Display, err: &io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            io::ErrorKind::Unsupported => ErrorKind::NotSupported,
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => ErrorKind::InvalidInput,
            _ => ErrorKind::Io,
        };
        // An io::Error that carries a DriverError (a host reader failing inside
        // apply_diff) gives that error back unchanged, prefixed with the context.
        if let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<DriverError>()) {
            return DriverError {
                message: format!("{context}: {}", inner.message),
                ..inner.clone()
            };
        }
        DriverError {
            kind,
            errno: err.raw_os_error(),
            message: format!("{context}: {err}"),
        }
    }

    /// Rebuilds an error from its parts (used when it crosses the boundary).
    pub fn from_parts(kind: ErrorKind, errno: Option<i32>, message: String) -> Self {
        DriverError {
            kind,
            errno,
            message,
        }
    }

    /// What kind of failure this is; the host acts on this, never on the
    /// message.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The errno of the failed system call, if one failed (kept by
    /// [`DriverError::io`] and carried across the boundary).
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }

    /// The message for people, naming the layer and the operation; without
    /// the errno, which `Display` appends.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context` put in front of its message.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(errno) = self.errno {
            // The io::Error text already names the errno in words; the number is
            // for people searching logs.
            write!(f, " (errno {errno})")?;
        }
        Ok(())
    }
}

impl std::error::Error for DriverError {}

impl From<DriverError> for io::Error {
    fn from(err: DriverError) -> io::Error {
        let kind = match err.kind {
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::AlreadyExists => io::ErrorKind::AlreadyExists,
            ErrorKind::NotSupported => io::ErrorKind::Unsupported,
            ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_round_trip_and_unknown_codes_survive() {
        for kind in [
            ErrorKind::Other,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::NotSupported,
            ErrorKind::Busy,
            ErrorKind::InvalidInput,
            ErrorKind::Io,
            ErrorKind::Panicked,
        ] {
            assert_eq!(ErrorKind::from_code(kind.code()), kind);
        }
        assert_eq!(ErrorKind::from_code(99), ErrorKind::Unknown(99));
        assert_eq!(ErrorKind::Unknown(99).code(), 99);
    }

    #[test]
    fn io_errors_keep_errno_and_context() {
        let err = DriverError::io("create layer a", &io::Error::from_raw_os_error(28));
        assert_eq!(err.kind(), ErrorKind::Io);
        assert_eq!(err.errno(), Some(28));
        assert!(err.message().starts_with("create layer a: "), "{err}");
    }

    #[test]
    fn a_driver_error_inside_an_io_error_comes_back_whole() {
        let original = DriverError::busy("layer x is mounted");
        let through_io: io::Error = original.into();
        let back = DriverError::io("apply layer y", &through_io);
        assert_eq!(back.kind(), ErrorKind::Busy);
        assert_eq!(back.message(), "apply layer y: layer x is mounted");
    }
}
