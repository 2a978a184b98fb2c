//! `--isolation subprocess`: the SuperLink starts one ServerApp process per pending run itself.
//!
//! As soon as a run becomes pending (and once a second, for runs that were pending before start),
//! the launcher issues the run's token and starts
//! `flwr-serverapp --insecure --serverappio-api-address <addr> --token <t> --parent-pid <pid>`
//! (`flwr-simulation` for simulation runs). `flwr stop` and shutdown end the process group with
//! SIGTERM, then SIGKILL after a grace period; every child is reaped.

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, LaunchEvent};
use flwr_daemon::process::{self, CommandLine};
use flwr_state::{RunId, RunStatus, RunType, SubStatus};

/// Why a pending run's ServerApp was not launched.
#[derive(Debug, thiserror::Error)]
enum LaunchError {
    /// The state failed (its token or its run could not be read).
    #[error(transparent)]
    State(#[from] crate::error::Error),
    /// The run was deleted between its token and its start.
    #[error("the run vanished before its ServerApp started")]
    RunVanished,
    /// The program could not be started; the run ends failed with this text.
    #[error("The SuperLink could not start `{program}`: {source}. Install flwr in this environment (pip install flwr==1.28.0) or set {env} to the ServerApp program.", env = SERVERAPP_COMMAND_ENV)]
    NotStarted {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Environment variable naming the ServerApp program (default `flwr-serverapp` on `PATH`).
pub const SERVERAPP_COMMAND_ENV: &str = "FLWR_SERVERAPP_COMMAND";
/// Environment variable naming the simulation program (default `flwr-simulation` on `PATH`).
pub const SIMULATION_COMMAND_ENV: &str = "FLWR_SIMULATION_COMMAND";
/// How long a ServerApp may take to exit after SIGTERM.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// A fallback sweep for pending runs (events make launches immediate).
const SWEEP: Duration = Duration::from_secs(1);

/// Which programs to start.
#[derive(Clone, Debug)]
pub struct Programs {
    /// For deployment runs.
    pub serverapp: OsString,
    /// For simulation runs.
    pub simulation: OsString,
}

impl Programs {
    /// From the environment, defaulting to the programs on `PATH`.
    pub fn from_env() -> Self {
        Self {
            serverapp: std::env::var_os(SERVERAPP_COMMAND_ENV)
                .unwrap_or_else(|| "flwr-serverapp".into()),
            simulation: std::env::var_os(SIMULATION_COMMAND_ENV)
                .unwrap_or_else(|| "flwr-simulation".into()),
        }
    }
}

/// The launcher task's inputs.
pub struct Launcher {
    core: Core,
    /// This SuperLink, as a run whose ServerApp stops sending heartbeats will name it.
    name: String,
    serverappio: String,
    programs: Programs,
    events: mpsc::UnboundedReceiver<LaunchEvent>,
    stop: CancellationToken,
}

/// What the launcher's waits end with.
enum Done {
    /// A ServerApp process ended (and was reaped), with how.
    Exited(RunId, String),
    /// The grace of a ServerApp asked to stop is over.
    KillDue(RunId, process::Group),
}

impl Launcher {
    /// A launcher whose ServerApps reach ServerAppIo at `serverappio` (host:port).
    pub fn new(
        core: Core,
        serverappio: String,
        programs: Programs,
        events: mpsc::UnboundedReceiver<LaunchEvent>,
        stop: CancellationToken,
    ) -> Self {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "(unknown host)".into());
        Self {
            core,
            name: format!("{host} (pid {})", std::process::id()),
            serverappio,
            programs,
            events,
            stop,
        }
    }

    /// Runs until `stop` is cancelled, then ends and reaps every child.
    pub async fn run(mut self) {
        let mut children: HashMap<RunId, process::Group> = HashMap::new();
        let mut waits: JoinSet<Done> = JoinSet::new();
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                ev = self.events.recv() => match ev {
                    Some(LaunchEvent::RunPending) => self.launch_pending(&mut children, &mut waits).await,
                    Some(LaunchEvent::RunStopped(run_id)) => {
                        if let Some(group) = children.get(&run_id) {
                            tracing::info!(run_id, pid = group.pid(), "stopping the ServerApp of a stopped run");
                            group.signal(Signal::SIGTERM);
                            let group = group.clone();
                            waits.spawn(async move {
                                tokio::time::sleep(KILL_GRACE).await;
                                Done::KillDue(run_id, group)
                            });
                        }
                    }
                    None => break,
                },
                _ = sweep.tick() => self.launch_pending(&mut children, &mut waits).await,
                Some(done) = waits.join_next(), if !waits.is_empty() => match done {
                    Ok(Done::Exited(run_id, how)) => {
                        children.remove(&run_id);
                        tracing::info!(run_id, "ServerApp process ended: {how}");
                    }
                    // A child that was reaped meanwhile is not signalled (its group says so).
                    Ok(Done::KillDue(run_id, group)) => {
                        if children.get(&run_id).is_some_and(|g| g.pid() == group.pid()) {
                            tracing::warn!(run_id, pid = group.pid(), "the ServerApp ignored SIGTERM: killing it");
                        }
                        group.signal(Signal::SIGKILL);
                    }
                    // A watch task that panicked takes the launcher with it, and the daemon's
                    // panic policy stops the daemon with the message; none is cancelled but by
                    // the shutdown below.
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => {}
                },
            }
        }
        // Shutdown: end every ServerApp group, then reap.
        for group in children.values() {
            group.signal(Signal::SIGTERM);
        }
        let reaped = tokio::time::timeout(KILL_GRACE, async {
            while let Some(done) = waits.join_next().await {
                if let Ok(Done::Exited(run_id, _)) = done {
                    children.remove(&run_id);
                }
                if children.is_empty() {
                    break;
                }
            }
        })
        .await;
        if reaped.is_err() {
            for group in children.values() {
                group.signal(Signal::SIGKILL);
            }
        }
        waits.shutdown().await;
    }

