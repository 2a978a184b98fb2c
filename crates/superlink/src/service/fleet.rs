//! The Fleet API (grpc-rere) for SuperNodes, with node authentication always on, as in Flower:
//! every call carries a PEM public key, a timestamp and an ECDSA signature of the timestamp;
//! every call but RegisterNode and ActivateNode must also name the node that key belongs to.

use bytes::Bytes;
use flwr_objects::store::Lookup;
use flwr_proto::proto as pb;
use flwr_transport::node_auth::{self, AuthError};
use prost::Message as _;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::convert::{
    message_from_pb, message_to_pb, pull_object_response, run_to_pb, tree_from_pb, tree_to_pb,
};
use super::status::OrStatus;
use crate::core::Core;
use crate::state::NodeId;

/// The Fleet service.
#[derive(Clone)]
pub struct FleetService {
    core: Core,
}

/// The public key of a caller whose signature checked out.
struct Caller {
    public_key: Bytes,
}

fn unauthenticated(e: AuthError) -> Status {
    Status::unauthenticated(e.to_string())
}

impl FleetService {
    /// A service over the domain.
    pub fn new(core: Core) -> Self {
        Self { core }
    }

    /// Checks the signed metadata: the time window first (cheap), then the signature.
    fn authenticate(&self, md: &MetadataMap) -> Result<Caller, Status> {
        let key = md
            .get_bin(node_auth::PUBLIC_KEY_HEADER)
            .and_then(|v| v.to_bytes().ok());
        let ts = md
            .get(node_auth::TIMESTAMP_HEADER)
            .and_then(|v| v.to_str().ok());
        let sig = md
            .get_bin(node_auth::SIGNATURE_HEADER)
            .and_then(|v| v.to_bytes().ok());
        let (Some(public_key), Some(ts), Some(sig)) = (key, ts, sig) else {
            return Err(unauthenticated(AuthError::MissingMetadata));
        };
        let parsed = self
            .core
            .parse_key(&public_key)
            .ok_or_else(|| unauthenticated(AuthError::InvalidSignature))?;
        let now = chrono::Utc::now();
        node_auth::verify_signed_timestamp(&parsed, ts, &sig, now).map_err(unauthenticated)?;
        Ok(Caller { public_key })
    }

    /// Authenticates and checks that the key belongs to `claimed` (Flower's "Invalid node ID").
    async fn authenticate_node(&self, md: &MetadataMap, claimed: NodeId) -> Result<NodeId, Status> {
        let caller = self.authenticate(md)?;
        match self
            .core
            .node_for_key(caller.public_key)
            .await
            .or_status()?
        {
            Some(actual) if actual == claimed => Ok(actual),
            _ => Err(Status::unauthenticated("Invalid node ID")),
        }
    }
}

