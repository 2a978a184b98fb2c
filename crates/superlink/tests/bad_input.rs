//! Bad input on every API gets the status Flower gives (or a stricter one Flower's clients treat
//! the same), never a panic, and leaves the state intact.
//!
//! The refusals are tables of cases, one per stage of a run's life (nothing yet, a pending run,
//! a running run with its token, a registered node); every case runs and every mismatch is
//! reported, so that one wrong answer does not hide the others. Calls that are answered without
//! an error (Flower's "nothing" answers) are checked in between, where they change the state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use flwr_objects::content::{serialize, ObjectType};
use flwr_objects::ObjectId;
use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_transport::node_auth::{self, NodeSigningKey};
use tonic::{Code, Status};

mod common;
use common::{channel, fab, now, signed, PYPROJECT};

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// What the message of a refusal must be.
enum Says {
    /// Exactly this (Flower's text, which its clients may show or match).
    Exactly(String),
    /// This, somewhere in it.
    Contains(&'static str),
    /// Anything (only the code is Flower's contract there).
    Anything,
}

/// One bad request and the refusal Flower answers it with.
struct Case {
    what: &'static str,
    call: Call,
    code: Code,
    says: Says,
}

fn exactly(message: impl Into<String>) -> Says {
    Says::Exactly(message.into())
}

fn case(what: &'static str, call: Call, code: Code, says: Says) -> Case {
    Case {
        what,
        call,
        code,
        says,
    }
}

/// A call of `method` with `request` on a clone of `client`, its answer dropped.
macro_rules! call {
    ($client:expr, $method:ident, $request:expr) => {{
        let mut client = $client.clone();
        let request = $request;
        Box::pin(async move { client.$method(request).await.map(|_| ()) }) as Call
    }};
}

/// Runs every case in order; returns one line per case whose answer was not its refusal.
async fn mismatches(stage: &str, cases: Vec<Case>) -> Vec<String> {
    let mut out = Vec::new();
    for c in cases {
        let problem = match c.call.await {
            Ok(()) => Some(format!("answered OK, not {:?}", c.code)),
            Err(s) if s.code() != c.code => Some(format!(
                "{:?} ({:?}), not {:?}",
                s.code(),
                s.message(),
                c.code
            )),
            Err(s) => match c.says {
                Says::Exactly(m) if s.message() != m.as_str() => {
                    Some(format!("says {:?}, not {m:?}", s.message()))
                }
                Says::Contains(m) if !s.message().contains(m) => {
                    Some(format!("says {:?}, without {m:?}", s.message()))
                }
                _ => None,
            },
        };
        if let Some(p) = problem {
            out.push(format!("{stage}: {}: {p}", c.what));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_api_refuses_bad_input_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let control = pb::control_client::ControlClient::new(channel(&superlink.control));
    let appio = pb::server_app_io_client::ServerAppIoClient::new(channel(&superlink.serverappio));
    let fleet = pb::fleet_client::FleetClient::new(channel(&superlink.fleet));
    let mut failed = Vec::new();
    let with_fab = |content: Bytes| pb::StartRunRequest {
        fab: Some(pb::Fab {
            content,
            ..Default::default()
        }),
        ..Default::default()
    };
    let key = NodeSigningKey::generate();
    let pem = Bytes::copy_from_slice(key.public_key_pem());
    // RegisterNode (Fleet) for `key`, signed at `timestamp` (now when `None`).
    let register = |timestamp: Option<String>| {
        signed(
            &key,
            pb::RegisterNodeFleetRequest {
                public_key: pem.clone(),
            },
            timestamp,
        )
    };

    // ---------------- Nothing there yet.
    let mut overrides = std::collections::HashMap::new();
    overrides.insert(
        "nope".to_owned(),
        pb::Scalar {
            scalar: Some(pb::scalar::Scalar::Sint64(1)),
        },
    );
    let stale = node_auth::format_timestamp(chrono::Utc::now() - chrono::Duration::seconds(400));
    let mut forged = signed(&key, pb::RegisterNodeFleetRequest::default(), None);
    forged.metadata_mut().insert_bin(
        node_auth::SIGNATURE_HEADER,
        tonic::metadata::MetadataValue::from_bytes(&NodeSigningKey::generate().sign(b"x")),
    );
    let mut garbage_key = signed(&key, pb::RegisterNodeFleetRequest::default(), None);
    garbage_key.metadata_mut().insert_bin(
        node_auth::PUBLIC_KEY_HEADER,
        tonic::metadata::MetadataValue::from_bytes(b"not a key"),
    );
    let cases = vec![
        case(
            "StartRun with a FAB that is not a zip",
            call!(
                control,
                start_run,
                with_fab(Bytes::from_static(b"not a zip"))
            ),
            Code::Unknown,
            exactly("Exception calling application: File is not a zip file"),
        ),
        case(
            "StartRun overriding a key the app does not have",
            call!(
                control,
                start_run,
                pb::StartRunRequest {
                    override_config: overrides,
                    ..with_fab(fab(PYPROJECT))
                }
            ),
            Code::FailedPrecondition,
            exactly("Key 'nope' is not present in the main dictionary"),
        ),
        case(
            "StartRun in an unknown federation",
            call!(
                control,
                start_run,
                pb::StartRunRequest {
                    federation: "@x/y".into(),
                    ..with_fab(fab(PYPROJECT))
                }
            ),
            Code::NotFound,
            Says::Anything,
        ),
        case(
            "StartRun with a pyproject.toml without [tool.flwr]",
            call!(control, start_run, with_fab(fab("[project]\nname='x'\n"))),
            Code::FailedPrecondition,
            Says::Anything,
        ),
        case(
            "ListRuns of an unknown run",
            call!(
                control,
                list_runs,
                pb::ListRunsRequest {
                    run_id: Some(123),
                    limit: None,
                }
            ),
            Code::NotFound,
            exactly("Run ID not found"),
        ),
        case(
            "StopRun of an unknown run",
            call!(control, stop_run, pb::StopRunRequest { run_id: 123 }),
            Code::NotFound,
            Says::Anything,
        ),
        case(
            "StreamLogs of an unknown run",
            call!(
                control,
                stream_logs,
                pb::StreamLogsRequest {
                    run_id: 123,
                    after_timestamp: 0.0,
                }
            ),
            Code::NotFound,
            Says::Anything,
        ),
        case(
            "RegisterNode (CLI) with a key that is not one",
            call!(
                control,
                register_node,
                pb::RegisterNodeRequest {
                    public_key: Bytes::from_static(b"garbage"),
                }
            ),
            Code::FailedPrecondition,
            exactly("The provided public key is not valid"),
        ),
        case(
            "UnregisterNode (CLI) of an unknown node",
            call!(
                control,
                unregister_node,
                pb::UnregisterNodeRequest { node_id: 5 }
            ),
            Code::NotFound,
            exactly("Node ID not found for account"),
        ),
        case(
            "PullArtifacts",
            call!(
                control,
                pull_artifacts,
                pb::PullArtifactsRequest { run_id: 1 }
            ),
            Code::Unimplemented,
            Says::Anything,
        ),
        case(
            "CreateFederation",
            call!(
                control,
                create_federation,
                pb::CreateFederationRequest::default()
            ),
            Code::FailedPrecondition,
            Says::Anything,
        ),
        case(
            "AddNodeToFederation",
            call!(
                control,
                add_node_to_federation,
                pb::AddNodeToFederationRequest {
                    federation_name: "@none/default".into(),
                    node_id: 5,
                }
            ),
            Code::FailedPrecondition,
            Says::Anything,
        ),
        case(
            "PullAppInputs with a bad token",
            call!(
                appio,
                pull_app_inputs,
                pb::PullAppInputsRequest {
                    token: "bad".into(),
                }
            ),
            Code::PermissionDenied,
            exactly("Invalid token."),
        ),
        case(
            "PushLogs of an unknown run",
            call!(
                appio,
                push_logs,
                pb::PushLogsRequest {
                    node: None,
                    run_id: 123,
                    logs: vec!["x".into()],
                }
            ),
            Code::Unknown,
            Says::Anything,
        ),
        case(
            "GetNodes of an unknown run",
            call!(appio, get_nodes, pb::GetNodesRequest { run_id: 123 }),
            Code::Unknown,
            exactly("Exception calling application: 123"),
        ),
        case(
            "RegisterNode (Fleet) without signature metadata",
            call!(
                fleet,
                register_node,
                pb::RegisterNodeFleetRequest {
                    public_key: pem.clone(),
                }
            ),
            Code::Unauthenticated,
            exactly("Missing authentication metadata"),
        ),
        case(
            "RegisterNode (Fleet) signed 400 s ago",
            call!(fleet, register_node, register(Some(stale))),
            Code::Unauthenticated,
            exactly("Invalid timestamp"),
        ),
        case(
            "RegisterNode (Fleet) signed by another key",
            call!(fleet, register_node, forged),
            Code::Unauthenticated,
            exactly("Invalid signature"),
        ),
        case(
            "RegisterNode (Fleet) with a public key that is not one",
            call!(fleet, register_node, garbage_key),
            Code::Unauthenticated,
            Says::Anything,
        ),
    ];
    failed.extend(mismatches("nothing yet", cases).await);
    // Answered, with nothing in them.
    let r = control
        .clone()
        .start_run(with_fab(Bytes::from(vec![0u8; 10 * 1024 * 1024 + 1])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.run_id, None,
        "an oversized FAB gets an answer without run id"
    );
    let login = control
        .clone()
        .get_login_details(pb::GetLoginDetailsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(login.authn_type, "noop");
    let mut appio_client = appio.clone();
    let token = appio_client
        .request_token(pb::RequestTokenRequest { run_id: 123 })
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(token, "", "no token for an unknown run");
    let run = appio_client
        .get_run(pb::GetRunRequest {
            node: None,
            run_id: 123,
        })
        .await
        .unwrap()
        .into_inner()
        .run;
    assert!(run.is_none());
    let beat = appio_client
        .send_app_heartbeat(pb::SendAppHeartbeatRequest {
            token: "bad".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!beat.success);

    // ---------------- A pending run.
    let run_id = control
        .clone()
        .start_run(with_fab(fab(PYPROJECT)))
        .await
        .unwrap()
        .into_inner()
        .run_id
        .unwrap();
    let cases = vec![case(
        "GetNodes of a pending run",
        call!(appio, get_nodes, pb::GetNodesRequest { run_id }),
        Code::PermissionDenied,
        exactly("Run is pending."),
    )];
    failed.extend(mismatches("pending run", cases).await);
    let launch = appio_client
        .list_apps_to_launch(pb::ListAppsToLaunchRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(launch.run_ids, vec![run_id]);
    let token = appio_client
        .request_token(pb::RequestTokenRequest { run_id })
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(token.len(), 256);
    let again = appio_client
        .request_token(pb::RequestTokenRequest { run_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.token, "", "one token per run");
    let inputs = appio_client
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

    // ---------------- The run is running; its ServerApp pushes bad messages and objects.
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
    let tree = pb::ObjectTree {
        object_id: "a".repeat(64),
        children: vec![],
    };
    let mut bad_type = msg.clone();
    bad_type.metadata.as_mut().unwrap().message_type = "fit".into();
    let node1 = Some(pb::Node { node_id: 1 });
    let body = serialize(ObjectType::ArrayChunk, &[], b"abc");
    let id = ObjectId::of(&body).to_hex();
    let malformed = b"Array  99\0x".to_vec();
    let cases = vec![
        case(
            "PullAppInputs a second time",
            call!(
                appio,
                pull_app_inputs,
                pb::PullAppInputsRequest {
                    token: token.clone(),
                }
            ),
            Code::FailedPrecondition,
            exactly(format!("Failed to start run {run_id}")),
        ),
        case(
            "PushMessages with no message",
            call!(
                appio,
                push_messages,
                pb::PushAppMessagesRequest {
                    token: token.clone(),
                    run_id,
                    ..Default::default()
                }
            ),
            Code::Unknown,
            Says::Anything,
        ),
        case(
            "PushMessages with a malformed object id",
            call!(
                appio,
                push_messages,
                pb::PushAppMessagesRequest {
                    token: token.clone(),
                    run_id,
                    messages_list: vec![msg.clone()],
                    message_object_trees: vec![pb::ObjectTree {
                        object_id: "zz".into(),
                        children: vec![],
                    }],
                }
            ),
            Code::Unknown,
            exactly("Exception calling application: Invalid object ID format: zz"),
        ),
        case(
            "PushMessages of a message type Flower does not know",
            call!(
                appio,
                push_messages,
                pb::PushAppMessagesRequest {
                    token: token.clone(),
                    run_id,
                    messages_list: vec![bad_type],
                    message_object_trees: vec![tree.clone()],
                }
            ),
            Code::Unknown,
            Says::Contains("Invalid message type"),
        ),
        case(
            "PushObject of content that is no object",
            call!(
                appio,
                push_object,
                pb::PushObjectRequest {
                    node: node1,
                    run_id,
                    object_id: ObjectId::of(&malformed).to_hex(),
                    object_content: Bytes::from(malformed.clone()),
                }
            ),
            Code::FailedPrecondition,
            Says::Contains("unexpected structure"),
        ),
        case(
            "PushObject as another node than the SuperLink's",
            call!(
                appio,
                push_object,
                pb::PushObjectRequest {
                    node: Some(pb::Node { node_id: 2 }),
                    run_id,
                    object_id: id.clone(),
                    object_content: Bytes::new(),
                }
            ),
            Code::FailedPrecondition,
            exactly("Unexpected node ID."),
        ),
        case(
            "PullObject of an unknown run",
            call!(
                appio,
                pull_object,
                pb::PullObjectRequest {
                    node: node1,
                    run_id: 999,
                    object_id: id.clone(),
                }
            ),
            Code::Unknown,
            Says::Anything,
        ),
    ];
    failed.extend(mismatches("running run", cases).await);
    // An unknown destination node: accepted as a call, the message gets no id.
    let r = appio_client
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
    let pushed = appio_client
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
    let pushed = appio_client
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
    let pulled = appio_client
        .pull_object(pb::PullObjectRequest {
            node: node1,
            run_id,
            object_id: "zz".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!pulled.object_found && !pulled.object_available);

    // ---------------- A registered, online node sends bad requests.
    let node_id = fleet
        .clone()
        .register_node(register(None))
        .await
        .unwrap()
        .into_inner()
        .node_id;
    let activated = fleet
        .clone()
        .activate_node(signed(
            &key,
            pb::ActivateNodeRequest {
                public_key: pem.clone(),
                heartbeat_interval: 30.0,
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(activated.node_id, node_id);
    let me = Some(pb::Node { node_id });
    let cases = vec![
        case(
            "RegisterNode (Fleet) with a key in use",
            call!(fleet, register_node, register(None)),
            Code::FailedPrecondition,
            exactly("Public key already in use"),
        ),
        case(
            "ActivateNode with a heartbeat interval too short",
            call!(
                fleet,
                activate_node,
                signed(
                    &key,
                    pb::ActivateNodeRequest {
                        public_key: pem.clone(),
                        heartbeat_interval: 5.0,
                    },
                    None,
                )
            ),
            Code::InvalidArgument,
            exactly("Invalid heartbeat interval"),
        ),
        case(
            "SendNodeHeartbeat for another node",
            call!(
                fleet,
                send_node_heartbeat,
                signed(
                    &key,
                    pb::SendNodeHeartbeatRequest {
                        node: Some(pb::Node {
                            node_id: node_id ^ 1,
                        }),
                        heartbeat_interval: 30.0,
                    },
                    None,
                )
            ),
            Code::Unauthenticated,
            exactly("Invalid node ID"),
        ),
        case(
            "PullMessages without a node (counts as node 0)",
            call!(
                fleet,
                pull_messages,
                signed(&key, pb::PullMessagesRequest::default(), None)
            ),
            Code::Unauthenticated,
            Says::Anything,
        ),
        case(
            "PushMessages with no message",
            call!(
                fleet,
                push_messages,
                signed(
                    &key,
                    pb::PushMessagesRequest {
                        node: me,
                        ..Default::default()
                    },
                    None,
                )
            ),
            Code::Unknown,
            Says::Anything,
        ),
        case(
            "GetRun of an unknown run",
            call!(
                fleet,
                get_run,
                signed(
                    &key,
                    pb::GetRunRequest {
                        node: me,
                        run_id: 123,
                    },
                    None,
                )
            ),
            Code::PermissionDenied,
            exactly("Run ID not found: 123"),
        ),
        case(
            "GetFab of an unknown hash",
            call!(
                fleet,
                get_fab,
                signed(
                    &key,
                    pb::GetFabRequest {
                        node: me,
                        hash_str: "x".into(),
                        run_id,
                    },
                    None,
                )
            ),
            Code::PermissionDenied,
            exactly("Found no FAB with hash: x"),
        ),
        case(
            "PushObject into an unknown run",
            call!(
                fleet,
                push_object,
                signed(
                    &key,
                    pb::PushObjectRequest {
                        node: me,
                        run_id: 123,
                        object_id: "a".repeat(64),
                        object_content: Bytes::new(),
                    },
                    None,
                )
            ),
            Code::Unknown,
            Says::Anything,
        ),
    ];
    failed.extend(mismatches("registered node", cases).await);
    let pulled = fleet
        .clone()
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
    assert!(
        failed.is_empty(),
        "{} refusals differ from Flower's:\n{}",
        failed.len(),
        failed.join("\n")
    );

    // ---------------- The state is intact: the run, the node, and the token still work.
    assert!(
        appio_client
            .send_app_heartbeat(pb::SendAppHeartbeatRequest { token })
            .await
            .unwrap()
            .into_inner()
            .success
    );
    let nodes = appio_client
        .get_nodes(pb::GetNodesRequest { run_id })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes, vec![pb::Node { node_id }]);
    let mut control = control;
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
