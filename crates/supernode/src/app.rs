//! Build, then serve: [`App::build`] checks the configuration, loads TLS and the key and binds
//! the ClientAppIo (and health) listeners; [`App::spawn`] starts the servers and the node.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flwr_daemon::tasks::Failure;
use flwr_proto::proto as pb;
use flwr_transport::address::Address;
use flwr_transport::node_auth::NodeSigningKey;
use flwr_transport::{grpc, limits, tls};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;

use crate::cli::Isolation;
use crate::clientappio::ClientAppIoService;
use crate::config::{Config, KeySource, Transport};
use crate::fleet::{Fleet, RetryPolicy};
use crate::node::{self, Node, Settings};
use crate::node_config;
use crate::state::NodeState;

/// Why the SuperNode could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The key file could not be used.
    #[error(transparent)]
    Key(#[from] flwr_transport::node_auth::KeyError),
    /// `--node-config` is not valid.
    #[error(transparent)]
    NodeConfig(#[from] node_config::NodeConfigError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] grpc::BindError),
    /// `--trusted-entities` cannot be used.
    #[error(transparent)]
    TrustedEntities(#[from] crate::trusted::TrustedEntitiesError),
    /// `--metrics-address`: the metrics recorder could not be set up.
    #[error(transparent)]
    Metrics(#[from] flwr_transport::metrics::MetricsError),
}

/// A SuperNode whose listeners are bound, not running yet.
pub struct App {
    config: Config,
    key: Arc<NodeSigningKey>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The roots behind `tls`, loaded again on SIGHUP or when `--root-certificates` changes.
    roots: Option<Arc<tls::ClientRoots>>,
    node_config: Vec<(String, flwr_objects::ConfigValue)>,
    trusted: Option<Arc<crate::trusted::TrustedEntities>>,
    clientappio: TcpListener,
    health: Option<TcpListener>,
    metrics: Option<(TcpListener, flwr_transport::metrics::PrometheusHandle)>,
}

impl App {
    /// Loads the files the flags name and binds the listeners.
    pub async fn build(config: Config) -> Result<App, BuildError> {
        // Before TLS is loaded, so that the certificates' expiry is recorded.
        let recorder = flwr_transport::metrics::install_if_serving(
            config.metrics_address.as_ref(),
            crate::metrics::describe,
        )?;
        let cfg = config.clone();
        let (tls, key, node_config, trusted) =
            tokio::task::spawn_blocking(move || -> Result<_, BuildError> {
                let tls = tls::load_reloadable_client_config(&cfg.tls)?;
                let key = match &cfg.key {
                    KeySource::Generate => NodeSigningKey::generate(),
                    KeySource::File(p) => {
                        NodeSigningKey::load_openssh_file("--auth-supernode-private-key", p)?
                    }
                };
                let node_config = match &cfg.node_config {
                    Some(v) => node_config::parse(v)?,
                    None => Vec::new(),
                };
                // An empty file verifies nothing, as in Flower (said at start).
                let trusted = match &cfg.trusted_entities {
                    Some(p) => Some(crate::trusted::TrustedEntities::load(p)?)
                        .filter(|t| {
                            if t.is_empty() {
                                tracing::warn!(file = %p.display(), "`--trusted-entities` lists no entity: every FAB is accepted, as Flower does");
                            }
                            !t.is_empty()
                        })
                        .map(Arc::new),
                    None => None,
                };
                Ok((tls, key, node_config, trusted))
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let clientappio =
            grpc::bind("--clientappio-api-address", &config.clientappio_address).await?;
        let health = match &config.health_address {
            Some(a) => Some(grpc::bind("--health-server-address", a).await?),
            None => None,
        };
        let metrics = match (&config.metrics_address, recorder) {
            (Some(a), Some(handle)) => Some((grpc::bind("--metrics-address", a).await?, handle)),
            _ => None,
        };
        let (tls, roots) = match tls {
            Some((loaded, roots)) => (Some(loaded.config), Some(roots)),
            None => (None, None),
        };
        Ok(App {
            config,
            key: Arc::new(key),
            tls,
            roots,
            node_config,
            trusted,
            clientappio,
            health,
            metrics,
        })
    }

    /// The ClientAppIo address bound.
    pub fn clientappio_address(&self) -> SocketAddr {
        self.clientappio
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Starts the ClientAppIo server, the health server and the node.
    pub fn spawn(self) -> Running {
        // `stop` asks the node to finish the message in hand and leave; `abort` (which also
        // stops) cuts every Fleet call short, when that took too long.
        let abort = CancellationToken::new();
        let stop = abort.child_token();
        let servers_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Cancelled when the node ends, or when a task fails (panics, or a server ends by itself).
        let done = CancellationToken::new();
        let failure = Failure::new(done.clone());
        let appio_addr = self.clientappio_address();
        let state = NodeState::new();

        let routes = Routes::new(limits!(pb::client_app_io_server::ClientAppIoServer::new(
            ClientAppIoService::new(state.clone())
        )));
        tracing::info!(address = %appio_addr, "ClientAppIo API serving (plaintext)");
        flwr_transport::server::warn_if_exposed(
            "ClientAppIo API",
            appio_addr,
            self.config.clientappio_allow.is_some(),
            "--clientappio-api-allowed-networks",
        );
        failure.watch(
            &tracker,
            "ClientAppIo API",
            flwr_transport::server::serve(
                flwr_transport::metrics::Instrumented::new(
                    "clientappio",
                    flwr_proto::is_rpc_path,
                    routes.prepare(),
                ),
                self.clientappio,
                None,
                flwr_transport::server::ServeOptions {
                    allow: self.config.clientappio_allow.clone(),
                    api: "clientappio",
                    ..flwr_transport::server::ServeOptions::default()
                },
                servers_stop.clone(),
            ),
        );
        if let Some(l) = self.health {
            if let Ok(a) = l.local_addr() {
                tracing::info!(address = %a, "Health service serving (plaintext)");
            }
            failure.watch(
                &tracker,
                "Health service",
                flwr_transport::health::serve(l, Default::default(), servers_stop.clone()),
            );
        }
        if let Some((l, handle)) = self.metrics {
            if let Ok(a) = l.local_addr() {
                tracing::info!(address = %a, "Metrics serving (plaintext HTTP, /metrics)");
            }
            failure.watch(
                &tracker,
                "Metrics",
                flwr_transport::metrics::serve(l, handle, || async {}, servers_stop.clone()),
            );
        }

        failure.watch(
            &tracker,
            "TLS reloader",
            flwr_transport::signals::reload_on_hangup(
                self.roots.map(|r| r as Arc<dyn tls::Reloadable>),
                servers_stop.clone(),
            ),
        );

        let retry = RetryPolicy {
            max_tries: self.config.max_retries.map(|n| n.saturating_add(1)),
            max_time: self.config.max_wait_time,
        };
        let rest = (self.config.transport == Transport::Rest)
            .then(|| flwr_transport::rest::client(&self.config.superlink, self.tls.clone()));
        let channel = grpc::channel(&self.config.superlink, self.tls);
        let mut fleet = Fleet::new(channel, self.key, retry, abort.clone());
        match (self.config.transport, rest) {
            (Transport::GrpcAdapter, _) => fleet = fleet.via_grpc_adapter(),
            (Transport::Rest, Some(client)) => fleet = fleet.via_rest(client),
            _ => {}
        }
        let clientappio = Address::from_socket_addr(appio_addr)
            .connectable()
            .to_string();
        let settings = Settings {
            own_key: self.config.key == KeySource::Generate,
            node_config: self.node_config,
            launch_apps: self.config.isolation == Isolation::Subprocess,
            clientappio,
            // Forked only from `flwr-clientapp` itself: an override may be any program.
            fork_apps: self.config.clientapp_launch == crate::cli::ClientAppLaunch::Fork
                && std::env::var_os(node::CLIENTAPP_COMMAND_ENV).is_none(),
            clientapp_program: std::env::var_os(node::CLIENTAPP_COMMAND_ENV)
                .unwrap_or_else(|| "flwr-clientapp".into()),
            shutdown_grace: self.config.shutdown_grace,
            trusted: self.trusted,
        };
        tracing::info!(superlink = %self.config.superlink, "joining the SuperLink");
        let node = Node::new(fleet, state, settings, stop.clone());
        let result = Arc::new(Mutex::new(None));
        let r = result.clone();
        let d = done.clone();
        failure.watch(&tracker, "SuperNode", async move {
            let outcome = node.run().await;
            if let Ok(mut slot) = r.lock() {
                *slot = Some(outcome.map_err(|e| e.to_string()));
            }
            d.cancel();
        });
        tracker.close();
        Running {
            stop,
            abort,
            grace: self.config.shutdown_grace,
            servers_stop,
            done,
            tracker,
            result,
            failure,
        }
    }
}

/// A running SuperNode.
pub struct Running {
    stop: CancellationToken,
    abort: CancellationToken,
    grace: Duration,
    servers_stop: CancellationToken,
    done: CancellationToken,
    tracker: TaskTracker,
    result: Arc<Mutex<Option<Result<(), String>>>>,
    failure: Failure,
}

impl Running {
    /// Resolves when the node stopped by itself.
    pub async fn finished(&self) {
        self.done.cancelled().await;
    }

    /// Finishes the message in hand (its ClientApp has `--shutdown-grace-seconds`), leaves the
    /// SuperLink (deactivate, unregister) and stops the servers; after the grace and `leaving`
    /// more, cuts what is left short. Returns the node's outcome.
    pub async fn shutdown(self, leaving: Duration) -> Result<(), String> {
        self.stop.cancel();
        let deadline = self.grace.saturating_add(leaving);
        if tokio::time::timeout(deadline, self.done.cancelled())
            .await
            .is_err()
        {
            self.abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.done.cancelled()).await;
        }
        // Stopping now: servers that end from here on have not failed (also when the node did
        // not end within the deadline), and nothing of the node goes on.
        self.abort.cancel();
        self.done.cancel();
        self.servers_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
        let outcome = self.result.lock().ok().and_then(|r| r.clone());
        match (self.failure.first(), outcome) {
            (Some(failure), _) => Err(failure),
            (None, outcome) => outcome.unwrap_or(Ok(())),
        }
    }
}
