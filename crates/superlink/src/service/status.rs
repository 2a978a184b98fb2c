//! Domain errors to gRPC statuses, in one place. The codes matter: Flower's SuperNodes and apps
//! read PERMISSION_DENIED as "run not running", retry UNAVAILABLE, and give up on the rest.

use tonic::Status;

use flwr_objects::content::VerifyError;

use crate::error::Error;

/// The status for an error. Every variant is listed: a new one does not compile until it has a
/// code here.
pub fn to_status(e: Error) -> Status {
    let text = e.to_string();
    match e {
        // Flower's SuperNodes and apps read PERMISSION_DENIED as "this run is not running".
        Error::NotRunning(_)
        | Error::NoSuchRunForNode(_)
        | Error::InvalidToken
        | Error::NoSuchFab(_)
        | Error::RunWithoutOwner
        | Error::RunOfAnotherAccount => Status::permission_denied(text),
        // What Flower answers when its code raises.
        Error::UnknownRun(_)
        | Error::LogsForUnknownRun(_)
        | Error::FabNotZip
        | Error::ShowUnknownFederation(_)
        | Error::NoAuthTokens
        | Error::NoRunEvents
        | Error::NoFederationOptions
        | Error::Malformed(_) => Status::unknown(text),
        Error::RunNotStarted(_)
        | Error::RunAlreadyFinished(_)
        | Error::UnusableFab(_)
        | Error::Hub(_)
        | Error::HubOverAdapter
        | Error::RegisterThroughCli
        | Error::UnregisterThroughCli
        | Error::KeyNotSigner
        | Error::NoNodeForKey
        | Error::NodeAlreadyOnline(_)
        | Error::NodeNotOnline(_)
        | Error::NodeNotUnregistered(_)
        | Error::InvalidPublicKey
        | Error::PublicKeyInUse
        | Error::NotTheSuperLinkNode
        | Error::NoFederationGiven
        | Error::NoSuchFederation(_)
        | Error::NodeNotInFederation(_) => Status::failed_precondition(text),
        Error::BadObject(VerifyError::Interrupted) => internal(&text),
        Error::BadObject(_) => Status::failed_precondition(text),
        Error::InvalidHeartbeatInterval => Status::invalid_argument(text),
        Error::NoSuchRun | Error::NodeNotOwned | Error::FederationNotFound => {
            Status::not_found(text)
        }
        Error::NotAuthenticated(_) | Error::InvalidNodeId => Status::unauthenticated(text),
        Error::NoFederationManagement | Error::NoArtifacts => Status::unimplemented(text),
        Error::RequestTooLarge { .. } => Status::resource_exhausted(text),
        Error::Unavailable(cause) => {
            tracing::warn!("{cause}");
            Status::unavailable("The SuperLink's database is unavailable; try again.")
        }
        Error::State(_) | Error::Objects(_) | Error::TaskLost { .. } | Error::Corrupt { .. } => {
            internal(&text)
        }
    }
}

/// INTERNAL: the cause (paths, SQL, engine texts) goes to the log only; the caller gets an id to
/// quote.
fn internal(cause: &str) -> Status {
    let incident = incident_id();
    tracing::error!(incident = %incident, "{cause}");
    Status::internal(format!(
        "The SuperLink failed to handle this request (incident {incident}; its log has the cause)."
    ))
}

/// A short random id that ties an INTERNAL answer to its log line.
fn incident_id() -> String {
    use rand_core::RngCore;
    format!("{:08x}", rand_core::OsRng.next_u32())
}

/// `?`-friendly conversion for handlers.
pub trait OrStatus<T> {
    /// Maps the error to its status.
    fn or_status(self) -> Result<T, Status>;
}

impl<T> OrStatus<T> for Result<T, Error> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(to_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes_peers_rely_on() {
        assert_eq!(
            to_status(Error::NotRunning("Run is finished.".into())).code(),
            Code::PermissionDenied
        );
        let s = to_status(Error::UnknownRun(123));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unknown, "Exception calling application: 123")
        );
        let s = to_status(Error::PublicKeyInUse);
        assert_eq!(
            (s.code(), s.message()),
            (Code::FailedPrecondition, "Public key already in use")
        );
        assert_eq!(to_status(Error::NoSuchRun).code(), Code::NotFound);
        assert_eq!(
            to_status(Error::BadObject(VerifyError::Interrupted)).code(),
            Code::Internal
        );
        let internal = to_status(Error::State(flwr_state::StateError::Database {
            target: "/srv/state.db".into(),
            detail: "NOT NULL constraint failed: run.x".into(),
            source: "NOT NULL constraint failed: run.x".into(),
        }));
        assert_eq!(internal.code(), Code::Internal);
        assert!(
            !internal.message().contains("/srv") && !internal.message().contains("NOT NULL"),
            "{}",
            internal.message()
        );
        assert!(internal.message().contains("incident "));
    }
}
