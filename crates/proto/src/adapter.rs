//! The grpc-adapter Fleet transport: every Fleet call travels as one unary
//! `/flwr.proto.GrpcAdapter/SendReceive` whose `MessageContainer` names the Fleet message by its
//! protobuf class name and carries its encoded bytes. Both daemons use this table to go from a
//! Fleet method to the names on the wire and back.

use std::collections::HashMap;

use bytes::Bytes;

use crate::proto::MessageContainer;

/// One Fleet RPC as the adapter names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetRpc {
    /// The method of service `flwr.proto.Fleet` (`PullMessages`).
    pub method: &'static str,
    /// The request's class name (`PullMessagesRequest`).
    pub request: &'static str,
    /// The response's class name (`PullMessagesResponse`).
    pub response: &'static str,
    /// The Python module that defines both (`flwr.proto.fleet_pb2`), sent in the metadata.
    pub module: &'static str,
}

const fn rpc(
    method: &'static str,
    request: &'static str,
    response: &'static str,
    module: &'static str,
) -> FleetRpc {
    FleetRpc {
        method,
        request,
        response,
        module,
    }
}

/// Every Fleet RPC the adapter carries.
pub const FLEET_RPCS: [FleetRpc; 12] = [
    rpc(
        "RegisterNode",
        "RegisterNodeFleetRequest",
        "RegisterNodeFleetResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "ActivateNode",
        "ActivateNodeRequest",
        "ActivateNodeResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "DeactivateNode",
        "DeactivateNodeRequest",
        "DeactivateNodeResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "UnregisterNode",
        "UnregisterNodeFleetRequest",
        "UnregisterNodeFleetResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "SendNodeHeartbeat",
        "SendNodeHeartbeatRequest",
        "SendNodeHeartbeatResponse",
        "flwr.proto.heartbeat_pb2",
    ),
    rpc(
        "PullMessages",
        "PullMessagesRequest",
        "PullMessagesResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "PushMessages",
        "PushMessagesRequest",
        "PushMessagesResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "GetRun",
        "GetRunRequest",
        "GetRunResponse",
        "flwr.proto.run_pb2",
    ),
    rpc(
        "GetFab",
        "GetFabRequest",
        "GetFabResponse",
        "flwr.proto.fab_pb2",
    ),
    rpc(
        "PushObject",
        "PushObjectRequest",
        "PushObjectResponse",
        "flwr.proto.message_pb2",
    ),
    rpc(
        "PullObject",
        "PullObjectRequest",
        "PullObjectResponse",
        "flwr.proto.message_pb2",
    ),
    rpc(
        "ConfirmMessageReceived",
        "ConfirmMessageReceivedRequest",
        "ConfirmMessageReceivedResponse",
        "flwr.proto.message_pb2",
    ),
];

/// The RPC whose request has this class name.
pub fn by_request(name: &str) -> Option<&'static FleetRpc> {
    FLEET_RPCS.iter().find(|r| r.request == name)
}

/// The RPC of this Fleet method.
pub fn by_method(method: &str) -> Option<&'static FleetRpc> {
    FLEET_RPCS.iter().find(|r| r.method == method)
}

/// Container metadata: the sender's package and version.
pub const PACKAGE_NAME_KEY: &str = "flower-package-name";
/// Container metadata: the sender's package version.
pub const PACKAGE_VERSION_KEY: &str = "flower-package-version";
/// Container metadata: the same version again (Flower keeps it for older peers).
pub const FLOWER_VERSION_KEY: &str = "flower-version";
/// Container metadata: the module of the carried message's class.
pub const MESSAGE_MODULE_KEY: &str = "grpc-message-module";
/// Container metadata: the carried message's class name.
pub const MESSAGE_QUALNAME_KEY: &str = "grpc-message-qualname";
/// Container metadata a server sets to `"true"` to make Flower's SuperNode stop.
pub const SHOULD_EXIT_KEY: &str = "should-exit";

/// The package and version this implementation announces (Flower's, which it replaces).
pub const PACKAGE_NAME: &str = "flwr";
/// See [`PACKAGE_NAME`].
pub const PACKAGE_VERSION: &str = "1.28.0";

/// A container carrying `content`, a message of class `name` from `module`.
pub fn container(name: &str, module: &str, content: Bytes) -> MessageContainer {
    let metadata: HashMap<String, String> = [
        (PACKAGE_NAME_KEY, PACKAGE_NAME),
        (PACKAGE_VERSION_KEY, PACKAGE_VERSION),
        (FLOWER_VERSION_KEY, PACKAGE_VERSION),
        (MESSAGE_MODULE_KEY, module),
        (MESSAGE_QUALNAME_KEY, name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    MessageContainer {
        metadata,
        grpc_message_name: name.to_owned(),
        grpc_message_content: content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fleet_method_is_in_the_table_once() {
        let methods = [
            "RegisterNode",
            "ActivateNode",
            "DeactivateNode",
            "UnregisterNode",
            "SendNodeHeartbeat",
            "PullMessages",
            "PushMessages",
            "GetRun",
            "GetFab",
            "PushObject",
            "PullObject",
            "ConfirmMessageReceived",
        ];
        for m in methods {
            let rpc = by_method(m).unwrap();
            assert_eq!(by_request(rpc.request), Some(rpc));
            assert!(rpc.response.ends_with("Response"), "{rpc:?}");
        }
        assert_eq!(by_request("Nothing"), None);
    }
}
