//! Serving gRPC services on a listener this crate owns, one task per connection.
//!
//! Owning the accept loop (rather than tonic's `Server`) is what lets a daemon bound what a peer
//! can make it hold, before any request is read:
//! - **Connections**: at most [`ServeOptions::max_connections`] at once (TLS handshakes included);
//!   one over the cap is closed at once, which a client sees as UNAVAILABLE and retries.
//! - **Peers**: an optional allow-list of networks ([`PeerFilter`]); other peers are closed before
//!   a byte is read.
//! - **Idle connections**: a connection with no request in flight for
//!   [`ServeOptions::idle_timeout`] is closed gracefully (GOAWAY; clients reconnect when they
//!   need to).
//! - **Body bytes**: request bodies pass through a per-connection [`BodyBudget`]. Each gRPC
//!   message's length prefix is read first and the message may only flow once the connection's
//!   budget holds that many bytes (small messages have a budget of their own, so that a heartbeat
//!   never waits behind an upload). Until then HTTP/2 flow control holds the peer back; the bytes
//!   stay counted until the response is done. A service that refuses a request from its
//!   headers (see the SuperLink's Fleet guard) never reads its body at all.
//! - **HTTP/2**: hyper's limits against rapid resets, header floods and oversized header lists.
//!
//! Every request carries a [`Connection`] in its extensions (peer, connection id). Shutdown
//! stops accepting, asks every connection to finish (GOAWAY, in-flight requests complete) and
//! waits for them; the caller bounds that wait.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use crate::grpc::{
    CONNECTION_WINDOW, HANDSHAKE_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
    MAX_CONCURRENT_STREAMS, MAX_MESSAGE_BYTES, STREAM_WINDOW,
};

/// How many request body bytes one connection may have in flight (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyBudget {
    /// Bytes of large messages: by default one message of the largest size.
    pub large: usize,
    /// A message at most this long counts against `small`.
    pub small_message: usize,
    /// Bytes of small messages.
    pub small: usize,
}

impl Default for BodyBudget {
    fn default() -> Self {
        Self {
            large: MAX_MESSAGE_BYTES,
            small_message: 1024 * 1024,
            small: 64 * 1024 * 1024,
        }
    }
}
/// The largest header list a peer may send (hyper's default, stated): Flower's metadata is a few
/// hundred bytes.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Streams a peer may reset before the server has accepted them, then the connection is closed
/// (the HTTP/2 "rapid reset" attack, CVE-2023-44487).
const MAX_PENDING_RESETS: usize = 20;
/// Streams the server may have to reset because of a peer's errors, then the connection closes.
const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// An idle connection asked to close (GOAWAY) is dropped after this long, also when the peer
/// never answers the closing handshake.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Limits of one server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Connections open at once (including those still in their TLS handshake).
    pub max_connections: usize,
    /// A connection without a request in flight for this long is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Only peers in these networks may connect; `None`: everyone.
    pub allow: Option<Arc<PeerFilter>>,
    /// Request body bytes in flight per connection.
    pub body_budget: BodyBudget,
    /// The `api` label of this server's metrics (e.g. `fleet`).
    pub api: &'static str,
    /// Which HTTP the connections speak.
    pub protocol: Protocol,
}

/// The HTTP version a server speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 only (gRPC).
    #[default]
    Http2,
    /// HTTP/1.1 only (the REST transport).
    Http1,
}

/// How long an HTTP/1.1 client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            idle_timeout: None,
            allow: None,
            body_budget: BodyBudget::default(),
            api: "grpc",
            protocol: Protocol::Http2,
        }
    }
}

/// The connection a request came on (in every request's extensions).
#[derive(Clone, Debug)]
pub struct Connection {
    /// Unique in this process.
    pub id: u64,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The key the peer on this connection last proved it holds (kept for the connection's
    /// life; used only when per-connection proof is turned on).
    pub proven: ProvenKey,
}

/// The public key a connection's peer proved it holds by a verified signature, and when.
#[derive(Clone, Debug, Default)]
pub struct ProvenKey(Arc<parking_lot::Mutex<Option<(Bytes, Instant)>>>);

impl ProvenKey {
    /// True when `key` (the exact bytes sent) was proved on this connection less than `max_age`
    /// ago.
    pub fn holds(&self, key: &[u8], max_age: Duration) -> bool {
        self.0
            .lock()
            .as_ref()
            .is_some_and(|(k, at)| k.as_ref() == key && at.elapsed() < max_age)
    }

