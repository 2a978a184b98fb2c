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

use flwr_proto::adapter;
use flwr_proto::proto as pb;
use flwr_transport::node_auth::AuthError;
use tonic::{Request, Response, Status};

use super::fleet::FleetService;
use super::fleet_dispatch::{self, Attribution};
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
        let answer = fleet_dispatch::call(&self.fleet, rpc, request, Attribution::Verified).await?;
        let answer = adapter::container(rpc.response, rpc.module, answer);
        Ok(Response::new(answer))
    }
}