fn node_of(node: &Option<pb::Node>) -> NodeId {
    node.as_ref().map(|n| n.node_id).unwrap_or(0)
}

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetService {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeFleetRequest>,
    ) -> Result<Response<pb::RegisterNodeFleetResponse>, Status> {
        let caller = self.authenticate(request.metadata())?;
        let body = request.into_inner();
        // Stricter than Flower, which stores any bytes: the key registered is the signing key.
        if body.public_key != caller.public_key {
            return Err(Status::failed_precondition(
                "The public key in the request is not the key that signed it.",
            ));
        }
        let node_id = self.core.register_node(body.public_key).await.or_status()?;
        tracing::info!(node_id, "SuperNode registered");
        Ok(Response::new(pb::RegisterNodeFleetResponse { node_id }))
    }

    async fn activate_node(
        &self,
        request: Request<pb::ActivateNodeRequest>,
    ) -> Result<Response<pb::ActivateNodeResponse>, Status> {
        let caller = self.authenticate(request.metadata())?;
        let body = request.into_inner();
        if body.public_key != caller.public_key {
            return Err(Status::failed_precondition(
                "No SuperNode found with the given public key.",
            ));
        }
        let node_id = self
            .core
            .activate_node(body.public_key, body.heartbeat_interval)
            .await
            .or_status()?;
        tracing::info!(node_id, "SuperNode activated");
        Ok(Response::new(pb::ActivateNodeResponse { node_id }))
    }

    async fn deactivate_node(
        &self,
        request: Request<pb::DeactivateNodeRequest>,
    ) -> Result<Response<pb::DeactivateNodeResponse>, Status> {
        let node_id = self
            .authenticate_node(request.metadata(), request.get_ref().node_id)
            .await?;
        self.core.deactivate_node(node_id).await.or_status()?;
        tracing::info!(node_id, "SuperNode deactivated");
        Ok(Response::new(pb::DeactivateNodeResponse {}))
    }

    async fn unregister_node(
        &self,
        request: Request<pb::UnregisterNodeFleetRequest>,
    ) -> Result<Response<pb::UnregisterNodeFleetResponse>, Status> {
        let node_id = self
            .authenticate_node(request.metadata(), request.get_ref().node_id)
            .await?;
        self.core.unregister_node_fleet(node_id).await.or_status()?;
        tracing::info!(node_id, "SuperNode unregistered");
        Ok(Response::new(pb::UnregisterNodeFleetResponse {}))
    }

    async fn send_node_heartbeat(
        &self,
        request: Request<pb::SendNodeHeartbeatRequest>,
    ) -> Result<Response<pb::SendNodeHeartbeatResponse>, Status> {
        let node_id = self
            .authenticate_node(request.metadata(), node_of(&request.get_ref().node))
            .await?;
        let success = self
            .core
            .node_heartbeat(node_id, request.get_ref().heartbeat_interval)
            .await
            .or_status()?;
        Ok(Response::new(pb::SendNodeHeartbeatResponse { success }))
    }

    async fn pull_messages(
        &self,
        request: Request<pb::PullMessagesRequest>,
    ) -> Result<Response<pb::PullMessagesResponse>, Status> {
        let node_id = self
            .authenticate_node(request.metadata(), node_of(&request.get_ref().node))
            .await?;
        let request_len = request.get_ref().encoded_len() as u64;
        let mut resp = pb::PullMessagesResponse::default();
        if let Some((meta, tree)) = self.core.pull_instruction(node_id).await.or_status()? {
            let run_id = meta.run_id;
            resp.messages_list.push(message_to_pb(&meta));
            resp.message_object_trees.push(tree_to_pb(&tree));
            self.core
                .add_traffic(run_id, resp.encoded_len() as u64, request_len)
                .await
                .or_status()?;
        }
        Ok(Response::new(resp))
    }

    async fn push_messages(
        &self,
        request: Request<pb::PushMessagesRequest>,
    ) -> Result<Response<pb::PushMessagesResponse>, Status> {
        let node_id = self
            .authenticate_node(request.metadata(), node_of(&request.get_ref().node))
            .await?;
        let request_len = request.get_ref().encoded_len() as u64;
        let body = request.into_inner();
        let first = body.messages_list.first().ok_or_else(|| {
            Status::unknown("Exception calling application: list index out of range")
        })?;
        let reply = message_from_pb(first).or_status()?;
        let trees = body
            .message_object_trees
            .iter()
            .map(tree_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .or_status()?;
        let runtime = body.clientapp_runtime_list.first().copied().unwrap_or(0.0);
        let run_id = reply.run_id;
        let (stored, to_push) = self
            .core
            .push_reply(node_id, reply, trees, runtime)
            .await
            .or_status()?;
        let mut resp = pb::PushMessagesResponse {
            reconnect: Some(pb::Reconnect { reconnect: 5 }),
            results: Default::default(),
            objects_to_push: to_push.iter().map(|id| id.to_hex()).collect(),
        };
        resp.results
            .insert(stored.unwrap_or_else(|| "None".to_owned()), 0);
        self.core
            .add_traffic(run_id, resp.encoded_len() as u64, request_len)
            .await
            .or_status()?;
        Ok(Response::new(resp))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        self.authenticate_node(request.metadata(), node_of(&request.get_ref().node))
            .await?;
        let run = self
            .core
            .fleet_get_run(request.get_ref().run_id)
            .await
            .or_status()?;
        Ok(Response::new(pb::GetRunResponse {
            run: Some(run_to_pb(&run)),
        }))
    }

    async fn get_fab(
        &self,
        request: Request<pb::GetFabRequest>,
    ) -> Result<Response<pb::GetFabResponse>, Status> {
        self.authenticate_node(request.metadata(), node_of(&request.get_ref().node))
            .await?;
        let body = request.into_inner();
        let content = self
            .core
            .fleet_get_fab(body.run_id, body.hash_str.clone())
            .await
            .or_status()?;
        Ok(Response::new(pb::GetFabResponse {
            fab: Some(pb::Fab {
                hash_str: body.hash_str,
                content,
                verifications: Default::default(),
            }),
        }))
    }

    async fn push_object(
        &self,
        request: Request<pb::PushObjectRequest>,
    ) -> Result<Response<pb::PushObjectResponse>, Status> {
        self.authenticate_node(request.metadata(), node_of(&request.get_ref().node))
            .await?;
        let body = request.into_inner();
        self.core.gate(body.run_id).await.or_status()?;
        let len = body.object_content.len() as u64;
        let stored = self
            .core
            .push_object(body.object_id, body.object_content)
            .await
            .or_status()?;
        if stored {
            self.core
                .add_traffic(body.run_id, 0, len)
                .await
                .or_status()?;
        }
        Ok(Response::new(pb::PushObjectResponse { stored }))
    }

    async fn pull_object(
        &self,
        request: Request<pb::PullObjectRequest>,
    ) -> Result<Response<pb::PullObjectResponse>, Status> {
        self.authenticate_node(request.metadata(), node_of(&request.get_ref().node))
            .await?;
        let body = request.into_inner();
        self.core.gate(body.run_id).await.or_status()?;
        let lookup = self.core.pull_object(body.object_id).await.or_status()?;
        if let Lookup::Available(content) = &lookup {
            self.core
                .add_traffic(body.run_id, content.len() as u64, 0)
                .await
                .or_status()?;
        }
        let resp = pull_object_response(lookup);
        Ok(Response::new(resp))
    }

    async fn confirm_message_received(
        &self,
        request: Request<pb::ConfirmMessageReceivedRequest>,
    ) -> Result<Response<pb::ConfirmMessageReceivedResponse>, Status> {
        self.authenticate_node(request.metadata(), node_of(&request.get_ref().node))
            .await?;
        let body = request.into_inner();
        self.core.gate(body.run_id).await.or_status()?;
        self.core
            .confirm(body.message_object_id)
            .await
            .or_status()?;
        Ok(Response::new(pb::ConfirmMessageReceivedResponse {}))
    }
}