    /// Records that `key` was proved now (replacing any other key).
    pub fn proved(&self, key: Bytes) {
        *self.0.lock() = Some((key, Instant::now()));
    }
}

/// Networks whose peers may connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerFilter {
    networks: Vec<ipnet::IpNet>,
}

/// A network in an allow-list could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{flag}`: `{value}` is not a network (write it as an address, `10.0.0.0/8` or `fd00::/8`)"
)]
pub struct PeerFilterError {
    flag: &'static str,
    value: String,
}

impl PeerFilter {
    /// Parses comma-separated networks or addresses given to `flag` (`127.0.0.1,10.0.0.0/8`).
    pub fn parse(flag: &'static str, list: &str) -> Result<Self, PeerFilterError> {
        let mut networks = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| PeerFilterError {
                    flag,
                    value: item.to_owned(),
                })?;
            networks.push(net);
        }
        if networks.is_empty() {
            return Err(PeerFilterError {
                flag,
                value: list.to_owned(),
            });
        }
        Ok(Self { networks })
    }

    /// True when `ip` is in one of the networks (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(&ip))
    }
}

/// Warns when an API without authentication listens beyond the loopback with no allow-list.
pub fn warn_if_exposed(api: &str, bound: SocketAddr, restricted: bool, flag: &str) {
    if bound.ip().is_loopback() || restricted {
        return;
    }
    tracing::warn!(
        address = %bound,
        "The {api} has no authentication and listens beyond this machine: whoever reaches it can \
         read and change every run. Keep it on a private network or behind a firewall, bind it \
         to 127.0.0.1, or name the allowed clients with `{flag}`."
    );
}

/// Serves `service` on `listener` (over TLS when `tls` is given) until `shutdown` is cancelled,
/// then lets open connections finish their requests and returns when they are closed.
pub async fn serve<S, B>(
    service: S,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    options: ServeOptions,
    shutdown: CancellationToken,
) where
    S: Service<Request<BudgetBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut handshakes: JoinSet<Option<Accepted>> = JoinSet::new();
    let acceptor = tls.map(TlsAcceptor::from);
    let mut refused = RateLimitedWarning::new(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Some(filter) = &options.allow {
                    if !filter.allows(peer.ip()) {
                        tracing::debug!(%peer, "connection from a network not allowed; closed");
                        metrics::counter!("flwr_connections_refused_total", "api" => options.api, "reason" => "network").increment(1);
                        continue;
                    }
                }
                let Ok(slot) = slots.clone().try_acquire_owned().map(|p| Slot::new(p, options.api)) else {
                    metrics::counter!("flwr_connections_refused_total", "api" => options.api, "reason" => "limit").increment(1);
                    refused.warn(|n| tracing::warn!(
                        server = %name,
                        max = options.max_connections,
                        refused = n,
                        "connection limit reached: new connections are closed"
                    ));
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                match &acceptor {
                    None => spawn_connection(&connections, Box::new(tcp), peer, slot, &service, &options, &shutdown),
                    Some(acceptor) => {
                        handshakes.spawn(handshake(acceptor.clone(), tcp, peer, slot, options.api));
                    }
                }
            }
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                if let Ok(Some((io, peer, slot))) = done {
                    spawn_connection(&connections, io, peer, slot, &service, &options, &shutdown);
                }
            }
        }
    }
    drop(listener);
    handshakes.abort_all();
    connections.close();
    connections.wait().await;
}

/// A connection's byte stream, plaintext or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection through its TLS handshake, with its peer and its slot under the cap.
type Accepted = (Box<dyn Io>, SocketAddr, Slot);

/// A connection's place under the cap; counted in `flwr_connections_open` while it is held.
struct Slot {
    _permit: OwnedSemaphorePermit,
    api: &'static str,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, api: &'static str) -> Self {
        metrics::gauge!("flwr_connections_open", "api" => api).increment(1.0);
        Self {
            _permit: permit,
            api,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("flwr_connections_open", "api" => self.api).decrement(1.0);
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    api: &'static str,
) -> Option<Accepted> {
    let (accepted, outcome) =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => (Some((Box::new(stream) as Box<dyn Io>, peer, slot)), "ok"),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                (None, "failed")
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                (None, "timeout")
            }
        };
    metrics::counter!("flwr_tls_handshakes_total", "api" => api, "outcome" => outcome).increment(1);
    accepted
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

