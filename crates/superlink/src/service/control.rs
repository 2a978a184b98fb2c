//! The Control API for the `flwr` CLI, without account authentication: every caller is Flower's
//! no-op account, and the only federation is `@none/default`.

use std::pin::Pin;
use std::time::Duration;

use prost::Message as _;

use flwr_proto::proto as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::convert::isoformat;
use super::convert::{config_from_pb, initial_context, node_to_pb, run_to_pb};
use super::status::{to_status, OrStatus};
use crate::core::{
    Core, FabSource, DEFAULT_FEDERATION, DEFAULT_FEDERATION_DESCRIPTION, NOOP_ACCOUNT_ID,
    NOOP_ACCOUNT_NAME,
};
use crate::error::Error;
use flwr_state::Status as RunStatusKind;

/// How often a log stream looks for new output.
const LOG_POLL: Duration = Duration::from_millis(200);
/// With an engine that announces log output, how long a stream waits for an announcement before
/// it looks anyway.
const LOG_WAIT: Duration = Duration::from_secs(5);
/// How long a log stream rides out an unreachable database (a restart, a failover) before it
/// gives up with UNAVAILABLE.
const STREAM_OUTAGE_GRACE: Duration = Duration::from_secs(120);

/// The Control service.
#[derive(Clone)]
pub struct ControlService {
    core: Core,
}

/// Flower's default simulation settings.
pub fn default_simulation_config() -> pb::SimulationConfig {
    pb::SimulationConfig {
        num_supernodes: Some(10),
        client_resources_num_cpus: Some(2),
        client_resources_num_gpus: Some(0.0),
        backend: Some("ray".to_owned()),
        verbose: Some(false),
        init_args_num_cpus: None,
        init_args_num_gpus: None,
        init_args_logging_level: Some("WARNING".to_owned()),
        init_args_log_to_driver: Some(true),
    }
}

/// Protobuf merge: the fields set in `update` win.
fn merged(mut base: pb::SimulationConfig, update: &pb::SimulationConfig) -> pb::SimulationConfig {
    if base.merge(update.encode_to_vec().as_slice()).is_err() {
        tracing::warn!("could not merge a simulation config");
    }
    base
}

impl ControlService {
    /// A service over the domain.
    pub fn new(core: Core) -> Self {
        Self { core }
    }

    /// The federation's simulation settings (`--simulation` only, else `None`): as last set by
    /// `ConfigureSimulationFederation` through any SuperLink sharing the state, or Flower's
    /// defaults.
    async fn simulation_config(&self) -> Result<Option<pb::SimulationConfig>, Status> {
        if !self.core.settings().simulation {
            return Ok(None);
        }
        match self.core.simulation_config().await.or_status()? {
            Some(stored) => pb::SimulationConfig::decode(stored)
                .map(Some)
                .map_err(|source| {
                    to_status(Error::Corrupt {
                        what: "simulation config",
                        source,
                    })
                }),
            None => Ok(Some(default_simulation_config())),
        }
    }

    fn now(&self) -> String {
        isoformat(self.core.clock().now())
    }

    async fn federation(
        &self,
        nodes: Vec<pb::NodeInfo>,
        runs: Vec<pb::Run>,
        with_members: bool,
    ) -> Result<pb::Federation, Status> {
        let config = if with_members {
            self.simulation_config().await?
        } else {
            None
        };
        Ok(pb::Federation {
            name: DEFAULT_FEDERATION.to_owned(),
            nodes,
            runs,
            description: DEFAULT_FEDERATION_DESCRIPTION.to_owned(),
            members: if with_members {
                vec![pb::Member {
                    account: Some(pb::Account {
                        id: NOOP_ACCOUNT_ID.to_owned(),
                        name: NOOP_ACCOUNT_NAME.to_owned(),
                    }),
                    role: "owner".to_owned(),
                }]
            } else {
                Vec::new()
            },
            archived: false,
            simulation: self.core.settings().simulation,
            config,
        })
    }

