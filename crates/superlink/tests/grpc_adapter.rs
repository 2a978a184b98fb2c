//! `--fleet-api-type grpc-adapter` on the wire: Fleet calls packed in `GrpcAdapter/SendReceive`
//! are answered as Flower's adapter client expects, signatures are checked as on grpc-rere, and
//! bad containers get a clear status without harming the SuperLink. (Flower's own SuperNodes on
//! this transport: `federation.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use bytes::Bytes;
use flwr_proto::adapter;
use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_transport::node_auth::NodeSigningKey;
use prost::Message as _;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

mod common;
use common::{channel, signed};

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

type Adapter = pb::grpc_adapter_client::GrpcAdapterClient<Channel>;

/// Sends `body` as Fleet `method`, signed by `key` (unsigned when `None`); returns the answer's
/// container.
async fn send(
    client: &mut Adapter,
    key: Option<&NodeSigningKey>,
    name: &str,
    content: Bytes,
) -> Result<pb::MessageContainer, Status> {
    let container = pb::MessageContainer {
        metadata: Default::default(),
        grpc_message_name: name.to_owned(),
        grpc_message_content: content,
    };
    let request = match key {
        Some(k) => signed(k, container, None),
        None => Request::new(container),
    };
    client.send_receive(request).await.map(|r| r.into_inner())
}

/// A Fleet call through the adapter that must succeed; checks the answer's names.
async fn call<T: prost::Message, R: prost::Message + Default>(
    client: &mut Adapter,
    key: &NodeSigningKey,
    method: &str,
    body: T,
) -> R {
    let rpc = adapter::by_method(method).unwrap();
    let answer = send(client, Some(key), rpc.request, body.encode_to_vec().into())
        .await
        .unwrap_or_else(|s| panic!("{method}: {s:?}"));
    assert_eq!(answer.grpc_message_name, rpc.response);
    for (key, want) in [
        (adapter::MESSAGE_QUALNAME_KEY, rpc.response),
        (adapter::MESSAGE_MODULE_KEY, rpc.module),
        (adapter::PACKAGE_NAME_KEY, "flwr"),
    ] {
        assert_eq!(
            answer.metadata.get(key).map(String::as_str),
            Some(want),
            "{key}"
        );
    }
    R::decode(answer.grpc_message_content).unwrap()
}

/// A heartbeat of `node` through the adapter, which must succeed.
async fn heartbeat(client: &mut Adapter, key: &NodeSigningKey, node: Option<pb::Node>) {
    let beat: pb::SendNodeHeartbeatResponse = call(
        client,
        key,
        "SendNodeHeartbeat",
        pb::SendNodeHeartbeatRequest {
            node,
            heartbeat_interval: 30.0,
        },
    )
    .await;
    assert!(beat.success);
}

fn code<T>(r: Result<T, Status>) -> (Code, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_adapter_carries_fleet_calls_and_refuses_bad_containers() {
    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(
        BIN.as_ref(),
        None,
        dir.path(),
        &["--isolation", "process", "--fleet-api-type", "grpc-adapter"],
    );
    let mut client = flwr_transport::limits!(Adapter::new(channel(&superlink.fleet)));

    // A node joins, beats and pulls, every call through the adapter.
    let key = NodeSigningKey::generate();
    let public_key = Bytes::copy_from_slice(key.public_key_pem());
    let registered: pb::RegisterNodeFleetResponse = call(
        &mut client,
        &key,
        "RegisterNode",
        pb::RegisterNodeFleetRequest {
            public_key: public_key.clone(),
        },
    )
    .await;
    let activated: pb::ActivateNodeResponse = call(
        &mut client,
        &key,
        "ActivateNode",
        pb::ActivateNodeRequest {
            public_key,
            heartbeat_interval: 30.0,
        },
    )
    .await;
    assert_eq!(activated.node_id, registered.node_id);
    let node = Some(pb::Node {
        node_id: activated.node_id,
    });
    heartbeat(&mut client, &key, node).await;
    let pulled: pb::PullMessagesResponse = call(
        &mut client,
        &key,
        "PullMessages",
        pb::PullMessagesRequest {
            node,
            message_ids: vec![],
        },
    )
    .await;
    assert!(pulled.messages_list.is_empty());

    // Unsigned, and signed by a key without a node (for anything but joining): refused.
    let pull = pb::PullMessagesRequest {
        node,
        message_ids: vec![],
    }
    .encode_to_vec();
    let (c, m) = code(
        send(
            &mut client,
            None,
            "PullMessagesRequest",
            pull.clone().into(),
        )
        .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    let stranger = NodeSigningKey::generate();
    let (c, m) = code(
        send(
            &mut client,
            Some(&stranger),
            "PullMessagesRequest",
            pull.into(),
        )
        .await,
    );
    assert_eq!((c, m.as_str()), (Code::Unauthenticated, "Invalid node ID"));

    // A name that is no Fleet request, and content that does not decode: what Flower answers.
    let (c, m) = code(send(&mut client, Some(&key), "Nope", Bytes::new()).await);
    assert_eq!(
        (c, m.as_str()),
        (
            Code::Unknown,
            "Exception calling application: Invalid grpc_message_name: Nope"
        )
    );
    let (c, m) = code(
        send(
            &mut client,
            Some(&key),
            "PullMessagesRequest",
            Bytes::from_static(&[0x0a, 0x05, 0x08]),
        )
        .await,
    );
    assert_eq!(c, Code::Unknown, "{m}");
    assert!(m.contains("PullMessagesRequest"), "{m}");

    // A key without a node may only be joining: its body is cut off at the joins' bound, while
    // a node's large body goes through to the handler.
    let big = Bytes::from(vec![7u8; 1 << 20]);
    let (c, m) = code(
        send(
            &mut client,
            Some(&stranger),
            "RegisterNodeFleetRequest",
            big.clone(),
        )
        .await,
    );
    assert_eq!(c, Code::ResourceExhausted, "{m}");
    let push = pb::PushObjectRequest {
        node,
        run_id: 1,
        object_id: "0".repeat(64),
        object_content: big,
    };
    let r = send(
        &mut client,
        Some(&key),
        "PushObjectRequest",
        push.encode_to_vec().into(),
    )
    .await;
    assert!(
        !matches!(&r, Err(s) if s.code() == Code::ResourceExhausted),
        "{r:?}"
    );

    // grpc-rere is not served on this port, as in Flower; the SuperLink still works.
    let mut rere = pb::fleet_client::FleetClient::new(channel(&superlink.fleet));
    let (c, _) = code(
        rere.send_node_heartbeat(signed(
            &key,
            pb::SendNodeHeartbeatRequest {
                node,
                heartbeat_interval: 30.0,
            },
            None,
        ))
        .await,
    );
    assert_eq!(c, Code::Unimplemented);
    heartbeat(&mut client, &key, node).await;

    // A Flower Hub run is refused on this transport, before anything is fetched, as in Flower.
    let (c, m) = code(
        pb::control_client::ControlClient::new(channel(&superlink.control))
            .start_run(pb::StartRunRequest {
                app_spec: "@acme/app==1.0.0".to_owned(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    assert_eq!(
        m,
        "The selected SuperLink transport type is not supported for connecting to Flower Hub."
    );
}
