//! The ceiling: the same payloads through a bare tonic + rustls service that answers every blob
//! with itself, with the same gRPC settings and TLS files as the SuperLinks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use flwr_transport::address::Address;
use tokio::task::JoinSet;
use tonic::{Request, Response, Status};

use crate::payload::CHUNK_SIZE;

/// Generated code of `proto/echo.proto`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("flwrbench.echo");
}

struct EchoService;

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoService {
    async fn echo(&self, request: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

/// What the echo server prints, with `address=`, once its echo service listens.
pub const SERVING: &str = "Echo service serving";

/// Serves the echo service on `address` (TLS from `tls`) and a plaintext health service on
/// `health`, until SIGTERM or SIGINT; prints both bound addresses (port 0 works).
pub async fn serve(
    address: &Address,
    health: &Address,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<()> {
    let listener = flwr_transport::grpc::bind("--address", address).await?;
    let health_listener = flwr_transport::grpc::bind("--health-server-address", health).await?;
    eprintln!("{SERVING} address={}", listener.local_addr()?);
    eprintln!(
        "Health service serving address={}",
        health_listener.local_addr()?
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let signal_stop = stop.clone();
    let signals = tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        signal_stop.cancel();
        std::io::Result::Ok(())
    });
    let routes = tonic::service::Routes::new(flwr_transport::limits!(
        pb::echo_server::EchoServer::new(EchoService)
    ));
    let echo = flwr_transport::server::serve(
        routes,
        listener,
        tls,
        flwr_transport::server::ServeOptions::default(),
        stop.clone(),
    );
    let health = flwr_transport::health::serve(health_listener, Default::default(), stop.clone());
    tokio::join!(echo, health);
    signals.abort();
    Ok(())
}

/// One round of the ceiling workload: `clients` clients each send `2 × bytes` in blobs of at most
/// [`CHUNK_SIZE`] (an instruction and a reply's worth, as a SuperLink moves them) and read them
/// back. Returns the payload bytes moved and the time taken.
pub async fn round(
    channels: &[tonic::transport::Channel],
    bytes: usize,
) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut set = JoinSet::new();
    let payload = Bytes::from(vec![7u8; CHUNK_SIZE]);
    for channel in channels {
        let payload = payload.clone();
        let mut client = flwr_transport::limits!(pb::echo_client::EchoClient::new(channel.clone()));
        set.spawn(async move {
            let mut left = 2 * bytes;
            let mut moved = 0u64;
            while left > 0 {
                let n = left.min(CHUNK_SIZE);
                let blob = pb::Blob {
                    data: payload.slice(..n),
                };
                let back = client.echo(blob).await.context("Echo")?.into_inner();
                moved += back.data.len() as u64;
                left -= n;
            }
            anyhow::Ok(moved)
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r.context("echo task")??;
    }
    Ok((total, started.elapsed()))
}
