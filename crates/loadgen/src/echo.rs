//! The ceiling: the same payloads through a bare tonic + rustls service that answers every blob
//! with itself, with the same gRPC settings and TLS files as the SuperLinks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use flwr_transport::address::Address;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
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
/// `health`, until SIGTERM, SIGINT or SIGQUIT; prints both bound addresses (port 0 works).
pub async fn serve(
    address: &Address,
    health: &Address,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<()> {
    // Handlers first: a SIGTERM right after the serving line must stop it gracefully.
    let mut signals = flwr_transport::signals::ShutdownSignals::install();
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
        signals.recv().await;
        signal_stop.cancel();
    });
    let routes = tonic::service::Routes::new(flwr_transport::limits!(
        pb::echo_server::EchoServer::new(EchoService)
    ));
    // As many connections as the open-file limit allows, as the daemons do (the idle floor
    // holds as many clients as the idle fleet has nodes).
    let options = flwr_transport::server::ServeOptions {
        max_connections: flwr_daemon::connections::default_max_connections(
            flwr_daemon::connections::raise_open_file_limit(),
        ),
        ..Default::default()
    };
    let echo = flwr_transport::server::serve(routes, listener, tls, options, stop.clone());
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

/// The floor of the idle rows: clients of the bare echo service, each on its own connection,
/// making one small call at the idle nodes' heartbeat cadence with the headers a signed
/// heartbeat carries (a public key that stays the same, a timestamp and a signature that change),
/// so that the service does what a SuperLink does for an idle node minus the SuperLink.
pub struct IdleClients {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

/// Bytes of a P-384 public key in PEM, and of an ECDSA P-384 signature in DER, as SuperNodes
/// send them.
const KEY_PEM_BYTES: usize = 215;
const SIGNATURE_BYTES: usize = 103;
/// Clients connecting at once.
const CONNECTING_AT_ONCE: usize = 200;

impl IdleClients {
    /// Connects one client per channel (a first call each), then starts their calls, `interval`
    /// being the heartbeat interval the idle nodes announce.
    pub async fn start(channels: &[tonic::transport::Channel], interval: f64) -> Result<Self> {
        let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
        let mut connecting = JoinSet::new();
        for (i, channel) in channels.iter().enumerate() {
            let client = flwr_transport::limits!(pb::echo_client::EchoClient::new(channel.clone()));
            let gate = gate.clone();
            connecting.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let mut caller = Caller::new(i, client);
                caller.call().await?;
                anyhow::Ok(caller)
            });
        }
        let stop = CancellationToken::new();
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        while let Some(connected) = connecting.join_next().await {
            let mut caller = connected.context("connecting task")??;
            let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(crate::sim::heartbeat_wait(interval)) => {}
                    }
                    let counter = if caller.call().await.is_ok() {
                        &answered
                    } else {
                        &failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Ok(Self {
            stop,
            tasks,
            answered,
            failed,
        })
    }

    /// Calls answered and failed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Stops every client.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One idle client: its connection and the headers it sends.
struct Caller {
    client: pb::echo_client::EchoClient<tonic::transport::Channel>,
    key: Bytes,
    calls: u64,
}

impl Caller {
    fn new(i: usize, client: pb::echo_client::EchoClient<tonic::transport::Channel>) -> Self {
        let key = (0..KEY_PEM_BYTES)
            .map(|b| (b ^ i) as u8)
            .collect::<Vec<u8>>()
            .into();
        Self {
            client,
            key,
            calls: 0,
        }
    }

    /// One heartbeat-sized call (a 20-byte body, as SendNodeHeartbeat's).
    async fn call(&mut self) -> Result<()> {
        self.calls += 1;
        let mut request = Request::new(pb::Blob {
            data: Bytes::from_static(&[1; 20]),
        });
        let signature: Vec<u8> = (0..SIGNATURE_BYTES)
            .map(|b| (b as u64 ^ self.calls) as u8)
            .collect();
        let timestamp: AsciiMetadataValue = flwr_transport::node_auth::timestamp_now().parse()?;
        let md = request.metadata_mut();
        md.insert_bin(
            flwr_transport::node_auth::PUBLIC_KEY_HEADER,
            MetadataValue::from_bytes(&self.key),
        );
        md.insert(flwr_transport::node_auth::TIMESTAMP_HEADER, timestamp);
        md.insert_bin(
            flwr_transport::node_auth::SIGNATURE_HEADER,
            MetadataValue::from_bytes(&signature),
        );
        self.client.echo(request).await.context("Echo")?;
        Ok(())
    }
}
