//! Domain errors to gRPC statuses, in one place. The codes matter: Flower's SuperNodes and apps
//! read PERMISSION_DENIED as "run not running", retry UNAVAILABLE, and give up on the rest.

use tonic::Status;

use crate::error::Error;

/// The status for an error.
pub fn to_status(e: Error) -> Status {
    let text = e.to_string();
    match e {
        Error::NotRunning(_) | Error::PermissionDenied(_) => Status::permission_denied(text),
        Error::UnknownRun(_) | Error::Malformed(_) => Status::unknown(text),
        Error::FailedPrecondition(_) => Status::failed_precondition(text),
        Error::InvalidArgument(_) => Status::invalid_argument(text),
        Error::NotFound(_) => Status::not_found(text),
        Error::Unauthenticated(_) => Status::unauthenticated(text),
        Error::Unimplemented(_) => Status::unimplemented(text),
        Error::Internal(_) => {
            tracing::error!("{text}");
            Status::internal(text)
        }
    }
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
    }
}
