//! The Fleet API on the grpc-adapter transport (`--fleet-api-type grpc-adapter`): one unary
//! `SendReceive` whose container names the Fleet request by class name. Each call is unpacked and
//! handed to the same [`FleetService`] handlers grpc-rere uses, and the answer is packed the way
//! Flower's adapter client expects (the response's class name, checked by the client, and the
//! package metadata).
//!
//! Authentication is stricter than Flower's, which checks no signature on this transport: every
//! Flower 1.28.0 SuperNode signs its adapter calls as it signs grpc-rere calls, so
//! [`FleetGuard`] verifies them here too, before the body is read, and `--enable-supernode-auth`
//! means what it means on grpc-rere.

use std::future::Future;

use bytes::Bytes;
use flwr_proto::adapter::{self, FleetRpc};
use flwr_proto::proto as pb;
use flwr_transport::node_auth::AuthError;
use pb::fleet_server::Fleet as _;
use tonic::{Request, Response, Status};

use super::fleet::FleetService;
use super::fleet_guard::{joins, Caller, FleetGuard};
use super::status::to_status;
use crate::core::Core;
use crate::error::Error;

/// The grpc-adapter service.
#[derive(Clone)]
pub struct GrpcAdapterService {
    fleet: FleetService,
}

impl GrpcAdapterService {
    /// The adapter over the domain, behind [`FleetGuard`], with the shared message size limits.
    pub fn guarded(
        core: Core,
    ) -> FleetGuard<pb::grpc_adapter_server::GrpcAdapterServer<GrpcAdapterService>> {
        let server =
            flwr_transport::limits!(pb::grpc_adapter_server::GrpcAdapterServer::new(Self {
                fleet: FleetService::new(core.clone()),
            }));
        FleetGuard::new(server, core)
    }

    /// Decodes the carried request, runs `handler` on it with the call's metadata and verified
    /// caller, and packs its answer.
    async fn relay<T, R, F, Fut>(
        rpc: &FleetRpc,
        request: Request<Bytes>,
        handler: F,
    ) -> Result<pb::MessageContainer, Status>
    where
        T: prost::Message + Default,
        R: prost::Message,
        F: FnOnce(Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let (metadata, extensions, content) = request.into_parts();
        let body = T::decode(content).map_err(|e| {
            to_status(Error::Malformed(format!(
                "Error parsing message with type 'flwr.proto.{}': {e}",
                rpc.request
            )))
        })?;
        let answer = handler(Request::from_parts(metadata, extensions, body)).await?;
        Ok(adapter::container(
            rpc.response,
            rpc.module,
            Bytes::from(answer.into_inner().encode_to_vec()),
        ))
    }
}

#[tonic::async_trait]
impl pb::grpc_adapter_server::GrpcAdapter for GrpcAdapterService {
    async fn send_receive(
        &self,
        request: Request<pb::MessageContainer>,
    ) -> Result<Response<pb::MessageContainer>, Status> {
        let (metadata, mut extensions, container) = request.into_parts();
        let Some(rpc) = adapter::by_request(&container.grpc_message_name) else {
            return Err(to_status(Error::Malformed(format!(
                "Invalid grpc_message_name: {}",
                container.grpc_message_name
            ))));
        };
        // The guard let a key without a node through only because the method was unknown then:
        // now it is, and everything but joining needs the node.
        match extensions.get_mut::<Caller>() {
            None => {
                return Err(to_status(Error::NotAuthenticated(
                    AuthError::MissingMetadata.to_string(),
                )))
            }
            Some(caller) if joins(rpc.method).is_some() => caller.node = None,
            Some(Caller { node: None, .. }) => return Err(to_status(Error::InvalidNodeId)),
            Some(_) => {}
        }
        let request = Request::from_parts(metadata, extensions, container.grpc_message_content);
        let f = &self.fleet;
        let answer = match rpc.method {
            "RegisterNode" => Self::relay(rpc, request, |r| f.register_node(r)).await,
            "ActivateNode" => Self::relay(rpc, request, |r| f.activate_node(r)).await,
            "DeactivateNode" => Self::relay(rpc, request, |r| f.deactivate_node(r)).await,
            "UnregisterNode" => Self::relay(rpc, request, |r| f.unregister_node(r)).await,
            "SendNodeHeartbeat" => Self::relay(rpc, request, |r| f.send_node_heartbeat(r)).await,
            "PullMessages" => Self::relay(rpc, request, |r| f.pull_messages(r)).await,
            "PushMessages" => Self::relay(rpc, request, |r| f.push_messages(r)).await,
            "GetRun" => Self::relay(rpc, request, |r| f.get_run(r)).await,
            "GetFab" => Self::relay(rpc, request, |r| f.get_fab(r)).await,
            "PushObject" => Self::relay(rpc, request, |r| f.push_object(r)).await,
            "PullObject" => Self::relay(rpc, request, |r| f.pull_object(r)).await,
            "ConfirmMessageReceived" => {
                Self::relay(rpc, request, |r| f.confirm_message_received(r)).await
            }
            // The table and this match list the same twelve methods (a unit test of the table
            // checks them); a thirteenth would be refused here until it has its arm.
            other => Err(to_status(Error::Malformed(format!(
                "Invalid grpc_message_name: {other}"
            )))),
        }?;
        Ok(Response::new(answer))
    }
}
