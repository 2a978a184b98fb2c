//! Build, then serve: [`App::build`] loads TLS and binds every listener (port 0 works), so that
//! errors surface before anything serves; [`App::spawn`] starts the servers and returns a
//! [`Running`] handle that owns every task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flwr_daemon::tasks::Failure;
use flwr_proto::proto as pb;
use flwr_transport::address::Address;
use flwr_transport::metrics::PrometheusHandle;
use flwr_transport::server::{self, ServeOptions};
use flwr_transport::{grpc, limits, tls};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;

use crate::cli::{FleetApiType, Isolation};
use crate::config::{Config, Database};
use crate::core::{Core, Settings};
use crate::launcher::{Launcher, Programs};
use crate::service::{
    control::ControlService, fleet::FleetService, grpc_adapter::GrpcAdapterService,
    rest::RestService, serverappio::ServerAppIoService,
};
use flwr_state::{Clock, LinkState, Stores, SystemClock};

/// Why the SuperLink could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] grpc::BindError),
    /// The state could not be opened.
    #[error("cannot open the state database: {0}")]
    State(#[from] flwr_state::StateError),
    /// A start-up task ended before its work did.
    #[error("{what} did not finish: {source}")]
    TaskLost {
        /// The work.
        what: &'static str,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// `--storage-dir` cannot be used.
    #[error(transparent)]
    Storage(#[from] flwr_state::fabs::FfsError),
    /// `--metrics-address`: the metrics recorder could not be set up.
    #[error(transparent)]
    Metrics(#[from] flwr_transport::metrics::MetricsError),
}

/// The addresses the servers are bound to (with the real ports when 0 was asked for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundAddresses {
    /// Control API.
    pub control: SocketAddr,
    /// ServerAppIo API.
    pub serverappio: SocketAddr,
    /// Fleet API (absent in simulation mode).
    pub fleet: Option<SocketAddr>,
    /// Health service.
    pub health: Option<SocketAddr>,
    /// Prometheus metrics.
    pub metrics: Option<SocketAddr>,
}

/// A SuperLink whose listeners are bound, not serving yet.
pub struct App {
    config: Config,
    clock: Arc<dyn Clock>,
    stores: Stores,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificate and key behind `tls`, loaded again on SIGHUP or when the files change.
    tls_cert: Option<Arc<tls::ServerCert>>,
    control: TcpListener,
    serverappio: TcpListener,
    fleet: Option<TcpListener>,
    health: Option<TcpListener>,
    metrics: Option<(TcpListener, PrometheusHandle)>,
}

/// Where the in-memory engine's large objects wait: files in `TMPDIR`, at most a quarter of the
/// open-file limit (the rest is for connections); `None`, everything in memory, where no file
/// can be made (said once, here).
async fn spill_policy() -> Result<Option<flwr_state::spill::SpillPolicy>, BuildError> {
    let open_files = flwr_daemon::connections::raise_open_file_limit();
    let max_files = usize::try_from(open_files / 4).unwrap_or(usize::MAX);
    let policy = flwr_state::spill::SpillPolicy::in_temp_dir(max_files);
    let checked = policy.clone();
    let usable = tokio::task::spawn_blocking(move || checked.check())
        .await
        .map_err(|source| BuildError::TaskLost {
            what: "checking the spill directory",
            source,
        })?;
    match usable {
        Ok(()) => {
            tracing::info!(
                "Objects of {} KiB and more wait in unnamed files in {}",
                policy.threshold / 1024,
                policy.dir.display()
            );
            Ok(Some(policy))
        }
        Err(e) => {
            tracing::warn!(
                "objects stay in memory: no file can be made in {e} (set TMPDIR to a writable directory)"
            );
            Ok(None)
        }
    }
}

impl App {
    /// Loads TLS and binds every listener. Nothing is bound when TLS fails to load.
    pub async fn build(config: Config) -> Result<App, BuildError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`App::build`] with a given clock (a manual one moves time by hand).
    pub async fn build_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<App, BuildError> {
        // Before TLS is loaded, so that the certificates' expiry is recorded.
        let recorder = flwr_transport::metrics::install_if_serving(
            config.metrics_address.as_ref(),
            crate::metrics::describe,
        )?;
        let (tls, tls_cert) = match config.tls.clone() {
            Some(files) => {
                let (loaded, cert) =
                    tokio::task::spawn_blocking(move || tls::load_reloadable_server_config(&files))
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
                (Some(loaded.config), Some(cert))
            }
            None => (None, None),
        };
        let stores = match &config.database {
            Database::InMemory => {
                flwr_state::in_memory_spilling(clock.clone(), spill_policy().await?)
            }
            Database::Sqlite(path) => {
                let (p, c) = (path.clone(), clock.clone());
                let opened = tokio::task::spawn_blocking(move || flwr_state::sqlite::open(&p, c))
                    .await
                    .map_err(|source| BuildError::TaskLost {
                        what: "opening the SQLite database",
                        source,
                    })??;
                tracing::info!(database = %path.display(), "State in SQLite");
                opened
            }
            Database::Postgres(target) => {
                let name = target.masked();
                let options = flwr_state::postgres::PgOptions::new(target.clone());
                let stores = flwr_state::postgres::connect(options, clock.clone()).await?;
                tracing::info!(database = %name, "State in PostgreSQL");
                stores
            }
        };
        if stores.fabs.is_none() {
            let fabs = flwr_state::fabs::FileFabs::new(config.storage_dir.clone());
            tokio::task::spawn_blocking(move || fabs.check_writable())
                .await
                .map_err(|source| BuildError::TaskLost {
                    what: "checking --storage-dir",
                    source,
                })??;
        }
        let control = grpc::bind("--control-api-address", &config.control_address).await?;
        let serverappio =
            grpc::bind("--serverappio-api-address", &config.serverappio_address).await?;
        let fleet = match &config.fleet_address {
            Some(a) => Some(grpc::bind("--fleet-api-address", a).await?),
            None => None,
        };
        let health = match &config.health_address {
            Some(a) => Some(grpc::bind("--health-server-address", a).await?),
            None => None,
        };
        let metrics = match (&config.metrics_address, recorder) {
            (Some(a), Some(handle)) => Some((grpc::bind("--metrics-address", a).await?, handle)),
            _ => None,
        };
        Ok(App {
            config,
            clock,
            stores,
            tls,
            tls_cert,
            control,
            serverappio,
            fleet,
            health,
            metrics,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The bound addresses.
    pub fn addresses(&self) -> BoundAddresses {
        let local = |l: &TcpListener| {
            l.local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
        };
        BoundAddresses {
            control: local(&self.control),
            serverappio: local(&self.serverappio),
            fleet: self.fleet.as_ref().map(local),
            health: self.health.as_ref().map(local),
            metrics: self.metrics.as_ref().map(|(l, _)| local(l)),
        }
    }

    /// Starts every server (and, with `--isolation subprocess`, the ServerApp launcher).
    pub fn spawn(self) -> Running {
        let addresses = self.addresses();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        // The health service outlives the APIs at shutdown, so that it answers NOT_SERVING while
        // they drain.
        let health_stop = CancellationToken::new();
        let health_tracker = TaskTracker::new();
        let failure = Failure::new(stop.clone());
        let tls_note = if self.tls.is_some() {
            "TLS"
        } else {
            "plaintext"
        };

        let (launch_tx, launch_rx) = match self.config.isolation {
            Isolation::Subprocess => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            Isolation::Process => (None, None),
        };
        let settings = Settings {
            enable_supernode_auth: self.config.enable_supernode_auth,
            simulation: self.config.simulation,
            fleet_adapter: self.config.fleet_api_type == FleetApiType::GrpcAdapter,
            proof_per_connection: self.config.fleet_auth_per_connection,
            pull_hold: self.config.pull_hold,
            fleet_pull_hold: self.config.fleet_pull_hold,
        };
        let core = Core::new(
            self.stores.state.clone(),
            self.stores.objects.clone(),
            self.stores.fabs.clone().unwrap_or_else(|| {
                Arc::new(flwr_state::fabs::FileFabs::new(
                    self.config.storage_dir.clone(),
                ))
            }),
            self.clock.clone(),
            settings,
            launch_tx,
        )
        .with_hub(crate::hub::Hub::new(self.config.platform_api_url.clone()))
        .closing_with(stop.clone());

        let health_state = flwr_transport::health::HealthState::default();
        let open_files = flwr_daemon::connections::raise_open_file_limit();
        let options = ServeOptions {
            max_connections: self
                .config
                .max_connections
                .unwrap_or_else(|| flwr_daemon::connections::default_max_connections(open_files)),
            idle_timeout: self.config.idle_timeout,
            ..ServeOptions::default()
        };
        let options = |api| ServeOptions {
            api,
            ..options.clone()
        };
        let control = Routes::new(limits!(pb::control_server::ControlServer::new(
            ControlService::new(core.clone())
        )));
        tracing::info!(address = %addresses.control, "Control API serving ({tls_note})");
        spawn_server(
            &tracker,
            &failure,
            "Control API",
            control,
            self.control,
            self.tls.clone(),
            options("control"),
        );

        let appio = Routes::new(limits!(pb::server_app_io_server::ServerAppIoServer::new(
            ServerAppIoService::new(core.clone())
        )));
        tracing::info!(address = %addresses.serverappio, "ServerAppIo API serving (plaintext)");
        server::warn_if_exposed(
            "ServerAppIo API",
            addresses.serverappio,
            self.config.serverappio_allow.is_some(),
            "--serverappio-api-allowed-networks",
        );
        spawn_server(
            &tracker,
            &failure,
            "ServerAppIo API",
            appio,
            self.serverappio,
            None,
            ServeOptions {
                allow: self.config.serverappio_allow.clone(),
                ..options("serverappio")
            },
        );

        if let Some(l) = self.fleet {
            let transport = self.config.fleet_api_type;
            if let Some(a) = addresses.fleet {
                let name = match transport {
                    FleetApiType::GrpcRere => "grpc-rere",
                    FleetApiType::GrpcAdapter => "grpc-adapter",
                    FleetApiType::Rest => "REST, HTTP/1.1",
                };
                tracing::info!(address = %a, "Fleet API ({name}) serving ({tls_note})");
            }
            match transport {
                FleetApiType::Rest => {
                    let rest = flwr_transport::metrics::Instrumented::new(
                        "fleet",
                        flwr_proto::adapter::is_rest_path,
                        RestService::new(core.clone()),
                    );
                    let serving = server::serve(
                        rest,
                        l,
                        self.tls.as_deref().map(tls::for_http1),
                        ServeOptions {
                            protocol: server::Protocol::Http1,
                            ..options("fleet")
                        },
                        failure.stop().clone(),
                    );
                    failure.watch(&tracker, "Fleet API", serving);
                }
                FleetApiType::GrpcAdapter => spawn_server(
                    &tracker,
                    &failure,
                    "Fleet API",
                    Routes::new(GrpcAdapterService::guarded(core.clone())),
                    l,
                    self.tls.clone(),
                    options("fleet"),
                ),
                FleetApiType::GrpcRere => spawn_server(
                    &tracker,
                    &failure,
                    "Fleet API",
                    Routes::new(FleetService::guarded(core.clone())),
                    l,
                    self.tls.clone(),
                    options("fleet"),
                ),
            }
        }
        if let Some(l) = self.health {
            if let Some(a) = addresses.health {
                tracing::info!(address = %a, "Health service serving (plaintext)");
            }
            let health =
                flwr_transport::health::serve(l, health_state.clone(), health_stop.clone());
            failure.watch(&health_tracker, "Health service", health);
        }
        if let Some((l, handle)) = self.metrics {
            if let Some(a) = addresses.metrics {
                tracing::info!(address = %a, "Metrics serving (plaintext HTTP, /metrics)");
            }
            let (state, objects) = (self.stores.state.clone(), self.stores.objects.clone());
            let refresh = move || crate::metrics::refresh(state.clone(), objects.clone());
            failure.watch(
                &tracker,
                "Metrics",
                flwr_transport::metrics::serve(l, handle, refresh, stop.clone()),
            );
        }
        failure.watch(
            &tracker,
            "TLS reloader",
            flwr_transport::signals::reload_on_hangup(
                self.tls_cert.clone().map(|c| c as Arc<dyn tls::Reloadable>),
                stop.clone(),
            ),
        );
        failure.watch(
            &tracker,
            "database monitor",
            monitor_database(
                self.stores.state.clone(),
                health_state.clone(),
                stop.clone(),
            ),
        );
        if let Some(rx) = launch_rx {
            let target = Address::from_socket_addr(addresses.serverappio)
                .connectable()
                .to_string();
            tracing::info!(serverappio = %target, "ServerApps will be started by this SuperLink (isolation subprocess)");
            let launcher =
                Launcher::new(core.clone(), target, Programs::from_env(), rx, stop.clone());
            failure.watch(&tracker, "ServerApp launcher", launcher.run());
        } else {
            tracing::info!("Waiting for external ServerApp processes (isolation process)");
        }
        tracker.close();
        health_tracker.close();
        Running {
            addresses,
            stop,
            tracker,
            failure,
            state: self.stores.state,
            health: health_state,
            health_stop,
            health_tracker,
        }
    }
}

fn spawn_server(
    tracker: &TaskTracker,
    failure: &Failure,
    name: &'static str,
    routes: Routes,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    options: ServeOptions,
) {
    let stop = failure.stop().clone();
    let routes = flwr_transport::metrics::Instrumented::new(
        options.api,
        flwr_proto::is_rpc_path,
        routes.prepare(),
    );
    let serving = server::serve(routes, listener, tls, options, stop);
    failure.watch(tracker, name, serving);
}

/// How often the database is checked for the health service.
const DATABASE_CHECK: Duration = Duration::from_secs(1);

/// Reports NOT_SERVING on the health service while the state engine cannot reach its database
/// (so that a load balancer drains this replica), and SERVING again once it can.
async fn monitor_database(
    state: Arc<dyn flwr_state::LinkState>,
    health: flwr_transport::health::HealthState,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(DATABASE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ping = tokio::time::timeout(DATABASE_CHECK * 5, state.ping()).await;
        match ping {
            Ok(Ok(())) => {
                if health.set_serving(true) {
                    tracing::info!("the database answers again: serving");
                }
            }
            Ok(Err(e)) => {
                if health.set_serving(false) {
                    tracing::warn!("the database does not answer: NOT_SERVING until it does ({e})");
                }
            }
            Err(_) => {
                if health.set_serving(false) {
                    tracing::warn!(
                        "the database does not answer within 5 s: NOT_SERVING until it does"
                    );
                }
            }
        }
    }
}

/// A serving SuperLink. Dropping it does not stop it: call [`Running::shutdown`].
pub struct Running {
    addresses: BoundAddresses,
    stop: CancellationToken,
    tracker: TaskTracker,
    failure: Failure,
    /// Flushed once the servers have stopped.
    state: Arc<dyn LinkState>,
    /// What the health service answers; NOT_SERVING from the start of the shutdown.
    health: flwr_transport::health::HealthState,
    /// Stops the health service, last.
    health_stop: CancellationToken,
    health_tracker: TaskTracker,
}

impl Running {
    /// The bound addresses.
    pub fn addresses(&self) -> &BoundAddresses {
        &self.addresses
    }

    /// The address a local ServerApp uses to reach the ServerAppIo API.
    pub fn serverappio_connect_address(&self) -> Address {
        Address::from_socket_addr(self.addresses.serverappio).connectable()
    }

    /// Resolves when a server stopped by itself (a failure); returns its message.
    pub async fn failed(&self) -> String {
        self.stop.cancelled().await;
        self.failure.first().unwrap_or_else(|| "stopped".to_owned())
    }

    /// Drains and stops: the health service answers NOT_SERVING from now on (and keeps
    /// answering until the end), the APIs stop accepting connections and let the calls in flight
    /// finish, every task ends and the state is written back, all within `grace`. Returns false
    /// when `grace` passed first.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.health.drain();
        tracing::info!(
            "draining: health NOT_SERVING, no new connections, calls in flight have {grace:?} to finish"
        );
        self.stop.cancel();
        let drained = tokio::time::timeout(grace, async {
            self.tracker.wait().await;
            if let Err(e) = self.state.flush().await {
                tracing::warn!("state not written at shutdown: {e}");
            }
        })
        .await
        .is_ok();
        self.health_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.health_tracker.wait()).await;
        drained
    }
}
