//! Prometheus metrics, served as text on `--metrics-address` (off by default).
//!
//! The daemons record through the [`metrics`] facade (`metrics::counter!` and friends) wherever
//! something happens; one recorder per process ([`install`]) keeps the figures and renders them
//! in the Prometheus text format, through `metrics-exporter-prometheus`. Without
//! `--metrics-address` no recorder is installed and every record is a no-op.
//!
//! Here too: the gRPC instrumentation every server of ours shares ([`Instrumented`]: one
//! latency histogram by API, method and status code), the connection and TLS handshake counters
//! of [`crate::server`], and the process figures (CPU, memory, open files).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::Instrument;

/// Latency buckets of every `_seconds` histogram: from a cached answer to a held pull.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// How often histograms are compacted (the exporter's upkeep).
const UPKEEP: Duration = Duration::from_secs(5);

/// How long a scrape waits for the figures read from the state.
const REFRESH_LIMIT: Duration = Duration::from_secs(5);

/// Scrape connections open at once; more are closed at once (a scraper needs one or two).
const MAX_SCRAPE_CONNECTIONS: usize = 32;

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The exporter refused its configuration (never with the buckets above).
    #[error("cannot set up the Prometheus exporter: {0}")]
    Exporter(String),
    /// Another recorder was installed in this process first.
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
}

/// The process's recorder, installed once: a second daemon in the same process (tests) shares it.
static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process's recorder (once) and describes the metrics every daemon has.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let mut slot = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(h) = &*slot {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| MetricsError::Exporter(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| MetricsError::Install(e.to_string()))?;
    *slot = Some(handle.clone());
    describe();
    metrics_process::Collector::default().describe();
    Ok(handle)
}

/// With `--metrics-address`: the recorder ([`install`]) and the daemon's own descriptions
/// (`describe`); without it, nothing (recording stays a no-op).
pub fn install_if_serving(
    address: Option<&crate::address::Address>,
    describe: fn(),
) -> Result<Option<PrometheusHandle>, MetricsError> {
    let Some(_) = address else {
        return Ok(None);
    };
    let handle = install()?;
    describe();
    Ok(Some(handle))
}

fn describe() {
    metrics::describe_histogram!(
        "flwr_rpc_duration_seconds",
        metrics::Unit::Seconds,
        "gRPC calls served, by API, method and gRPC status code, and how long each took (a stream: until its end)"
    );
    metrics::describe_gauge!(
        "flwr_connections_open",
        "Connections open now, by API (TLS handshakes in progress included)"
    );
    metrics::describe_counter!(
        "flwr_connections_refused_total",
        "Connections closed before a byte was read, by API and reason (limit: --max-connections reached; network: not in the allowed networks)"
    );
    metrics::describe_counter!(
        "flwr_tls_handshakes_total",
        "TLS handshakes, by API and outcome (ok, failed, timeout)"
    );
    metrics::describe_gauge!(
        "flwr_tls_certificate_expiry_timestamp_seconds",
        "When the certificates in use expire (Unix time; the earliest of each file), by the flag that names the file"
    );
}

/// Serves `GET /metrics` on `listener` (plaintext HTTP/1.1) until `stop` is cancelled. Every
/// scrape first refreshes the process figures and, through `refresh`, whatever the daemon
/// reads at scrape time (gauges of stored state).
pub async fn serve<F, Fut>(
    listener: TcpListener,
    handle: PrometheusHandle,
    refresh: F,
    stop: CancellationToken,
) where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let connections = TaskTracker::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    let collector = std::sync::Arc::new(metrics_process::Collector::default());
    let mut upkeep = tokio::time::interval(UPKEEP);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = upkeep.tick() => handle.run_upkeep(),
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "too many metrics connections: closed");
                    continue;
                };
                let (handle, refresh, collector) = (handle.clone(), refresh.clone(), collector.clone());
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (handle, refresh, collector) = (handle.clone(), refresh.clone(), collector.clone());
                    async move {
                        if req.uri().path() != "/metrics" {
                            return Ok::<_, Infallible>(text(http::StatusCode::NOT_FOUND, "try /metrics\n".into()));
                        }
                        // A database that does not answer leaves the other figures scrapable.
                        if tokio::time::timeout(REFRESH_LIMIT, refresh()).await.is_err() {
                            tracing::debug!("metrics: the state did not answer in time; its figures are the last ones read");
                        }
                        collector.collect();
                        Ok(text(http::StatusCode::OK, handle.render()))
                    }
                });
                let stop = stop.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                        },
                        () = stop.cancelled() => {}
                    }
                });
            }
        }
    }
    connections.close();
    connections.wait().await;
}