fn spawn_connection<S, B>(
    tracker: &TaskTracker,
    io: Box<dyn Io>,
    peer: SocketAddr,
    slot: Slot,
    service: &S,
    options: &ServeOptions,
    shutdown: &CancellationToken,
) where
    S: Service<Request<BudgetBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = Connection {
        id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        peer,
        proven: ProvenKey::default(),
    };
    tracker.spawn(serve_connection(
        io,
        connection,
        service.clone(),
        options.clone(),
        shutdown.clone(),
        slot,
    ));
}

async fn serve_connection<S, B>(
    io: Box<dyn Io>,
    connection: Connection,
    service: S,
    options: ServeOptions,
    shutdown: CancellationToken,
    _slot: Slot,
) where
    S: Service<Request<BudgetBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(watch::Sender::new(Activity {
        in_flight: 0,
        idle_since: Instant::now(),
    }));
    let budget = Budget::new(options.body_budget);
    let peer = connection.peer;
    let id = connection.id;
    let per_request = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let slot = Arc::new(RequestSlot::new(activity.clone()));
            let mut req = req.map(|body| BudgetBody::new(body, budget.clone(), slot.clone()));
            req.extensions_mut().insert(connection.clone());
            let call = service.clone().oneshot(req);
            async move {
                let response = match call.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| GuardedBody { body, _slot: slot }))
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder = match options.protocol {
        Protocol::Http2 => builder.http2_only(),
        Protocol::Http1 => builder.http1_only(),
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS);
    let conn = builder.serve_connection(TokioIo::new(io), per_request);
    tokio::pin!(conn);
    let mut idle_watch = activity.subscribe();
    let mut closing = false;
    let drop_at = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drop_at);
    let mut dropping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, connection = id, error = %e, "connection ended with an error");
                }
                break;
            }
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = idle(&mut idle_watch, options.idle_timeout), if !closing => {
                tracing::debug!(%peer, connection = id, "closing an idle connection");
                closing = true;
                conn.as_mut().graceful_shutdown();
                // Nothing is in flight: a peer that does not take part in the close is dropped.
                drop_at.as_mut().reset(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                dropping = true;
            }
            () = drop_at.as_mut(), if dropping => {
                tracing::debug!(%peer, connection = id, "dropping an idle connection that did not close");
                break;
            }
        }
    }
}

/// Requests in flight on a connection, and since when it has had none.
#[derive(Clone, Copy, Debug)]
struct Activity {
    in_flight: usize,
    idle_since: Instant,
}

/// Resolves once the connection has had no request in flight for `timeout`; never without one.
async fn idle(activity: &mut watch::Receiver<Activity>, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        let now = *activity.borrow_and_update();
        if now.in_flight > 0 {
            if activity.changed().await.is_err() {
                return std::future::pending().await;
            }
            continue;
        }
        // A timeout beyond what the clock can hold (`--connection-idle-timeout 1e19`) never
        // comes.
        let Some(deadline) = now.idle_since.checked_add(timeout) else {
            return std::future::pending().await;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return,
            changed = activity.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// One request's hold on its connection: counts as in flight, and keeps the body budget it took,
/// until both its request body and its response body are gone.
struct RequestSlot {
    activity: Arc<watch::Sender<Activity>>,
    permits: Mutex<Vec<OwnedSemaphorePermit>>,
}

impl RequestSlot {
    fn new(activity: Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| a.in_flight += 1);
        Self {
            activity,
            permits: Mutex::new(Vec::new()),
        }
    }

    fn keep(&self, permit: OwnedSemaphorePermit) {
        if let Ok(mut p) = self.permits.lock() {
            p.push(permit);
        }
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.activity.send_modify(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 {
                a.idle_since = Instant::now();
            }
        });
    }
}

/// A connection's body budget.
#[derive(Clone)]
struct Budget {
    limits: BodyBudget,
    large: Arc<Semaphore>,
    small: Arc<Semaphore>,
}

impl Budget {
    fn new(limits: BodyBudget) -> Self {
        Self {
            limits,
            large: Arc::new(Semaphore::new(limits.large)),
            small: Arc::new(Semaphore::new(limits.small)),
        }
    }
}

type Acquiring = Pin<
    Box<
        dyn std::future::Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>>
            + Send,
    >,
>;

