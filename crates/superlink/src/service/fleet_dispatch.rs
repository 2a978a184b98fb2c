//! One Fleet call named by its method, with its request as protobuf bytes: what the grpc-adapter
//! and REST transports share. The request is decoded and handed to the same [`FleetService`]
//! handler grpc-rere uses; the handler's answer comes back encoded.

use std::future::Future;

use bytes::Bytes;
use flwr_proto::adapter::FleetRpc;
use flwr_proto::proto as pb;
use pb::fleet_server::Fleet as _;
use tonic::{Request, Response, Status};

use super::fleet::FleetService;
use super::fleet_guard::Caller;
use super::status::to_status;
use crate::error::Error;

/// Who a call is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// The [`Caller`] in the request's extensions, verified from its signature.
    Verified,
    /// Whoever the request body names (its node, or the key it joins with): REST calls that
    /// carry no signature, which Flower's REST SuperNode never sends, accepted only while
    /// `--enable-supernode-auth` is off, as Flower's REST transport accepts them.
    Claimed,
}

/// The caller a request body names.
trait Claimed {
    fn claimed(&self) -> Caller;
}

fn node_caller(node: &Option<pb::Node>) -> Caller {
    Caller {
        public_key: Bytes::new(),
        node: Some(node.as_ref().map_or(0, |n| n.node_id)),
    }
}

macro_rules! claimed_by_node {
    ($($t:ty),*) => {
        $(impl Claimed for $t {
            fn claimed(&self) -> Caller {
                node_caller(&self.node)
            }
        })*
    };
}

claimed_by_node!(
    pb::SendNodeHeartbeatRequest,
    pb::PullMessagesRequest,
    pb::PushMessagesRequest,
    pb::GetRunRequest,
    pb::GetFabRequest,
    pb::PushObjectRequest,
    pb::PullObjectRequest,
    pb::ConfirmMessageReceivedRequest
);

impl Claimed for pb::RegisterNodeFleetRequest {
    fn claimed(&self) -> Caller {
        Caller {
            public_key: self.public_key.clone(),
            node: None,
        }
    }
}

impl Claimed for pb::ActivateNodeRequest {
    fn claimed(&self) -> Caller {
        Caller {
            public_key: self.public_key.clone(),
            node: None,
        }
    }
}

impl Claimed for pb::DeactivateNodeRequest {
    fn claimed(&self) -> Caller {
        Caller {
            public_key: Bytes::new(),
            node: Some(self.node_id),
        }
    }
}

impl Claimed for pb::UnregisterNodeFleetRequest {
    fn claimed(&self) -> Caller {
        Caller {
            public_key: Bytes::new(),
            node: Some(self.node_id),
        }
    }
}

/// Decodes the request, runs `handler` on it with the call's metadata and caller, and encodes
/// its answer.
async fn relay<T, R, F, Fut>(
    rpc: &FleetRpc,
    request: Request<Bytes>,
    attribution: Attribution,
    handler: F,
) -> Result<Bytes, Status>
where
    T: prost::Message + Default + Claimed,
    R: prost::Message,
    F: FnOnce(Request<T>) -> Fut,
    Fut: Future<Output = Result<Response<R>, Status>>,
{
    let (metadata, mut extensions, content) = request.into_parts();
    let body = T::decode(content).map_err(|e| {
        to_status(Error::Malformed(format!(
            "Error parsing message with type 'flwr.proto.{}': {e}",
            rpc.request
        )))
    })?;
    if attribution == Attribution::Claimed {
        extensions.insert(body.claimed());
    }
    let answer = handler(Request::from_parts(metadata, extensions, body)).await?;
    Ok(Bytes::from(answer.into_inner().encode_to_vec()))
}

/// Runs the Fleet call `rpc` on `request` (its body the encoded Fleet request) and returns the
/// encoded answer.
pub async fn call(
    fleet: &FleetService,
    rpc: &FleetRpc,
    request: Request<Bytes>,
    attribution: Attribution,
) -> Result<Bytes, Status> {
    let (f, a) = (fleet, attribution);
    match rpc.method {
        "RegisterNode" => relay(rpc, request, a, |r| f.register_node(r)).await,
        "ActivateNode" => relay(rpc, request, a, |r| f.activate_node(r)).await,
        "DeactivateNode" => relay(rpc, request, a, |r| f.deactivate_node(r)).await,
        "UnregisterNode" => relay(rpc, request, a, |r| f.unregister_node(r)).await,
        "SendNodeHeartbeat" => relay(rpc, request, a, |r| f.send_node_heartbeat(r)).await,
        "PullMessages" => relay(rpc, request, a, |r| f.pull_messages(r)).await,
        "PushMessages" => relay(rpc, request, a, |r| f.push_messages(r)).await,
        "GetRun" => relay(rpc, request, a, |r| f.get_run(r)).await,
        "GetFab" => relay(rpc, request, a, |r| f.get_fab(r)).await,
        "PushObject" => relay(rpc, request, a, |r| f.push_object(r)).await,
        "PullObject" => relay(rpc, request, a, |r| f.pull_object(r)).await,
        "ConfirmMessageReceived" => relay(rpc, request, a, |r| f.confirm_message_received(r)).await,
        // The table and this match list the same twelve methods (a unit test of the table
        // checks them); a thirteenth would be refused here until it has its arm.
        other => Err(to_status(Error::Malformed(format!(
            "Invalid grpc_message_name: {other}"
        )))),
    }
}