fn text(status: http::StatusCode, body: String) -> Response<http_body_util::Full<Bytes>> {
    let mut r = Response::new(http_body_util::Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// A gRPC service whose calls are timed into `flwr_rpc_duration_seconds` with their API, method
/// (the last part of the path) and status code (from the trailers, or the headers of an
/// answer without a body).
#[derive(Clone)]
pub struct Instrumented<S> {
    api: &'static str,
    known: fn(&str) -> bool,
    inner: S,
}

impl<S> Instrumented<S> {
    /// `api`: the label of the server, e.g. `fleet`; `known`: whether a request path is an RPC
    /// of the schema (any other is timed as method [`UNKNOWN_METHOD`], so that a peer cannot
    /// grow the metrics with names of its own).
    pub fn new(api: &'static str, known: fn(&str) -> bool, inner: S) -> Self {
        Self { api, known, inner }
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for Instrumented<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
{
    type Response = Response<TimedBody<B>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let path = req.uri().path();
        let method = match path.rsplit('/').next() {
            Some(m) if (self.known)(path) => m,
            _ => UNKNOWN_METHOD,
        }
        .to_owned();
        let peer = req
            .extensions()
            .get::<crate::server::Connection>()
            .map(|c| c.peer.to_string());
        // Everything logged while the call is handled carries this span; the handlers fill in
        // the node and the run when they know them.
        let span = tracing::info_span!(
            "rpc",
            api = %self.api,
            method = %method,
            peer = %peer.as_deref().unwrap_or(""),
            node_id = tracing::field::Empty,
            run_id = tracing::field::Empty,
            code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let mut timer = Timer {
            api: self.api,
            method,
            start: Instant::now(),
            code: None,
            span: span.clone(),
        };
        let call = span.in_scope(|| self.inner.call(req));
        Box::pin(
            async move {
                let response = call.await?;
                timer.code = grpc_status(response.headers());
                Ok(response.map(|body| TimedBody { body, timer }))
            }
            .instrument(span),
        )
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<&'static str> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(code_name(tonic::Code::from_i32(code)))
}

/// The name gRPC gives a status code (`UNAVAILABLE`), as the `code` label of the metrics.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `method` label of calls to a path outside the schema.
pub const UNKNOWN_METHOD: &str = "unknown";

/// One call being timed; recorded once, when its response body is done or dropped (a call the
/// peer gave up on before its status was sent counts as CANCELLED).
struct Timer {
    api: &'static str,
    method: String,
    start: Instant,
    code: Option<&'static str>,
    span: tracing::Span,
}

impl Drop for Timer {
    fn drop(&mut self) {
        let seconds = self.start.elapsed().as_secs_f64();
        let code = self.code.unwrap_or("CANCELLED");
        self.span.record("code", code);
        self.span.record(
            "otel.status_code",
            if code == "OK" { "OK" } else { "ERROR" },
        );
        tracing::debug!(parent: &self.span, code, seconds, "call done");
        metrics::histogram!(
            "flwr_rpc_duration_seconds",
            "api" => self.api,
            "method" => std::mem::take(&mut self.method),
            "code" => code,
        )
        .record(seconds);
    }
}

pin_project_lite::pin_project! {
    /// A response body that reads the status code from its trailers.
    pub struct TimedBody<B> {
        #[pin]
        body: B,
        timer: Timer,
    }
}

impl<B: Body> Body for TimedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(code) = f.trailers_ref().and_then(grpc_status) {
                this.timer.code = Some(code);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_named_as_grpc_names_them() {
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(grpc_status(&h), Some("UNAUTHENTICATED"));
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&h), Some("OK"));
    }
}
