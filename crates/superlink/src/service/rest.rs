//! The Fleet API on the REST transport (`--fleet-api-type rest`), as Flower 1.28.0 serves it:
//! HTTP/1.1 `POST /api/v0/fleet/<method in kebab case>` (`pull-messages`), the Fleet request as
//! the body, `Content-Type` and `Accept` both `application/protobuf` (else 400), the Fleet
//! response as the answer. Flower 1.28.0's own REST SuperNode doubles the leading slash of every
//! path but the heartbeat's (`//api/v0/fleet/register-node`), which Flower's server answers 404;
//! this one accepts both, so that unmodified REST SuperNodes work.
//!
//! Each call is handed to the same [`FleetService`] handler grpc-rere uses
//! ([`fleet_dispatch`]). Authentication: Flower's REST transport has none, and its SuperNode
//! signs nothing. A call that carries the signed metadata (our SuperNode signs its REST calls as
//! its gRPC ones, in the same headers) is verified exactly as on grpc-rere, before its body is
//! read; a call without it is taken to come from the node its body names, as Flower takes it,
//! and only while `--enable-supernode-auth` is off (the start-up log says so).
//!
//! Errors: Flower's server answers 500 to any failure of a handler. Ours answers the HTTP status
//! closest to the gRPC one (below), the status message as plain text, and the gRPC code in a
//! `grpc-status` header, from which our SuperNode rebuilds the status it would have had on
//! gRPC. Flower's SuperNode only tells 200 from the rest.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flwr_proto::adapter;
use flwr_transport::grpc::MAX_MESSAGE_BYTES;
use flwr_transport::node_auth::AuthError;
use flwr_transport::server::Connection;
use http::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::fleet::FleetService;
use super::fleet_dispatch::{self, Attribution};
use super::fleet_guard::{self, joins, MAX_JOIN_BODY_BYTES};
use super::status::to_status;
use crate::core::Core;
use crate::error::Error;

/// The media type of both bodies.
pub const PROTOBUF: &str = "application/protobuf";

/// The REST Fleet service.
#[derive(Clone)]
pub struct RestService {
    fleet: FleetService,
    core: Core,
}

impl RestService {
    /// The REST transport over the domain.
    pub fn new(core: Core) -> Self {
        Self {
            fleet: FleetService::new(core.clone()),
            core,
        }
    }

    async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(rpc) = adapter::by_rest_request_path(request.uri().path()) else {
            return plain(StatusCode::NOT_FOUND, "Not Found");
        };
        if request.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        if let Err(why) = check_headers(request.headers()) {
            return plain(StatusCode::BAD_REQUEST, why);
        }
        let connection = request.extensions().get::<Connection>().cloned();
        let (attribution, caller) = if fleet_guard::is_signed(request.headers()) {
            let proven = connection.as_ref().map(|c| &c.proven);
            match fleet_guard::authenticate_method(
                &self.core,
                rpc.method,
                request.headers(),
                proven,
            )
            .await
            {
                Ok(caller) => (Attribution::Verified, Some(caller)),
                Err(status) => return from_status(&status),
            }
        } else if self.core.settings().enable_supernode_auth {
            return from_status(&to_status(Error::NotAuthenticated(
                AuthError::MissingMetadata.to_string(),
            )));
        } else {
            (Attribution::Claimed, None)
        };
        // Bounded before it is read: a join's body is a key and a number; any other call's is
        // bounded by the message limit of every transport (and, per connection, by the server's
        // body budget).
        let limit = if joins(rpc.method).is_some() {
            MAX_JOIN_BODY_BYTES
        } else {
            MAX_MESSAGE_BYTES
        };
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return from_status(&to_status(Error::RequestTooLarge {
                    method: rpc.method,
                    limit,
                }))
            }
            Err(e) => {
                tracing::debug!(error = %e, "a REST request body could not be read");
                return plain(
                    StatusCode::BAD_REQUEST,
                    "The request body could not be read",
                );
            }
        };
        let mut call = tonic::Request::new(body);
        *call.metadata_mut() = MetadataMap::from_headers(parts.headers);
        if let Some(c) = connection {
            call.extensions_mut().insert(c);
        }
        if let Some(c) = caller {
            call.extensions_mut().insert(c);
        }
        match fleet_dispatch::call(&self.fleet, rpc, call, attribution).await {
            Ok(answer) => {
                let mut response = Response::new(Full::new(answer));
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
                headers.insert(GRPC_STATUS, HeaderValue::from(Code::Ok as i32));
                response
            }
            Err(status) => from_status(&status),
        }
    }
}

/// The header that carries the gRPC code of an answer.
const GRPC_STATUS: &str = "grpc-status";

/// Flower's header checks, with its texts.
fn check_headers(headers: &HeaderMap) -> Result<(), &'static str> {
    match headers.get(CONTENT_TYPE) {
        None => return Err("Missing header `Content-Type`"),
        Some(v) if v != PROTOBUF => return Err("Unsupported `Content-Type`"),
        Some(_) => {}
    }
    match headers.get(ACCEPT) {
        None => Err("Missing header `Accept`"),
        Some(v) if v != PROTOBUF => Err("Unsupported `Accept`"),
        Some(_) => Ok(()),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A refused call: the HTTP status nearest its gRPC code, its message, and the code itself.
fn from_status(status: &Status) -> Response<Full<Bytes>> {
    let mut response = plain(http_status(status.code()), status.message());
    response
        .headers_mut()
        .insert(GRPC_STATUS, HeaderValue::from(status.code() as i32));
    response
}

/// The HTTP status a REST answer has for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<B> tower::Service<Request<B>> for RestService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flowers_header_checks() {
        let mut h = HeaderMap::new();
        assert_eq!(check_headers(&h), Err("Missing header `Content-Type`"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert_eq!(check_headers(&h), Err("Unsupported `Content-Type`"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
        assert_eq!(check_headers(&h), Err("Missing header `Accept`"));
        h.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(check_headers(&h), Err("Unsupported `Accept`"));
        h.insert(ACCEPT, HeaderValue::from_static(PROTOBUF));
        assert_eq!(check_headers(&h), Ok(()));
    }
}
