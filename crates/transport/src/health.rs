//! The plaintext `grpc.health.v1.Health` service behind `--health-server-address`.
//!
//! As in Flower, `Check` answers `SERVING` for any service name while the process serves, and
//! `Watch` is not implemented.

use std::pin::Pin;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Health answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysServing;

#[tonic::async_trait]
impl Health for AlwaysServing {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
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

/// The health service, ready to add to a router.
pub fn service() -> HealthServer<AlwaysServing> {
    HealthServer::new(AlwaysServing)
}

/// Serves the health service alone on `listener` (plaintext) until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shutdown: tokio_util::sync::CancellationToken) {
    crate::server::serve(
        tonic::service::Routes::new(service()),
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
