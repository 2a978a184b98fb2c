//! The ServerAppIo API for ServerApps (`flwr-serverapp`, `flwr-simulation`) and executors
//! (`flower-superexec`). Plaintext; tokens travel in request bodies.

use bytes::Bytes;
use flwr_objects::message::SUPERLINK_NODE_ID;
use flwr_proto::proto as pb;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::convert::{
    context_from_bytes, message_from_pb, message_to_pb, pull_object_response, run_status_from_pb,
    run_to_pb, tree_from_pb, tree_to_pb,
};
use super::status::{to_status, OrStatus};
use crate::core::Core;
use crate::error::Error;

/// The ServerAppIo service.
#[derive(Clone)]
pub struct ServerAppIoService {
    core: Core,
}

impl ServerAppIoService {
    /// A service over the domain.
    pub fn new(core: Core) -> Self {
        Self { core }
    }
}

fn check_superlink_node(node: &Option<pb::Node>) -> Result<(), Status> {
    if node.as_ref().map(|n| n.node_id) == Some(SUPERLINK_NODE_ID) {
        Ok(())
    } else {
        Err(to_status(Error::NotTheSuperLinkNode))
    }
}

#[tonic::async_trait]
impl pb::server_app_io_server::ServerAppIo for ServerAppIoService {
    async fn list_apps_to_launch(
        &self,
        _request: Request<pb::ListAppsToLaunchRequest>,
    ) -> Result<Response<pb::ListAppsToLaunchResponse>, Status> {
        let run_ids = self.core.pending_runs().await.or_status()?;
        Ok(Response::new(pb::ListAppsToLaunchResponse { run_ids }))
    }

    async fn request_token(
        &self,
        request: Request<pb::RequestTokenRequest>,
    ) -> Result<Response<pb::RequestTokenResponse>, Status> {
        let token = self
            .core
            .request_token(request.get_ref().run_id, None)
            .await
            .or_status()?;
        Ok(Response::new(pb::RequestTokenResponse { token }))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let run = self
            .core
            .get_run(request.get_ref().run_id)
            .await
            .or_status()?;
        Ok(Response::new(pb::GetRunResponse {
            run: run.as_ref().map(run_to_pb),
        }))
    }

    async fn send_app_heartbeat(
        &self,
        request: Request<pb::SendAppHeartbeatRequest>,
    ) -> Result<Response<pb::SendAppHeartbeatResponse>, Status> {
        let success = self
            .core
            .app_heartbeat(request.into_inner().token)
            .await
            .or_status()?;
        Ok(Response::new(pb::SendAppHeartbeatResponse { success }))
    }

    async fn pull_app_inputs(
        &self,
        request: Request<pb::PullAppInputsRequest>,
    ) -> Result<Response<pb::PullAppInputsResponse>, Status> {
        let inputs = self
            .core
            .pull_app_inputs(request.into_inner().token)
            .await
            .or_status()?;
        let federation_config = match &inputs.run.federation_config {
            Some(b) => Some(pb::SimulationConfig::decode(b.as_ref()).map_err(|source| {
                to_status(Error::Corrupt {
                    what: "federation config",
                    source,
                })
            })?),
            None => None,
        };
        let context = context_from_bytes(&inputs.context).or_status()?;
        tracing::info!(
            run_id = inputs.run.run_id,
            "ServerApp pulled its inputs; run is running"
        );
        Ok(Response::new(pb::PullAppInputsResponse {
            context: Some(context),
            fab: Some(pb::Fab {
                hash_str: inputs.run.fab_hash.clone(),
                content: inputs.fab.content,
                verifications: inputs.fab.verifications.into_iter().collect(),
            }),
            run: Some(run_to_pb(&inputs.run)),
            federation_config,
        }))
    }

    async fn push_app_outputs(
        &self,
        request: Request<pb::PushAppOutputsRequest>,
    ) -> Result<Response<pb::PushAppOutputsResponse>, Status> {
        let body = request.into_inner();
        let context = Bytes::from(body.context.unwrap_or_default().encode_to_vec());
        self.core
            .push_app_outputs(body.token, body.run_id, context)
            .await
            .or_status()?;
        Ok(Response::new(pb::PushAppOutputsResponse {}))
    }

    async fn push_object(
        &self,
        request: Request<pb::PushObjectRequest>,
    ) -> Result<Response<pb::PushObjectResponse>, Status> {
        let body = request.into_inner();
        self.core.gate(body.run_id).await.or_status()?;
        check_superlink_node(&body.node)?;
        let stored = self
            .core
            .push_object(body.run_id, body.object_id, body.object_content)
            .await
            .or_status()?;
        Ok(Response::new(pb::PushObjectResponse { stored }))
    }