    async fn launch_pending(
        &self,
        children: &mut HashMap<RunId, process::Group>,
        waits: &mut JoinSet<Done>,
    ) {
        let pending = match self.core.pending_runs().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot list pending runs: {e}");
                return;
            }
        };
        for run_id in pending {
            if let Err(e) = self.launch(run_id, children, waits).await {
                tracing::error!(run_id, "{e}");
            }
        }
    }

    async fn launch(
        &self,
        run_id: RunId,
        children: &mut HashMap<RunId, process::Group>,
        waits: &mut JoinSet<Done>,
    ) -> Result<(), LaunchError> {
        let token = self.core.request_token(run_id, Some(&self.name)).await?;
        if token.is_empty() {
            return Ok(()); // someone else (an external executor) took it
        }
        let run = self
            .core
            .get_run(run_id)
            .await?
            .ok_or(LaunchError::RunVanished)?;
        let program = match run.run_type {
            RunType::ServerApp => self.programs.serverapp.clone(),
            RunType::Simulation => self.programs.simulation.clone(),
        };
        // Both programs take the same flags.
        let args: Vec<OsString> = vec![
            "--insecure".into(),
            "--serverappio-api-address".into(),
            self.serverappio.clone().into(),
            "--token".into(),
            token.into(),
            "--parent-pid".into(),
            std::process::id().to_string().into(),
        ];
        let cmd = CommandLine {
            program: program.clone(),
            args,
        };
        match process::spawn(&cmd, format!("run {run_id}")) {
            Ok(spawned) => {
                tracing::info!(run_id, pid = spawned.group.pid(), program = %program.to_string_lossy(), "ServerApp process started");
                children.insert(run_id, spawned.group);
                metrics::counter!("flwr_serverapp_launches_total", "outcome" => "started")
                    .increment(1);
                waits.spawn(async move {
                    let how = match spawned.done.await {
                        Ok(Ok(status)) => {
                            let outcome = if status.success() {
                                "success"
                            } else {
                                "failure"
                            };
                            metrics::counter!("flwr_serverapp_exits_total", "outcome" => outcome)
                                .increment(1);
                            status.to_string()
                        }
                        Ok(Err(e)) => format!("wait failed: {e}"),
                        Err(e) => format!("output task failed: {e}"),
                    };
                    Done::Exited(run_id, how)
                });
                Ok(())
            }
            Err(source) => {
                metrics::counter!("flwr_serverapp_launches_total", "outcome" => "not_started")
                    .increment(1);
                let e = LaunchError::NotStarted {
                    program: program.to_string_lossy().into_owned(),
                    source,
                };
                let _ = self
                    .core
                    .update_run_status(
                        run_id,
                        Some(RunStatus::finished(SubStatus::Failed, e.to_string())),
                    )
                    .await;
                Err(e)
            }
        }
    }
}
