//! Helpers the SuperLink's black-box tests share: plaintext channels, signed Fleet requests,
//! FABs.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use flwr_proto::proto as pb;
use flwr_transport::node_auth::{self, NodeSigningKey};
use tonic::transport::Channel;
use tonic::{Code, Request};

pub fn channel(addr: &str) -> Channel {
    flwr_transport::grpc::channel(&addr.parse().unwrap(), None)
}

/// A FAB holding `pyproject`.
pub fn fab(pyproject: &str) -> Bytes {
    Bytes::from(flwr_testkit::fab::zip(pyproject))
}

pub use flwr_testkit::fab::PYPROJECT;

/// Signs a Fleet request as `key`, at `timestamp` (now when `None`).
pub fn signed<T>(key: &NodeSigningKey, body: T, timestamp: Option<String>) -> Request<T> {
    let mut r = Request::new(body);
    let ts = timestamp.unwrap_or_else(node_auth::timestamp_now);
    let md = r.metadata_mut();
    md.insert_bin(
        node_auth::PUBLIC_KEY_HEADER,
        tonic::metadata::MetadataValue::from_bytes(key.public_key_pem()),
    );
    md.insert(node_auth::TIMESTAMP_HEADER, ts.parse().unwrap());
    md.insert_bin(
        node_auth::SIGNATURE_HEADER,
        tonic::metadata::MetadataValue::from_bytes(&key.sign(ts.as_bytes())),
    );
    r
}

pub fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

/// Now, in Unix seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A Fleet client with the daemons' message size limits.
pub fn fleet_client(addr: &str) -> pb::fleet_client::FleetClient<Channel> {
    flwr_transport::limits!(pb::fleet_client::FleetClient::new(channel(addr)))
}

/// Registers and activates a node for `key` through the Fleet API; returns its id.
pub async fn join(fleet: &str, key: &NodeSigningKey) -> u64 {
    let mut client = fleet_client(fleet);
    let public_key = Bytes::copy_from_slice(key.public_key_pem());
    client
        .register_node(signed(
            key,
            pb::RegisterNodeFleetRequest {
                public_key: public_key.clone(),
            },
            None,
        ))
        .await
        .unwrap();
    client
        .activate_node(signed(
            key,
            pb::ActivateNodeRequest {
                public_key,
                heartbeat_interval: 30.0,
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .node_id
}

/// A `StartRun` of the test FAB ([`PYPROJECT`]).
pub fn start_run_request() -> pb::StartRunRequest {
    pb::StartRunRequest {
        fab: Some(pb::Fab {
            content: fab(PYPROJECT),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A run started through Control with `request` and made running through the ServerApp's token
/// flow; returns its id, the token and the inputs the ServerApp pulled.
pub async fn start_and_pull(
    control: &str,
    serverappio: &str,
    request: pb::StartRunRequest,
) -> (u64, String, pb::PullAppInputsResponse) {
    let mut control = pb::control_client::ControlClient::new(channel(control));
    let mut appio = pb::server_app_io_client::ServerAppIoClient::new(channel(serverappio));
    let run_id = control
        .start_run(request)
        .await
        .unwrap()
        .into_inner()
        .run_id
        .unwrap();
    let token = appio
        .request_token(pb::RequestTokenRequest { run_id })
        .await
        .unwrap()
        .into_inner()
        .token;
    let inputs = appio
        .pull_app_inputs(pb::PullAppInputsRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    (run_id, token, inputs)
}

/// A run of the test FAB started through Control and made running through the ServerApp's
/// token flow; returns its id and the token.
pub async fn running_run(control: &str, serverappio: &str) -> (u64, String) {
    let (run_id, token, _) = start_and_pull(control, serverappio, start_run_request()).await;
    (run_id, token)
}

/// A message with empty content and `meta`.
pub fn message(meta: pb::Metadata) -> pb::Message {
    pb::Message {
        metadata: Some(meta),
        content: Some(pb::RecordDict::default()),
        error: None,
    }
}

/// A tree of one object.
pub fn leaf(id: flwr_objects::ObjectId) -> pb::ObjectTree {
    pb::ObjectTree {
        object_id: id.to_hex(),
        children: vec![],
    }
}

/// The ServerApp of `run_id` sends `node` one instruction (message and object, ttl 600 s);
/// returns its id.
pub async fn push_instruction(
    serverappio: &str,
    token: &str,
    run_id: u64,
    node: u64,
) -> flwr_objects::ObjectId {
    use flwr_objects::content::{serialize, ObjectType};
    let mut appio = pb::server_app_io_client::ServerAppIoClient::new(channel(serverappio));
    let content = serialize(ObjectType::Message, &[], b"instruction");
    let id = flwr_objects::ObjectId::of(&content);
    appio
        .push_messages(pb::PushAppMessagesRequest {
            token: token.to_owned(),
            run_id,
            messages_list: vec![message(pb::Metadata {
                run_id,
                message_id: id.to_hex(),
                src_node_id: 1,
                dst_node_id: node,
                group_id: "1".into(),
                ttl: 600.0,
                message_type: "train".into(),
                created_at: now(),
                ..Default::default()
            })],
            message_object_trees: vec![leaf(id)],
        })
        .await
        .unwrap();
    appio
        .push_object(pb::PushObjectRequest {
            node: Some(pb::Node { node_id: 1 }),
            run_id,
            object_id: id.to_hex(),
            object_content: Bytes::from(content),
        })
        .await
        .unwrap();
    id
}

/// `node` replies to instruction `ins`: the reply message (which must be accepted), then, after
/// `object_delay`, its object. Returns the reply's id.
pub async fn push_reply(
    fleet: &str,
    key: &NodeSigningKey,
    node: u64,
    run_id: u64,
    ins: flwr_objects::ObjectId,
    object_delay: std::time::Duration,
) -> flwr_objects::ObjectId {
    use flwr_objects::content::{serialize, ObjectType};
    let mut fleet = fleet_client(fleet);
    let content = serialize(ObjectType::Message, &[], b"reply");
    let id = flwr_objects::ObjectId::of(&content);
    let pushed = fleet
        .push_messages(signed(
            key,
            pb::PushMessagesRequest {
                node: Some(pb::Node { node_id: node }),
                messages_list: vec![message(pb::Metadata {
                    run_id,
                    message_id: id.to_hex(),
                    src_node_id: node,
                    dst_node_id: 1,
                    reply_to_message_id: ins.to_hex(),
                    group_id: "1".into(),
                    ttl: 500.0,
                    message_type: "train".into(),
                    created_at: now(),
                })],
                message_object_trees: vec![leaf(id)],
                clientapp_runtime_list: vec![0.1],
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pushed.results.get(&id.to_hex()), Some(&0));
    tokio::time::sleep(object_delay).await;
    fleet
        .push_object(signed(
            key,
            pb::PushObjectRequest {
                node: Some(pb::Node { node_id: node }),
                run_id,
                object_id: id.to_hex(),
                object_content: Bytes::from(content),
            },
            None,
        ))
        .await
        .unwrap();
    id
}