    async fn pull_object(
        &self,
        request: Request<pb::PullObjectRequest>,
    ) -> Result<Response<pb::PullObjectResponse>, Status> {
        let body = request.into_inner();
        self.core.gate(body.run_id).await.or_status()?;
        check_superlink_node(&body.node)?;
        let lookup = self.core.pull_object(body.object_id).await.or_status()?;
        let resp = pull_object_response(lookup);
        Ok(Response::new(resp))
    }

    async fn confirm_message_received(
        &self,
        request: Request<pb::ConfirmMessageReceivedRequest>,
    ) -> Result<Response<pb::ConfirmMessageReceivedResponse>, Status> {
        let body = request.into_inner();
        self.core.gate(body.run_id).await.or_status()?;
        check_superlink_node(&body.node)?;
        self.core
            .serverapp_confirm(body.run_id, body.message_object_id)
            .await
            .or_status()?;
        Ok(Response::new(pb::ConfirmMessageReceivedResponse {}))
    }

    async fn update_run_status(
        &self,
        request: Request<pb::UpdateRunStatusRequest>,
    ) -> Result<Response<pb::UpdateRunStatusResponse>, Status> {
        let body = request.into_inner();
        let requested = body.run_status.unwrap_or_default();
        tracing::info!(run_id = body.run_id, status = %requested.status, sub_status = %requested.sub_status, "ServerApp updates the run status");
        self.core
            .update_run_status(body.run_id, run_status_from_pb(&requested))
            .await
            .or_status()?;
        Ok(Response::new(pb::UpdateRunStatusResponse {}))
    }

    async fn push_logs(
        &self,
        request: Request<pb::PushLogsRequest>,
    ) -> Result<Response<pb::PushLogsResponse>, Status> {
        let body = request.into_inner();
        let text: String = body.logs.concat();
        self.core.push_logs(body.run_id, text).await.or_status()?;
        Ok(Response::new(pb::PushLogsResponse {}))
    }

    async fn get_federation_options(
        &self,
        _request: Request<pb::GetFederationOptionsRequest>,
    ) -> Result<Response<pb::GetFederationOptionsResponse>, Status> {
        Err(to_status(Error::NoFederationOptions))
    }

    async fn push_messages(
        &self,
        request: Request<pb::PushAppMessagesRequest>,
    ) -> Result<Response<pb::PushAppMessagesResponse>, Status> {
        let body = request.into_inner();
        self.core.gate(body.run_id).await.or_status()?;
        if body.messages_list.len() != body.message_object_trees.len()
            && !body.messages_list.is_empty()
        {
            return Err(to_status(Error::Malformed(
                "zip() argument 2 is shorter than argument 1".into(),
            )));
        }
        let mut messages = Vec::with_capacity(body.messages_list.len());
        for (m, t) in body.messages_list.iter().zip(&body.message_object_trees) {
            messages.push((
                message_from_pb(m).or_status()?,
                tree_from_pb(t).or_status()?,
            ));
        }
        let (message_ids, to_push) = self
            .core
            .push_instructions(body.run_id, messages)
            .await
            .or_status()?;
        Ok(Response::new(pb::PushAppMessagesResponse {
            message_ids,
            objects_to_push: to_push.iter().map(|id| id.to_hex()).collect(),
        }))
    }

    async fn pull_messages(
        &self,
        request: Request<pb::PullAppMessagesRequest>,
    ) -> Result<Response<pb::PullAppMessagesResponse>, Status> {
        let body = request.into_inner();
        let replies = self
            .core
            .pull_replies_held(body.run_id, body.message_ids)
            .await
            .or_status()?;
        let mut resp = pb::PullAppMessagesResponse::default();
        for (meta, tree) in replies {
            resp.messages_list.push(message_to_pb(&meta));
            resp.message_object_trees.push(tree_to_pb(&tree));
        }
        Ok(Response::new(resp))
    }

    async fn get_nodes(
        &self,
        request: Request<pb::GetNodesRequest>,
    ) -> Result<Response<pb::GetNodesResponse>, Status> {
        let ids = self
            .core
            .get_nodes(request.get_ref().run_id)
            .await
            .or_status()?;
        Ok(Response::new(pb::GetNodesResponse {
            nodes: ids
                .into_iter()
                .map(|node_id| pb::Node { node_id })
                .collect(),
        }))
    }
}