/// A request body that lets each gRPC message through only once the connection's budget holds
/// its declared length (see the module documentation).
pub struct BudgetBody {
    inner: Incoming,
    budget: Budget,
    slot: Arc<RequestSlot>,
    /// Bytes of the current message still to pass; 0 while reading a length prefix.
    message_left: u64,
    /// Length-prefix bytes read so far.
    prefix: [u8; 5],
    prefix_len: usize,
    /// A data frame held back until its message's budget is acquired.
    held: Option<Bytes>,
    acquiring: Option<Acquiring>,
}

impl BudgetBody {
    fn new(inner: Incoming, budget: Budget, slot: Arc<RequestSlot>) -> Self {
        Self {
            inner,
            budget,
            slot,
            message_left: 0,
            prefix: [0; 5],
            prefix_len: 0,
            held: None,
            acquiring: None,
        }
    }

    /// Walks `data` through the message framing; returns the budget to acquire before `data`
    /// may pass, if a new message starts in it.
    fn scan(&mut self, data: &Bytes) -> Option<Acquiring> {
        let mut rest = data.clone();
        let mut acquire = None;
        while rest.has_remaining() {
            if self.message_left > 0 {
                let n = (self.message_left).min(rest.remaining() as u64);
                rest.advance(n as usize);
                self.message_left -= n;
                continue;
            }
            let n = (5 - self.prefix_len).min(rest.remaining());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&rest[..n]);
            rest.advance(n);
            self.prefix_len += n;
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                self.message_left = u64::from(len);
                let len = len as usize;
                let limits = self.budget.limits;
                // A message larger than a budget takes all of it (the codec refuses messages over
                // the size limit from their prefix alone).
                let (pool, take) = if len <= limits.small_message {
                    (&self.budget.small, len.min(limits.small))
                } else {
                    (&self.budget.large, len.min(limits.large))
                };
                if take > 0 {
                    let pool = pool.clone();
                    let take = u32::try_from(take).unwrap_or(u32::MAX);
                    let next: Acquiring = Box::pin(pool.acquire_many_owned(take));
                    acquire = Some(match acquire.take() {
                        None => next,
                        // Two messages start in one frame: take both budgets in turn.
                        Some(first) => chain(first, next, self.slot.clone()),
                    });
                }
            }
        }
        acquire
    }
}

fn chain(first: Acquiring, second: Acquiring, slot: Arc<RequestSlot>) -> Acquiring {
    Box::pin(async move {
        slot.keep(first.await?);
        second.await
    })
}

impl Body for BudgetBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(acquiring) = this.acquiring.as_mut() {
                // The semaphores are never closed, so this is never an error.
                if let Ok(permit) = ready!(acquiring.as_mut().poll(cx)) {
                    this.slot.keep(permit);
                }
                this.acquiring = None;
            }
            if let Some(data) = this.held.take() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                other => return Poll::Ready(other),
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            match this.scan(&data) {
                None => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Some(acquiring) => {
                    this.acquiring = Some(acquiring);
                    this.held = Some(data);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request's slot until it is done.
    struct GuardedBody<B> {
        #[pin]
        body: B,
        _slot: Arc<RequestSlot>,
    }
}

impl<B: Body> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A warning logged at most once per period, with the count of occurrences in between.
struct RateLimitedWarning {
    period: Duration,
    last: Option<Instant>,
    count: u64,
}

impl RateLimitedWarning {
    fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            count: 0,
        }
    }

    fn warn(&mut self, log: impl FnOnce(u64)) {
        self.count += 1;
        if self.last.is_none_or(|t| t.elapsed() >= self.period) {
            log(self.count);
            self.count = 0;
            self.last = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--connection-idle-timeout 1e19`: a deadline past what the clock holds never comes (it
    /// panicked in `Instant + Duration`); an ordinary one does.
    #[tokio::test]
    async fn an_idle_timeout_beyond_the_clock_never_fires() {
        let (_tx, mut rx) = watch::channel(Activity {
            in_flight: 0,
            idle_since: Instant::now(),
        });
        let never = Duration::try_from_secs_f64(1e19).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), idle(&mut rx, Some(never)));
        assert!(waited.await.is_err(), "still waiting");
        let soon = tokio::time::timeout(
            Duration::from_secs(5),
            idle(&mut rx, Some(Duration::from_millis(10))),
        );
        assert!(soon.await.is_ok(), "an ordinary timeout fires");
    }
}
