//! The SuperLink's domain errors. Each variant carries the exact text Flower's clients see; the
//! service layer maps variants to gRPC codes in one `match` (`service::status`).

use flwr_state::{RunId, StateError};

/// An error answer of the SuperLink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A gated RPC on a run that is not running ("Run is pending." ...): PERMISSION_DENIED, which
    /// Flower's apps and SuperNodes read as "run not running".
    #[error("{0}")]
    NotRunning(String),
    /// A gated RPC on an unknown run (Flower answers UNKNOWN with the run id).
    #[error("Exception calling application: {0}")]
    UnknownRun(RunId),
    /// Other refusals that Flower answers with PERMISSION_DENIED ("Invalid token.", "Run ID not
    /// found: <id>" on Fleet, "Found no FAB with hash: <hash>").
    #[error("{0}")]
    PermissionDenied(String),
    /// FAILED_PRECONDITION with Flower's text.
    #[error("{0}")]
    FailedPrecondition(String),
    /// INVALID_ARGUMENT with Flower's text.
    #[error("{0}")]
    InvalidArgument(String),
    /// NOT_FOUND with Flower's text.
    #[error("{0}")]
    NotFound(String),
    /// UNAUTHENTICATED with Flower's text.
    #[error("{0}")]
    Unauthenticated(String),
    /// UNIMPLEMENTED with Flower's text.
    #[error("{0}")]
    Unimplemented(String),
    /// What Flower answers with UNKNOWN: an uncaught exception there (a malformed request, a call
    /// its plugin does not support).
    #[error("Exception calling application: {0}")]
    Exception(String),
    /// The SuperLink itself failed (storage, database): INTERNAL, with a message that names the
    /// cause and the fix.
    #[error("{0}")]
    Internal(String),
    /// A request body over the bound of its method (RESOURCE_EXHAUSTED, as gRPC answers a
    /// message over its size limit).
    #[error("{method}: the request is larger than the {limit} bytes this call may carry")]
    RequestTooLarge {
        /// The gRPC method.
        method: &'static str,
        /// Its bound in bytes.
        limit: usize,
    },
    /// The state database cannot be reached now: UNAVAILABLE, which clients retry.
    #[error("{0}")]
    Unavailable(String),
}

impl From<StateError> for Error {
    fn from(e: StateError) -> Self {
        match e {
            StateError::RunNotFound(id) => Error::UnknownRun(id),
            StateError::PublicKeyInUse => {
                Error::FailedPrecondition("Public key already in use".into())
            }
            StateError::Backend(m) => Error::Internal(format!("SuperLink state error: {m}")),
            StateError::Unavailable(m) => Error::Unavailable(m),
        }
    }
}

impl From<flwr_objects::store::StoreError> for Error {
    fn from(e: flwr_objects::store::StoreError) -> Self {
        match e {
            flwr_objects::store::StoreError::Unavailable(m) => Error::Unavailable(m),
            other => Error::Internal(format!("SuperLink {other}")),
        }
    }
}

/// A `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
