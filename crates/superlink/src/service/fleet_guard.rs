//! Node authentication before the body: every Fleet call's signed metadata (public key,
//! timestamp, signature) is checked from its HTTP/2 headers, and for every call but RegisterNode
//! and ActivateNode the key must belong to a node, before a byte of the request body is read. A
//! caller that cannot sign, or signs with a key no node has, costs its headers and nothing more,
//! however large the body it announces. The two calls open to any key read at most
//! [`MAX_JOIN_BODY_BYTES`] of body. On the grpc-adapter transport the Fleet method is inside the
//! body, so a key without a node gets the joins' bound there. The handlers find the verified
//! caller in the request's extensions ([`Caller`]) and never verify again.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flwr_transport::node_auth::{self, AuthError};
use flwr_transport::server::{Connection, ProvenKey};
use http::{Request, Response};
use tonic::body::Body;
use tonic::server::NamedService;
use tower::{Service, ServiceExt};

use crate::core::Core;
use flwr_state::NodeId;

/// The verified caller of a Fleet call.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The public key (PEM bytes, as sent) whose signature checked out.
    pub public_key: Bytes,
    /// The node that key belongs to (`None` only for RegisterNode and ActivateNode).
    pub node: Option<NodeId>,
}

/// Why a call was refused from its headers; each is UNAUTHENTICATED with Flower's text.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The metadata is missing, the signature or the timestamp is wrong.
    #[error(transparent)]
    Signature(#[from] AuthError),
    /// The key belongs to no node.
    #[error("Invalid node ID")]
    UnknownNode,
    /// The node lookup failed.
    #[error(transparent)]
    State(#[from] crate::error::Error),
}

/// What a call's key must have, decided from its path before the body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// RegisterNode or ActivateNode: any key.
    Join(&'static str),
    /// A grpc-adapter call, whose Fleet method is inside the body: a key with a node may send any
    /// call; a key without one can only be joining, so its body is capped as a join's.
    Adapter,
    /// Every other call: a key that belongs to a node.
    Node,
}

/// The Fleet method `method` when it is one any key may call (joining), whatever the transport.
pub fn joins(method: &str) -> Option<&'static str> {
    ["RegisterNode", "ActivateNode"]
        .into_iter()
        .find(|j| *j == method)
}

fn access(path: &str) -> Access {
    let method = path.rsplit('/').next().unwrap_or_default();
    match joins(method) {
        Some(m) => Access::Join(m),
        None if method == "SendReceive" => Access::Adapter,
        None => Access::Node,
    }
}

/// The most a RegisterNode or ActivateNode request body may hold. Anyone can make a key and sign
/// with it, so these two calls are as good as unauthenticated; their bodies are a public key and
/// a number (a few hundred bytes), and a larger one is refused as soon as it passes this bound
/// instead of being buffered up to the 512 MiB message limit.
pub const MAX_JOIN_BODY_BYTES: usize = 64 * 1024;

/// A request body that fails with RESOURCE_EXHAUSTED once more than `left` bytes came through.
struct CappedBody {
    inner: Body,
    left: usize,
    method: &'static str,
}

impl http_body::Body for CappedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                if len > this.left {
                    this.left = 0;
                    return Poll::Ready(Some(Err(super::status::to_status(
                        crate::error::Error::RequestTooLarge {
                            method: this.method,
                            limit: MAX_JOIN_BODY_BYTES,
                        },
                    ))));
                }
                this.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Checks the signed metadata in `headers` (time window first, then the signature) and, unless
