//! Domain errors to gRPC statuses, in one place. The codes matter: Flower's SuperNodes and apps
//! read PERMISSION_DENIED as "run not running", retry UNAVAILABLE, and give up on the rest.

use tonic::Status;

use crate::error::Error;

/// The status for an error.
pub fn to_status(e: Error) -> Status {
    let text = e.to_string();
    match e {
        Error::NotRunning(_) | Error::PermissionDenied(_) => Status::permission_denied(text),
        Error::UnknownRun(_) | Error::Exception(_) => Status::unknown(text),
        Error::FailedPrecondition(_) => Status::failed_precondition(text),
        Error::InvalidArgument(_) => Status::invalid_argument(text),
        Error::NotFound(_) => Status::not_found(text),
        Error::Unauthenticated(_) => Status::unauthenticated(text),
        Error::Unimplemented(_) => Status::unimplemented(text),
        Error::RequestTooLarge { .. } => Status::resource_exhausted(text),
        Error::Unavailable(cause) => {
            tracing::warn!("{cause}");
            Status::unavailable("The SuperLink's database is unavailable; try again.")
        }
        Error::Internal(_) => {
            // The cause (paths, SQL, engine texts) goes to the log only; the caller gets an id
            // to quote.
            let incident = incident_id();
            tracing::error!(incident = %incident, "{text}");
            Status::internal(format!(
                "The SuperLink failed to handle this request (incident {incident}; its log has the cause)."
            ))
        }
    }
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
        assert_eq!(
            to_status(Error::FailedPrecondition(
                "Public key already in use".into()
            ))
            .message(),
            "Public key already in use"
        );
        assert_eq!(
            to_status(Error::NotFound("Run ID not found".into())).code(),
            Code::NotFound
        );
        let internal = to_status(Error::Internal(
            "SuperLink state error: /srv/state.db: NOT NULL constraint failed: run.x".into(),
        ));
        assert_eq!(internal.code(), Code::Internal);
        assert!(
            !internal.message().contains("/srv") && !internal.message().contains("NOT NULL"),
            "{}",
            internal.message()
        );
        assert!(internal.message().contains("incident "));
    }
}
