//! Bad input on every API gets the status Flower gives (or a stricter one Flower's clients treat
//! the same), never a panic, and leaves the state intact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use bytes::Bytes;
use flwr_objects::content::{serialize, ObjectType};
use flwr_objects::ObjectId;
use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_transport::node_auth::{self, NodeSigningKey};
use tonic::Code;

mod common;
use common::{channel, code, fab, now, signed, PYPROJECT};

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

#[tokio::test(flavor = "multi_thread")]
async fn every_api_refuses_bad_input_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let mut control = pb::control_client::ControlClient::new(channel(&superlink.control));
    let mut appio =
        pb::server_app_io_client::ServerAppIoClient::new(channel(&superlink.serverappio));
    let mut fleet = pb::fleet_client::FleetClient::new(channel(&superlink.fleet));

    // ---------------- Control
    let (c, m) = code(
        control
            .start_run(pb::StartRunRequest {
                fab: Some(pb::Fab {
                    content: Bytes::from_static(b"not a zip"),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (
            Code::Unknown,
            "Exception calling application: File is not a zip file"
        )
    );
    let big = pb::Fab {
        content: Bytes::from(vec![0u8; 10 * 1024 * 1024 + 1]),
        ..Default::default()
    };
    let r = control
        .start_run(pb::StartRunRequest {
            fab: Some(big),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.run_id, None,
        "an oversized FAB gets an answer without run id"
    );
    let mut overrides = std::collections::HashMap::new();
    overrides.insert(
        "nope".to_owned(),
        pb::Scalar {
            scalar: Some(pb::scalar::Scalar::Sint64(1)),
        },
    );
    let (c, m) = code(
        control
            .start_run(pb::StartRunRequest {
                fab: Some(pb::Fab {
                    content: fab(PYPROJECT),
                    ..Default::default()
                }),
                override_config: overrides,
                ..Default::default()
            })
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (
            Code::FailedPrecondition,
            "Key 'nope' is not present in the main dictionary"
        )
    );
    let (c, _) = code(
        control
            .start_run(pb::StartRunRequest {
                fab: Some(pb::Fab {
                    content: fab(PYPROJECT),
                    ..Default::default()
                }),
                federation: "@x/y".into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let (c, m) = code(
        control
            .start_run(pb::StartRunRequest {
                fab: Some(pb::Fab {
                    content: fab("[project]\nname='x'\n"),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    let (c, m) = code(
        control
            .list_runs(pb::ListRunsRequest {
                run_id: Some(123),
                limit: None,
            })
            .await,
    );
    assert_eq!((c, m.as_str()), (Code::NotFound, "Run ID not found"));
    let (c, _) = code(control.stop_run(pb::StopRunRequest { run_id: 123 }).await);
    assert_eq!(c, Code::NotFound);
    let (c, _) = code(
        control
            .stream_logs(pb::StreamLogsRequest {
                run_id: 123,
                after_timestamp: 0.0,
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let (c, m) = code(
        control
            .register_node(pb::RegisterNodeRequest {
                public_key: Bytes::from_static(b"garbage"),
            })
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (
            Code::FailedPrecondition,
            "The provided public key is not valid"
        )
    );
    let (c, m) = code(
        control
            .unregister_node(pb::UnregisterNodeRequest { node_id: 5 })
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (Code::NotFound, "Node ID not found for account")
    );
    let (c, _) = code(
        control
            .pull_artifacts(pb::PullArtifactsRequest { run_id: 1 })
            .await,
    );
    assert_eq!(c, Code::Unimplemented);
    let (c, _) = code(
        control
            .create_federation(pb::CreateFederationRequest::default())
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    let (c, _) = code(
        control
            .add_node_to_federation(pb::AddNodeToFederationRequest {
                federation_name: "@none/default".into(),
                node_id: 5,
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    assert_eq!(
        control
            .get_login_details(pb::GetLoginDetailsRequest {})
            .await
            .unwrap()
            .into_inner()
            .authn_type,
        "noop"
    );

    // ---------------- ServerAppIo
    let (c, m) = code(
        appio
            .pull_app_inputs(pb::PullAppInputsRequest {
                token: "bad".into(),
            })
            .await,
    );
    assert_eq!((c, m.as_str()), (Code::PermissionDenied, "Invalid token."));
    assert_eq!(
        appio
            .request_token(pb::RequestTokenRequest { run_id: 123 })
            .await
            .unwrap()
            .into_inner()
            .token,
        ""
    );
    assert!(appio
        .get_run(pb::GetRunRequest {
            node: None,
            run_id: 123
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .is_none());
    assert!(
        !appio
            .send_app_heartbeat(pb::SendAppHeartbeatRequest {
                token: "bad".into()
            })
            .await
            .unwrap()
            .into_inner()
            .success
    );
    let (c, m) = code(
        appio
            .push_logs(pb::PushLogsRequest {
                node: None,
                run_id: 123,
                logs: vec!["x".into()],
            })
            .await,
    );
    assert_eq!(c, Code::Unknown, "{m}");
    let (c, m) = code(appio.get_nodes(pb::GetNodesRequest { run_id: 123 }).await);
    assert_eq!(
        (c, m.as_str()),
        (Code::Unknown, "Exception calling application: 123")
    );

    // A real run, made running through the token flow, for the gated RPCs.
    let run_id = control
        .start_run(pb::StartRunRequest {
            fab: Some(pb::Fab {
                content: fab(PYPROJECT),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id
        .unwrap();
    let (c, m) = code(appio.get_nodes(pb::GetNodesRequest { run_id }).await);
    assert_eq!((c, m.as_str()), (Code::PermissionDenied, "Run is pending."));
    assert_eq!(
        appio
            .list_apps_to_launch(pb::ListAppsToLaunchRequest {})
            .await
            .unwrap()
            .into_inner()
            .run_ids,
        vec![run_id]
    );
    let token = appio
        .request_token(pb::RequestTokenRequest { run_id })
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(token.len(), 256);
    assert_eq!(
        appio
            .request_token(pb::RequestTokenRequest { run_id })
            .await
            .unwrap()
            .into_inner()
            .token,
        "",
        "one token per run"
    );
    let inputs = appio
        .pull_app_inputs(pb::PullAppInputsRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        inputs.run.unwrap().status.unwrap().status,
        "starting",
        "the run as it was"
    );
    assert!(inputs.federation_config.is_none());
    let (c, m) = code(
        appio
            .pull_app_inputs(pb::PullAppInputsRequest {
                token: token.clone(),
            })
            .await,
    );
    assert_eq!(
        (c, m),
        (
            Code::FailedPrecondition,
            format!("Failed to start run {run_id}")
        )
    );

    let (c, m) = code(
        appio
            .push_messages(pb::PushAppMessagesRequest {
                token: token.clone(),
                run_id,
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::Unknown, "{m}");
    let msg = pb::Message {
        metadata: Some(pb::Metadata {
            run_id,
            message_id: "a".repeat(64),
            src_node_id: 1,
            dst_node_id: 7,
            ttl: 600.0,
            message_type: "train".into(),
            created_at: now(),
            ..Default::default()
        }),
        content: Some(pb::RecordDict::default()),
        error: None,
    };
    let bad_tree = pb::ObjectTree {
        object_id: "zz".into(),
        children: vec![],
    };
    let (c, m) = code(
        appio
            .push_messages(pb::PushAppMessagesRequest {
                token: token.clone(),
                run_id,
                messages_list: vec![msg.clone()],
                message_object_trees: vec![bad_tree],
            })
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (
            Code::Unknown,
            "Exception calling application: Invalid object ID format: zz"
        )
    );
    let mut bad_type = msg.clone();
    bad_type.metadata.as_mut().unwrap().message_type = "fit".into();
    let tree = pb::ObjectTree {
        object_id: "a".repeat(64),
        children: vec![],
    };
    let (c, m) = code(
        appio
            .push_messages(pb::PushAppMessagesRequest {
                token: token.clone(),
                run_id,
                messages_list: vec![bad_type],
                message_object_trees: vec![tree.clone()],
            })
            .await,
    );
    assert!(
        c == Code::Unknown && m.contains("Invalid message type"),
        "{m}"
    );
    // An unknown destination node: accepted as a call, the message gets no id.
    let r = appio
        .push_messages(pb::PushAppMessagesRequest {
            token: token.clone(),
            run_id,
            messages_list: vec![msg.clone()],
            message_object_trees: vec![tree],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.message_ids, vec![String::new()]);

    let node1 = Some(pb::Node { node_id: 1 });
    let body = serialize(ObjectType::ArrayChunk, &[], b"abc");
    let id = ObjectId::of(&body).to_hex();
    let pushed = appio
        .push_object(pb::PushObjectRequest {
            node: node1,
            run_id,
            object_id: "b".repeat(64),
            object_content: Bytes::from(body.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!pushed.stored, "wrong hash");
    let pushed = appio
        .push_object(pb::PushObjectRequest {
            node: node1,
            run_id,
            object_id: id.clone(),
            object_content: Bytes::from(body),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!pushed.stored, "not pre-registered");
    let malformed = b"Array  99\0x".to_vec();
    let (c, m) = code(
        appio
            .push_object(pb::PushObjectRequest {
                node: node1,
                run_id,
                object_id: ObjectId::of(&malformed).to_hex(),
                object_content: Bytes::from(malformed),
            })
            .await,
    );
    assert!(
        c == Code::FailedPrecondition && m.contains("unexpected structure"),
        "{m}"
    );
    let (c, m) = code(
        appio
            .push_object(pb::PushObjectRequest {
                node: Some(pb::Node { node_id: 2 }),
                run_id,
                object_id: id.clone(),
                object_content: Bytes::new(),
            })
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (Code::FailedPrecondition, "Unexpected node ID.")
    );
    let pulled = appio
        .pull_object(pb::PullObjectRequest {
            node: node1,
            run_id,
            object_id: "zz".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!pulled.object_found && !pulled.object_available);
    let (c, _) = code(
        appio
            .pull_object(pb::PullObjectRequest {
                node: node1,
                run_id: 999,
                object_id: id,
            })
            .await,
    );
    assert_eq!(c, Code::Unknown);

    // ---------------- Fleet
    let key = NodeSigningKey::generate();
    let (c, m) = code(
        fleet
            .register_node(pb::RegisterNodeFleetRequest {
                public_key: Bytes::copy_from_slice(key.public_key_pem()),
            })
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (Code::Unauthenticated, "Missing authentication metadata")
    );
    let stale = node_auth::format_timestamp(chrono::Utc::now() - chrono::Duration::seconds(400));
    let (c, m) = code(
        fleet
            .register_node(signed(
                &key,
                pb::RegisterNodeFleetRequest {
                    public_key: Bytes::copy_from_slice(key.public_key_pem()),
                },
                Some(stale),
            ))
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (Code::Unauthenticated, "Invalid timestamp")
    );
    let mut forged = signed(&key, pb::RegisterNodeFleetRequest::default(), None);
    forged.metadata_mut().insert_bin(
        node_auth::SIGNATURE_HEADER,
        tonic::metadata::MetadataValue::from_bytes(&NodeSigningKey::generate().sign(b"x")),
    );
    let (c, m) = code(fleet.register_node(forged).await);
    assert_eq!(
        (c, m.as_str()),
        (Code::Unauthenticated, "Invalid signature")
    );
    let mut garbage = signed(&key, pb::RegisterNodeFleetRequest::default(), None);
    garbage.metadata_mut().insert_bin(
        node_auth::PUBLIC_KEY_HEADER,
        tonic::metadata::MetadataValue::from_bytes(b"not a key"),
    );
    let (c, _) = code(fleet.register_node(garbage).await);
    assert_eq!(c, Code::Unauthenticated);

    let pem = Bytes::copy_from_slice(key.public_key_pem());
    let node_id = fleet
        .register_node(signed(
            &key,
            pb::RegisterNodeFleetRequest {
                public_key: pem.clone(),
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .node_id;
    let (c, m) = code(
        fleet
            .register_node(signed(
                &key,
                pb::RegisterNodeFleetRequest {
                    public_key: pem.clone(),
                },
                None,
            ))
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (Code::FailedPrecondition, "Public key already in use")
    );
    let (c, m) = code(
        fleet
            .activate_node(signed(
                &key,
                pb::ActivateNodeRequest {
                    public_key: pem.clone(),
                    heartbeat_interval: 5.0,
                },
                None,
            ))
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (Code::InvalidArgument, "Invalid heartbeat interval")
    );
    assert_eq!(
        fleet
            .activate_node(signed(
                &key,
                pb::ActivateNodeRequest {
                    public_key: pem.clone(),
                    heartbeat_interval: 30.0
                },
                None
            ))
            .await
            .unwrap()
            .into_inner()
            .node_id,
        node_id
    );
    let (c, m) = code(
        fleet
            .send_node_heartbeat(signed(
                &key,
                pb::SendNodeHeartbeatRequest {
                    node: Some(pb::Node {
                        node_id: node_id ^ 1,
                    }),
                    heartbeat_interval: 30.0,
                },
                None,
            ))
            .await,
    );
    assert_eq!((c, m.as_str()), (Code::Unauthenticated, "Invalid node ID"));
    let (c, _) = code(
        fleet
            .pull_messages(signed(&key, pb::PullMessagesRequest::default(), None))
            .await,
    );
    assert_eq!(
        c,
        Code::Unauthenticated,
        "a request without node counts as node 0"
    );
    let me = Some(pb::Node { node_id });
    let pulled = fleet
        .pull_messages(signed(
            &key,
            pb::PullMessagesRequest {
                node: me,
                message_ids: vec![],
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(pulled.messages_list.is_empty());
    let (c, _) = code(
        fleet
            .push_messages(signed(
                &key,
                pb::PushMessagesRequest {
                    node: me,
                    ..Default::default()
                },
                None,
            ))
            .await,
    );
    assert_eq!(c, Code::Unknown);
    let (c, m) = code(
        fleet
            .get_run(signed(
                &key,
                pb::GetRunRequest {
                    node: me,
                    run_id: 123,
                },
                None,
            ))
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (Code::PermissionDenied, "Run ID not found: 123")
    );
    let (c, m) = code(
        fleet
            .get_fab(signed(
                &key,
                pb::GetFabRequest {
                    node: me,
                    hash_str: "x".into(),
                    run_id,
                },
                None,
            ))
            .await,
    );
    assert_eq!(
        (c, m.as_str()),
        (Code::PermissionDenied, "Found no FAB with hash: x")
    );
    let (c, _) = code(
        fleet
            .push_object(signed(
                &key,
                pb::PushObjectRequest {
                    node: me,
                    run_id: 123,
                    object_id: "a".repeat(64),
                    object_content: Bytes::new(),
                },
                None,
            ))
            .await,
    );
    assert_eq!(c, Code::Unknown);

    // ---------------- The state is intact: the run, the node, and the token still work.
    assert!(
        appio
            .send_app_heartbeat(pb::SendAppHeartbeatRequest { token })
            .await
            .unwrap()
            .into_inner()
            .success
    );
    let nodes = appio
        .get_nodes(pb::GetNodesRequest { run_id })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes, vec![pb::Node { node_id }]);
    let runs = control
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(runs.run_dict.len(), 1);
    assert_eq!(
        runs.run_dict[&run_id].status.as_ref().unwrap().status,
        "running"
    );
    let listed = control
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.nodes_info.len(), 1);
    assert!(superlink
        .proc
        .output()
        .lines()
        .all(|l| !l.contains("panicked")));
}