/// the call joins, finds the key's node (on the adapter, the node it may have).
///
/// With `--fleet-auth-per-connection` (`Settings::proof_per_connection`), a key whose signature
/// was verified on this `connection` within that time needs only the time window: the peer at
/// the other end of a connection proved it holds the private key, and while every connection
/// belongs to one peer (no proxy multiplexing clients), a later call on it with the same key
/// comes from that peer. A call on any other connection, or with another key, is verified in
/// full. The key's node is looked up on every call either way, so an unregistered node is refused
/// at once.
async fn authenticate(
    core: &Core,
    access: Access,
    headers: &http::HeaderMap,
    connection: Option<&ProvenKey>,
) -> Result<Caller, Refusal> {
    let Some((public_key, ts, sig)) = node_auth::signed_metadata(headers) else {
        return Err(AuthError::MissingMetadata.into());
    };
    let now = chrono::Utc::now();
    let vouched = match (core.settings().proof_per_connection, connection) {
        (Some(max_age), Some(c)) => c.holds(&public_key, max_age),
        _ => false,
    };
    // Vouched for by the connection, or verified before (a repeated call): the window is all
    // that can have changed. The digest is computed once, for the lookup and the insert.
    let digest = (!vouched).then(|| node_auth::VerifiedSignatures::digest(&public_key, ts, &sig));
    let known = match &digest {
        None => Some("skipped"),
        Some(d) if core.verified().contains(d) => Some("cached"),
        Some(_) => None,
    };
    if let Some(outcome) = known {
        metrics::counter!("flwr_signature_checks_total", "outcome" => outcome).increment(1);
        if !node_auth::timestamp_in_window(ts, now) {
            return Err(AuthError::InvalidTimestamp.into());
        }
    } else {
        let verified = core
            .parse_key(&public_key)
            .ok_or(AuthError::InvalidSignature)
            .and_then(|parsed| node_auth::verify_signed_timestamp(&parsed, ts, &sig, now));
        let outcome = if verified.is_ok() { "valid" } else { "invalid" };
        metrics::counter!("flwr_signature_checks_total", "outcome" => outcome).increment(1);
        verified?;
        if let Some(d) = digest {
            core.verified().insert(d);
        }
        if let (Some(_), Some(c)) = (core.settings().proof_per_connection, connection) {
            c.proved(public_key.clone());
        }
    }
    let node = match access {
        Access::Join(_) => None,
        Access::Adapter => core.node_for_key(public_key.clone()).await?,
        Access::Node => Some(
            core.node_for_key(public_key.clone())
                .await?
                .ok_or(Refusal::UnknownNode)?,
        ),
    };
    if let Some(id) = node {
        tracing::Span::current().record("node_id", id);
    }
    Ok(Caller { public_key, node })
}

/// The status a refused call gets.
fn refusal_status(refusal: Refusal) -> tonic::Status {
    match refusal {
        Refusal::State(e) => super::status::to_status(e),
        other => super::status::to_status(crate::error::Error::NotAuthenticated(other.to_string())),
    }
}

/// [`authenticate`] for a transport that knows the Fleet method before the body (REST): the
/// caller of a call to `method` signed in `headers`, or the status that refuses it.
pub async fn authenticate_method(
    core: &Core,
    method: &'static str,
    headers: &http::HeaderMap,
    connection: Option<&ProvenKey>,
) -> Result<Caller, tonic::Status> {
    let access = match joins(method) {
        Some(m) => Access::Join(m),
        None => Access::Node,
    };
    authenticate(core, access, headers, connection)
        .await
        .map_err(refusal_status)
}

/// Whether `headers` carry any of the signed metadata (a REST call from Flower's SuperNode
/// carries none).
pub fn is_signed(headers: &http::HeaderMap) -> bool {
    [
        node_auth::PUBLIC_KEY_HEADER,
        node_auth::TIMESTAMP_HEADER,
        node_auth::SIGNATURE_HEADER,
    ]
    .into_iter()
    .any(|h| headers.contains_key(h))
}

/// The Fleet service behind [`authenticate`].
#[derive(Clone)]
pub struct FleetGuard<S> {
    inner: S,
    core: Core,
}

impl<S> FleetGuard<S> {
    /// Guards `inner`.
    pub fn new(inner: S, core: Core) -> Self {
        Self { inner, core }
    }
}

impl<S: NamedService> NamedService for FleetGuard<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for FleetGuard<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is made ready per call (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> <Self as Service<Request<Body>>>::Future {
        let inner = self.inner.clone();
        let core = self.core.clone();
        Box::pin(async move {
            let connection = request
                .extensions()
                .get::<Connection>()
                .map(|c| c.proven.clone());
            let access = access(request.uri().path());
            let verdict = authenticate(&core, access, request.headers(), connection.as_ref()).await;
            match verdict {
                Ok(caller) => {
                    let capped = match access {
                        Access::Join(method) => Some(method),
                        Access::Adapter if caller.node.is_none() => Some("SendReceive"),
                        _ => None,
                    };
                    request.extensions_mut().insert(caller);
                    if let Some(method) = capped {
                        request = request.map(|inner| {
                            Body::new(CappedBody {
                                inner,
                                left: MAX_JOIN_BODY_BYTES,
                                method,
                            })
                        });
                    }
                    inner.oneshot(request).await
                }
                Err(refusal) => {
                    // The body is dropped unread: HTTP/2 resets the stream.
                    Ok(refusal_status(refusal).into_http())
                }
            }
        })
    }
}
