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
    /// Its path on the REST transport, after `/api/v0/fleet/` (`pull-messages`).
    pub rest: &'static str,
    /// The Python module that defines both (`flwr.proto.fleet_pb2`), sent in the metadata.
    pub module: &'static str,
}

const fn rpc(
    method: &'static str,
    rest: &'static str,
    request: &'static str,
    response: &'static str,
    module: &'static str,
) -> FleetRpc {
    FleetRpc {
        method,
        request,
        response,
        rest,
        module,
    }
}

/// Every Fleet RPC the adapter carries.
pub const FLEET_RPCS: [FleetRpc; 12] = [
    rpc(
        "RegisterNode",
        "register-node",
        "RegisterNodeFleetRequest",
        "RegisterNodeFleetResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "ActivateNode",
        "activate-node",
        "ActivateNodeRequest",
        "ActivateNodeResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "DeactivateNode",
        "deactivate-node",
        "DeactivateNodeRequest",
        "DeactivateNodeResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "UnregisterNode",
        "unregister-node",
        "UnregisterNodeFleetRequest",
        "UnregisterNodeFleetResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "SendNodeHeartbeat",
        "send-node-heartbeat",
        "SendNodeHeartbeatRequest",
        "SendNodeHeartbeatResponse",
        "flwr.proto.heartbeat_pb2",
    ),
    rpc(
        "PullMessages",
        "pull-messages",
        "PullMessagesRequest",
        "PullMessagesResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "PushMessages",
        "push-messages",
        "PushMessagesRequest",
        "PushMessagesResponse",
        "flwr.proto.fleet_pb2",
    ),
    rpc(
        "GetRun",
        "get-run",
        "GetRunRequest",
        "GetRunResponse",
        "flwr.proto.run_pb2",
    ),
    rpc(
        "GetFab",
        "get-fab",
        "GetFabRequest",
        "GetFabResponse",
        "flwr.proto.fab_pb2",
    ),
    rpc(
        "PushObject",
        "push-object",
        "PushObjectRequest",
        "PushObjectResponse",
        "flwr.proto.message_pb2",
    ),
    rpc(
        "PullObject",
        "pull-object",
        "PullObjectRequest",
        "PullObjectResponse",
        "flwr.proto.message_pb2",
    ),
    rpc(
        "ConfirmMessageReceived",
        "confirm-message-received",
        "ConfirmMessageReceivedRequest",
        "ConfirmMessageReceivedResponse",
        "flwr.proto.message_pb2",
    ),
];

/// The RPC whose request has this class name.
pub fn by_request(name: &str) -> Option<&'static FleetRpc> {
    FLEET_RPCS.iter().find(|r| r.request == name)
}

/// The RPC served at `/api/v0/fleet/<rest>` on the REST transport.
pub fn by_rest_path(rest: &str) -> Option<&'static FleetRpc> {
    FLEET_RPCS.iter().find(|r| r.rest == rest)
}

/// The RPC a REST request path names: `/api/v0/fleet/<rest>`, also with the doubled leading
/// slash Flower 1.28.0's REST SuperNode sends (`//api/v0/fleet/register-node`).
pub fn by_rest_request_path(path: &str) -> Option<&'static FleetRpc> {
    path.trim_start_matches('/')
        .strip_prefix("api/v0/fleet/")
        .and_then(by_rest_path)
}

/// Whether `path` is a REST path of a Fleet RPC (for the metrics' method label).
pub fn is_rest_path(path: &str) -> bool {
    by_rest_request_path(path).is_some()
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
            assert_eq!(by_rest_path(rpc.rest), Some(rpc));
            assert!(rpc.response.ends_with("Response"), "{rpc:?}");
        }
        assert_eq!(by_request("Nothing"), None);
        assert_eq!(
            by_rest_request_path("//api/v0/fleet/register-node").map(|r| r.method),
            Some("RegisterNode")
        );
        assert_eq!(
            by_rest_request_path("/api/v0/fleet/send-node-heartbeat").map(|r| r.method),
            Some("SendNodeHeartbeat")
        );
        assert_eq!(by_rest_request_path("/api/v0/fleet/nothing"), None);
        assert_eq!(by_rest_request_path("/api/v1/fleet/get-run"), None);
    }
}