    /// Flower's checks before refusing node membership changes.
    async fn check_membership_change(&self, federation: &str, node_id: u64) -> Result<(), Status> {
        if federation.is_empty() {
            return Err(to_status(Error::NoFederationGiven));
        }
        if federation != DEFAULT_FEDERATION {
            return Err(to_status(Error::NoSuchFederation(federation.into())));
        }
        let owned = self
            .core
            .node(node_id)
            .await
            .or_status()?
            .is_some_and(|n| n.owner_aid == NOOP_ACCOUNT_ID);
        if !owned {
            return Err(to_status(Error::NodeNotInFederation(node_id)));
        }
        Err(to_status(Error::NoFederationManagement))
    }
}

type LogStream =
    Pin<Box<dyn Stream<Item = Result<pb::StreamLogsResponse, Status>> + Send + 'static>>;
type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::StreamRunEventsResponse, Status>> + Send + 'static>>;

struct LogCursor {
    core: Core,
    run_id: u64,
    after: f64,
    done: bool,
    first: bool,
    /// Since when the database has not answered, if it does not.
    unavailable_since: Option<std::time::Instant>,
    /// Announcements of new output, when the engine makes them (else the stream polls).
    events: Option<tokio::sync::broadcast::Receiver<u64>>,
}

impl LogCursor {
    /// Waits until there may be something new for this run.
    async fn wait(&mut self) {
        let Some(events) = self.events.as_mut() else {
            tokio::time::sleep(LOG_POLL).await;
            return;
        };
        let run_id = self.run_id;
        let woke = tokio::time::timeout(LOG_WAIT, async {
            loop {
                match events.recv().await {
                    Ok(id) if id == run_id => return true,
                    Ok(_) => continue,
                    // Missed some: look.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                }
            }
        })
        .await;
        if woke == Ok(false) {
            self.events = None;
        }
    }
}

impl LogCursor {
    /// True when `e` is a database outage the stream still waits out.
    fn rides_out(&mut self, e: &crate::error::Error) -> bool {
        if !matches!(e, crate::error::Error::Unavailable(_)) {
            return false;
        }
        let since = *self
            .unavailable_since
            .get_or_insert_with(std::time::Instant::now);
        since.elapsed() < STREAM_OUTAGE_GRACE
    }
}

/// The next log chunk: the whole backlog first, then new output as it comes; the stream ends
/// (OK) once the run is finished and everything was sent. The run's status is read before the
/// logs, so output pushed just before the run finished is never lost.
async fn next_logs(
    mut c: LogCursor,
) -> Option<(Result<pb::StreamLogsResponse, Status>, LogCursor)> {
    loop {
        if c.done {
            return None;
        }
        if !c.first {
            c.wait().await;
        }
        c.first = false;
        let run = match c.core.get_run(c.run_id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Some((
                    Err(to_status(Error::NoSuchRun)),
                    LogCursor { done: true, ..c },
                ))
            }
            Err(e) if c.rides_out(&e) => continue,
            Err(e) => {
                return Some((
                    Err(super::status::to_status(e)),
                    LogCursor { done: true, ..c },
                ))
            }
        };
        c.unavailable_since = None;
        let finished = run.status.status == RunStatusKind::Finished;
        let (text, latest) = match c.core.logs_after(c.run_id, c.after).await {
            Ok(x) => x,
            Err(e) if c.rides_out(&e) => continue,
            Err(e) => {
                return Some((
                    Err(super::status::to_status(e)),
                    LogCursor { done: true, ..c },
                ))
            }
        };
        if finished {
            let _ = c.core.purge_if_finished(&run).await;
            c.done = true;
        }
        if !text.is_empty() {
            c.after = c.after.max(latest + 1e-6);
            return Some((
                Ok(pb::StreamLogsResponse {
                    log_output: text,
                    latest_timestamp: latest,
                }),
                c,
            ));
        }
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn start_run(
        &self,
        request: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let body = request.into_inner();
        let overrides = config_from_pb(&body.override_config).or_status()?;
        let fab = if body.app_spec.is_empty() {
            FabSource::Uploaded(body.fab.map(|f| f.content).unwrap_or_default())
        } else {
            FabSource::Hub(body.app_spec)
        };
        // A simulation run carries the federation's settings with the request's on top.
        let federation_config = self.simulation_config().await?.map(|current| {
            let resolved = match &body.override_federation_config {
                Some(update) => merged(current, update),
                None => current,
            };
            bytes::Bytes::from(resolved.encode_to_vec())
        });
        let run_id = self
            .core
            .start_run(
                fab,
                overrides,
                body.federation,
                federation_config,
                initial_context,
                NOOP_ACCOUNT_ID,
            )
            .await
            .or_status()?;
        if let Some(id) = run_id {
            tracing::info!(run_id = id, "run created (pending)");
        }
        Ok(Response::new(pb::StartRunResponse { run_id }))
    }

    async fn stop_run(
        &self,
        request: Request<pb::StopRunRequest>,
    ) -> Result<Response<pb::StopRunResponse>, Status> {
        let run_id = request.get_ref().run_id;
        let success = self
            .core
            .stop_run(run_id, NOOP_ACCOUNT_ID)
            .await
            .or_status()?;
        tracing::info!(run_id, success, "run stopped by the user");
        Ok(Response::new(pb::StopRunResponse { success }))
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let body = request.into_inner();
        self.core
            .owned_run(body.run_id, NOOP_ACCOUNT_ID)
            .await
            .or_status()?;
        let cursor = LogCursor {
            core: self.core.clone(),
            run_id: body.run_id,
            after: body.after_timestamp + 1e-6,
            done: false,
            first: true,
            unavailable_since: None,
            events: self.core.log_events(),
        };
        let stream = futures_util::stream::unfold(cursor, next_logs);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let body = request.into_inner();
        let mut runs = match body.run_id {
            Some(id) => vec![self.core.owned_run(id, NOOP_ACCOUNT_ID).await.or_status()?],
            None => self.core.runs_of(NOOP_ACCOUNT_ID).await.or_status()?,
        };
        if let Some(limit) = body.limit {
            runs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        for r in &runs {
            self.core.purge_if_finished(r).await.or_status()?;
        }
        Ok(Response::new(pb::ListRunsResponse {
            run_dict: runs.iter().map(|r| (r.run_id, run_to_pb(r))).collect(),
            now: self.now(),
        }))
    }

    async fn get_login_details(
        &self,
        _request: Request<pb::GetLoginDetailsRequest>,
    ) -> Result<Response<pb::GetLoginDetailsResponse>, Status> {
        Ok(Response::new(pb::GetLoginDetailsResponse {
            authn_type: "noop".to_owned(),
            ..Default::default()
        }))
    }

    async fn get_auth_tokens(
        &self,
        _request: Request<pb::GetAuthTokensRequest>,
    ) -> Result<Response<pb::GetAuthTokensResponse>, Status> {
        Err(to_status(Error::NoAuthTokens))
    }

    async fn pull_artifacts(
        &self,
        _request: Request<pb::PullArtifactsRequest>,
    ) -> Result<Response<pb::PullArtifactsResponse>, Status> {
        Err(to_status(Error::NoArtifacts))
    }

    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let key = request.into_inner().public_key;
        let node_id = self
            .core
            .register_node_cli(key, NOOP_ACCOUNT_ID, NOOP_ACCOUNT_NAME)
            .await
            .or_status()?;
        tracing::info!(node_id, "SuperNode registered through the CLI");
        Ok(Response::new(pb::RegisterNodeResponse {
            node_id: Some(node_id),
        }))
    }

    async fn unregister_node(
        &self,
        request: Request<pb::UnregisterNodeRequest>,
    ) -> Result<Response<pb::UnregisterNodeResponse>, Status> {
        self.core
            .unregister_node_cli(request.get_ref().node_id, NOOP_ACCOUNT_ID)
            .await
            .or_status()?;
        Ok(Response::new(pb::UnregisterNodeResponse {}))
    }

    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.core.nodes_of(NOOP_ACCOUNT_ID).await.or_status()?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes_info: nodes.iter().map(node_to_pb).collect(),
            now: self.now(),
        }))
    }

    async fn list_federations(
        &self,
        _request: Request<pb::ListFederationsRequest>,
    ) -> Result<Response<pb::ListFederationsResponse>, Status> {
        Ok(Response::new(pb::ListFederationsResponse {
            federations: vec![self.federation(Vec::new(), Vec::new(), false).await?],
        }))
    }

    async fn show_federation(
        &self,
        request: Request<pb::ShowFederationRequest>,
    ) -> Result<Response<pb::ShowFederationResponse>, Status> {
        let name = request.into_inner().federation_name;
        if name != DEFAULT_FEDERATION {
            return Err(to_status(Error::ShowUnknownFederation(name)));
        }
        let nodes = self.core.nodes_of(NOOP_ACCOUNT_ID).await.or_status()?;
        let runs = self.core.runs_of(NOOP_ACCOUNT_ID).await.or_status()?;
        let federation = self
            .federation(
                nodes.iter().map(node_to_pb).collect(),
                runs.iter().map(run_to_pb).collect(),
                true,
            )
            .await?;
        Ok(Response::new(pb::ShowFederationResponse {
            federation: Some(federation),
            now: self.now(),
        }))
    }

    async fn create_federation(
        &self,
        request: Request<pb::CreateFederationRequest>,
    ) -> Result<Response<pb::CreateFederationResponse>, Status> {
        if request.get_ref().federation_name.is_empty() {
            return Err(to_status(Error::NoFederationGiven));
        }
        Err(to_status(Error::NoFederationManagement))
    }

    async fn archive_federation(
        &self,
        request: Request<pb::ArchiveFederationRequest>,
    ) -> Result<Response<pb::ArchiveFederationResponse>, Status> {
        if request.get_ref().federation_name.is_empty() {
            return Err(to_status(Error::NoFederationGiven));
        }
        Err(to_status(Error::NoFederationManagement))
    }

    async fn add_node_to_federation(
        &self,
        request: Request<pb::AddNodeToFederationRequest>,
    ) -> Result<Response<pb::AddNodeToFederationResponse>, Status> {
        let b = request.into_inner();
        self.check_membership_change(&b.federation_name, b.node_id)
            .await
            .map(|()| Response::new(pb::AddNodeToFederationResponse {}))
    }

    async fn remove_node_from_federation(
        &self,
        request: Request<pb::RemoveNodeFromFederationRequest>,
    ) -> Result<Response<pb::RemoveNodeFromFederationResponse>, Status> {
        let b = request.into_inner();
        self.check_membership_change(&b.federation_name, b.node_id)
            .await
            .map(|()| Response::new(pb::RemoveNodeFromFederationResponse {}))
    }

    async fn remove_account_from_federation(
        &self,
        _request: Request<pb::RemoveAccountFromFederationRequest>,
    ) -> Result<Response<pb::RemoveAccountFromFederationResponse>, Status> {
        Err(to_status(Error::NoFederationManagement))
    }

    async fn create_invitation(
        &self,
        _request: Request<pb::CreateInvitationRequest>,
    ) -> Result<Response<pb::CreateInvitationResponse>, Status> {
        Err(to_status(Error::NoFederationManagement))
    }

    async fn list_invitations(
        &self,
        _request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        Err(to_status(Error::NoFederationManagement))
    }

    async fn accept_invitation(
        &self,
        _request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::AcceptInvitationResponse>, Status> {
        Err(to_status(Error::NoFederationManagement))
    }

    async fn reject_invitation(
        &self,
        _request: Request<pb::RejectInvitationRequest>,
    ) -> Result<Response<pb::RejectInvitationResponse>, Status> {
        Err(to_status(Error::NoFederationManagement))
    }

    async fn revoke_invitation(
        &self,
        _request: Request<pb::RevokeInvitationRequest>,
    ) -> Result<Response<pb::RevokeInvitationResponse>, Status> {
        Err(to_status(Error::NoFederationManagement))
    }

    async fn configure_simulation_federation(
        &self,
        request: Request<pb::ConfigureSimulationFederationRequest>,
    ) -> Result<Response<pb::ConfigureSimulationFederationResponse>, Status> {
        let body = request.into_inner();
        let name = if body.federation_name.is_empty() {
            DEFAULT_FEDERATION
        } else {
            body.federation_name.as_str()
        };
        let current = match self.simulation_config().await? {
            Some(current) if name == DEFAULT_FEDERATION => current,
            _ => return Err(to_status(Error::FederationNotFound)),
        };
        if let Some(update) = &body.config {
            let config = merged(current, update).encode_to_vec();
            self.core
                .set_simulation_config(config.into())
                .await
                .or_status()?;
        }
        Ok(Response::new(pb::ConfigureSimulationFederationResponse {}))
    }

    type StreamRunEventsStream = EventStream;

    async fn stream_run_events(
        &self,
        _request: Request<pb::StreamRunEventsRequest>,
    ) -> Result<Response<Self::StreamRunEventsStream>, Status> {
        Err(to_status(Error::NoRunEvents))
    }
}
