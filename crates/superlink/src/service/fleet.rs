//! The Fleet API (grpc-rere) for SuperNodes, with node authentication always on, as in Flower:
//! every call carries a PEM public key, a timestamp and an ECDSA signature of the timestamp;
//! every call but RegisterNode and ActivateNode must also name the node that key belongs to.
//! [`super::fleet_guard`] checks the signature before the body is read; the handlers here check
//! that the node named is the caller's.

use flwr_objects::store::Lookup;
use flwr_proto::proto as pb;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::convert::{
    message_from_pb, message_to_pb, pull_object_response, run_to_pb, tree_from_pb, tree_to_pb,
};
use super::fleet_guard::{Caller, FleetGuard};
use super::status::{to_status, OrStatus};
use crate::core::Core;
use crate::error::Error;
use flwr_state::NodeId;
use flwr_transport::node_auth::AuthError;

/// The Fleet service.
#[derive(Clone)]
pub struct FleetService {
    core: Core,
}

impl FleetService {
    /// The Fleet handlers, unguarded: only for a transport that puts [`FleetGuard`] in front.
    pub(crate) fn new(core: Core) -> Self {
        Self { core }
    }

    /// The Fleet API over the domain, behind [`FleetGuard`], which authenticates every call
    /// before its body is read, with the shared message size limits.
    pub fn guarded(core: Core) -> FleetGuard<pb::fleet_server::FleetServer<FleetService>> {
        let server = flwr_transport::limits!(pb::fleet_server::FleetServer::new(Self {
            core: core.clone()
        }));
        FleetGuard::new(server, core)
    }
}

/// The caller [`FleetGuard`] verified.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            to_status(Error::NotAuthenticated(
                AuthError::MissingMetadata.to_string(),
            ))
        })
}

/// The verified caller's node, which must be the node the request names (Flower's "Invalid node
/// ID").
fn authenticated_node<T>(request: &Request<T>, claimed: NodeId) -> Result<NodeId, Status> {
    match caller(request)?.node {
        Some(actual) if actual == claimed => Ok(actual),
        _ => Err(to_status(Error::InvalidNodeId)),
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
        let caller = caller(&request)?;
        let body = request.into_inner();
        // Stricter than Flower, which stores any bytes: the key registered is the signing key.
        if body.public_key != caller.public_key {
            return Err(to_status(Error::KeyNotSigner));
        }
        let node_id = self.core.register_node(body.public_key).await.or_status()?;
        tracing::info!(node_id, "SuperNode registered");
        Ok(Response::new(pb::RegisterNodeFleetResponse { node_id }))
    }

    async fn activate_node(
        &self,
        request: Request<pb::ActivateNodeRequest>,
    ) -> Result<Response<pb::ActivateNodeResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        if body.public_key != caller.public_key {
            return Err(to_status(Error::NoNodeForKey));
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
        let node_id = authenticated_node(&request, request.get_ref().node_id)?;
        self.core.deactivate_node(node_id).await.or_status()?;
        tracing::info!(node_id, "SuperNode deactivated");
        Ok(Response::new(pb::DeactivateNodeResponse {}))
    }

    async fn unregister_node(
        &self,
        request: Request<pb::UnregisterNodeFleetRequest>,
    ) -> Result<Response<pb::UnregisterNodeFleetResponse>, Status> {
        let node_id = authenticated_node(&request, request.get_ref().node_id)?;
        self.core.unregister_node_fleet(node_id).await.or_status()?;
        tracing::info!(node_id, "SuperNode unregistered");
        Ok(Response::new(pb::UnregisterNodeFleetResponse {}))
    }

    async fn send_node_heartbeat(
        &self,
        request: Request<pb::SendNodeHeartbeatRequest>,
    ) -> Result<Response<pb::SendNodeHeartbeatResponse>, Status> {
        let node_id = authenticated_node(&request, node_of(&request.get_ref().node))?;
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
        let node_id = authenticated_node(&request, node_of(&request.get_ref().node))?;
        let request_len = request.get_ref().encoded_len() as u64;
        let wait = request
            .metadata()
            .get(flwr_transport::grpc::PULL_WAIT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis);
        let mut resp = pb::PullMessagesResponse::default();
        let (pulled, held) = self
            .core
            .pull_instruction_held(node_id, wait)
            .await
            .or_status()?;
        if let Some((meta, tree)) = pulled {
            let run_id = meta.run_id;
            resp.messages_list.push(message_to_pb(&meta));
            resp.message_object_trees.push(tree_to_pb(&tree));
            self.core
                .add_traffic(run_id, resp.encoded_len() as u64, request_len)
                .await
                .or_status()?;
        }
        let mut resp = Response::new(resp);
        if let Some(held) = held {
            resp.metadata_mut().insert(
                flwr_transport::grpc::PULL_WAIT_HEADER,
                tonic::metadata::MetadataValue::from(held.as_millis() as u64),
            );
        }
        Ok(resp)
    }

    async fn push_messages(
        &self,
        request: Request<pb::PushMessagesRequest>,
    ) -> Result<Response<pb::PushMessagesResponse>, Status> {
        let node_id = authenticated_node(&request, node_of(&request.get_ref().node))?;
        let request_len = request.get_ref().encoded_len() as u64;
        let body = request.into_inner();
        let first = body
            .messages_list
            .first()
            .ok_or_else(|| to_status(Error::Malformed("list index out of range".into())))?;
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
        authenticated_node(&request, node_of(&request.get_ref().node))?;
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
        authenticated_node(&request, node_of(&request.get_ref().node))?;
        let body = request.into_inner();
        let fab = self
            .core
            .fleet_get_fab(body.run_id, body.hash_str.clone())
            .await
            .or_status()?;
        Ok(Response::new(pb::GetFabResponse {
            fab: Some(pb::Fab {
                hash_str: body.hash_str,
                content: fab.content,
                verifications: fab.verifications.into_iter().collect(),
            }),
        }))
    }

    async fn push_object(
        &self,
        request: Request<pb::PushObjectRequest>,
    ) -> Result<Response<pb::PushObjectResponse>, Status> {
        authenticated_node(&request, node_of(&request.get_ref().node))?;
        let body = request.into_inner();
        self.core.gate(body.run_id).await.or_status()?;
        let len = body.object_content.len() as u64;
        let stored = self
            .core
            .push_object(body.run_id, body.object_id, body.object_content)
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
        let node_id = authenticated_node(&request, node_of(&request.get_ref().node))?;
        let body = request.into_inner();
        self.core.gate(body.run_id).await.or_status()?;
        let lookup = self
            .core
            .fleet_pull_object(node_id, body.run_id, body.object_id)
            .await
            .or_status()?;
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
        let node_id = authenticated_node(&request, node_of(&request.get_ref().node))?;
        let body = request.into_inner();
        self.core.gate(body.run_id).await.or_status()?;
        self.core
            .fleet_confirm(node_id, body.run_id, body.message_object_id)
            .await
            .or_status()?;
        Ok(Response::new(pb::ConfirmMessageReceivedResponse {}))
    }
}
