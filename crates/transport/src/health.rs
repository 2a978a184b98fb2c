//! The plaintext `grpc.health.v1.Health` service behind `--health-server-address`.
//!
//! As in Flower, `Check` answers `SERVING` for any service name while the process serves, and
//! `Watch` is not implemented. Beyond Flower, a daemon can report `NOT_SERVING` through
//! [`HealthState`] while it cannot do its work (the SuperLink while its database is unreachable),
//! so that a load balancer drains it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Whether the daemon serves, shared by the health service and whoever knows.
#[derive(Clone, Debug)]
pub struct HealthState(Arc<Flags>);

#[derive(Debug)]
struct Flags {
    serving: AtomicBool,
    draining: AtomicBool,
}

impl Default for HealthState {
    fn default() -> Self {
        Self(Arc::new(Flags {
            serving: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        }))
    }
}

impl HealthState {
    /// Reports serving or not; returns whether that changed. Once draining, it stays not
    /// serving.
    pub fn set_serving(&self, serving: bool) -> bool {
        if self.0.draining.load(Ordering::SeqCst) {
            return false;
        }
        self.0.serving.swap(serving, Ordering::SeqCst) != serving
    }

    /// Not serving from now on: the daemon is shutting down (a load balancer should send its
    /// traffic elsewhere).
    pub fn drain(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
        self.0.serving.store(false, Ordering::SeqCst);
    }

    /// What `Check` answers now.
    pub fn serving(&self) -> bool {
        self.0.serving.load(Ordering::SeqCst) && !self.0.draining.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl Health for HealthState {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let status = if self.serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = Pin<
        Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>,
    >;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("Watch is not implemented"))
    }
}

/// The health service answering from `state`, ready to add to a router.
pub fn service(state: HealthState) -> HealthServer<HealthState> {
    HealthServer::new(state)
}

/// Serves the health service alone on `listener` (plaintext) until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: HealthState,
    shutdown: tokio_util::sync::CancellationToken,
) {
    crate::server::serve(
        tonic::service::Routes::new(service(state)),
        listener,
        None,
        crate::server::ServeOptions::default(),
        shutdown,
    )
    .await;
}

/// Asks a health service whether it serves (used by tests and readiness probes).
pub async fn check(channel: tonic::transport::Channel) -> Result<bool, Status> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(r.into_inner().status == ServingStatus::Serving as i32)
}
