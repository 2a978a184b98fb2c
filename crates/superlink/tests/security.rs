//! The security findings, each as a test against the real binary: what an unauthenticated or
//! hostile peer can make the SuperLink hold, what a node may touch, what callers are told.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use bytes::Bytes;
use common::{channel, fleet_client, join, now, running_run, signed};
use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_transport::node_auth::NodeSigningKey;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");
const MIB: u64 = 1024 * 1024;

/// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

fn push_object(bytes: usize) -> pb::PushObjectRequest {
    pb::PushObjectRequest {
        node: Some(pb::Node { node_id: 42 }),
        run_id: 1,
        object_id: "0".repeat(64),
        object_content: Bytes::from(vec![7u8; bytes]),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_bodies_are_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut superlink =
        SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let pid = superlink.proc.pid();
    // Settle: one small refused call, so that the connection machinery is warm.
    let mut fleet = fleet_client(&superlink.fleet);
    let refused = fleet.push_object(push_object(10)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let (idle, _) = memory(pid);

    // No signature at all: 400 MiB announced, refused from the headers.
    let body = 400 * MIB as usize;
    let status = fleet.push_object(push_object(body)).await.unwrap_err();
    let held = |what: &str| {
        let (_, peak) = memory(pid);
        assert!(
            peak < idle + 50 * MIB,
            "{what}: peak RSS {} MiB against {} MiB idle: an unauthenticated body was buffered",
            peak / MIB,
            idle / MIB
        );
    };
    held("no signature");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "Missing authentication metadata"),
        "{status:?}"
    );

    // Signed by a key no node has: refused before the body too, three at once.
    let stranger = NodeSigningKey::generate();
    let calls = (0..3).map(|_| {
        let mut fleet = fleet_client(&superlink.fleet);
        let request = signed(&stranger, push_object(body), None);
        tokio::spawn(async move { fleet.push_object(request).await })
    });
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, "Invalid node ID"),
            "{status:?}"
        );
    }

    held("signed by a key no node has, three at once");
    assert!(superlink.proc.try_status().is_none(), "still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_touches_only_its_own_instructions() {
    use flwr_objects::content::{serialize, ObjectType};
    use flwr_objects::ObjectId;

    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let (key_a, key_b) = (NodeSigningKey::generate(), NodeSigningKey::generate());
    let a = join(&superlink.fleet, &key_a).await;
    let b = join(&superlink.fleet, &key_b).await;
    let (run_id, token) = running_run(&superlink.control, &superlink.serverappio).await;

    // An instruction for A: a message object with one child.
    let chunk = serialize(ObjectType::ArrayChunk, &[], b"for A only");
    let chunk_id = ObjectId::of(&chunk);
    let message = serialize(ObjectType::Message, &[chunk_id], b"instruction");
    let message_id = ObjectId::of(&message);
    let mut appio =
        pb::server_app_io_client::ServerAppIoClient::new(channel(&superlink.serverappio));
    let pushed = appio
        .push_messages(pb::PushAppMessagesRequest {
            token,
            run_id,
            messages_list: vec![pb::Message {
                metadata: Some(pb::Metadata {
                    run_id,
                    message_id: message_id.to_hex(),
                    src_node_id: 1,
                    dst_node_id: a,
                    ttl: 600.0,
                    message_type: "train".into(),
                    created_at: now(),
                    ..Default::default()
                }),
                content: Some(pb::RecordDict::default()),
                error: None,
            }],
            message_object_trees: vec![pb::ObjectTree {
                object_id: message_id.to_hex(),
                children: vec![pb::ObjectTree {
                    object_id: chunk_id.to_hex(),
                    children: vec![],
                }],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pushed.message_ids, vec![message_id.to_hex()]);
    for (id, content) in [(chunk_id, chunk), (message_id, message)] {
        let stored = appio
            .push_object(pb::PushObjectRequest {
                node: Some(pb::Node { node_id: 1 }),
                run_id,
                object_id: id.to_hex(),
                object_content: Bytes::from(content),
            })
            .await
            .unwrap()
            .into_inner()
            .stored;
        assert!(stored);
    }

    let mut fleet = fleet_client(&superlink.fleet);
    let pull = |key: &NodeSigningKey, node_id: u64, id: ObjectId| {
        signed(
            key,
            pb::PullObjectRequest {
                node: Some(pb::Node { node_id }),
                run_id,
                object_id: id.to_hex(),
            },
            None,
        )
    };
    let confirm = |key: &NodeSigningKey, node_id: u64| {
        signed(
            key,
            pb::ConfirmMessageReceivedRequest {
                node: Some(pb::Node { node_id }),
                run_id,
                message_object_id: message_id.to_hex(),
            },
            None,
        )
    };
    let unknown = |r: pb::PullObjectResponse| !r.object_found && !r.object_available;

    // B sees nothing of A's instruction, before and after A takes it.
    let r = fleet.pull_object(pull(&key_b, b, chunk_id)).await.unwrap();
    assert!(unknown(r.into_inner()));
    let pulled = fleet
        .pull_messages(signed(
            &key_a,
            pb::PullMessagesRequest {
                node: Some(pb::Node { node_id: a }),
                message_ids: vec![],
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pulled.messages_list.len(), 1);
    for id in [chunk_id, message_id] {
        let r = fleet.pull_object(pull(&key_b, b, id)).await.unwrap();
        assert!(
            unknown(r.into_inner()),
            "B pulled an object of A's instruction"
        );
    }
    // B's confirm is answered as any confirm, and changes nothing.
    fleet
        .confirm_message_received(confirm(&key_b, b))
        .await
        .unwrap();
    for id in [chunk_id, message_id] {
        let r = fleet
            .pull_object(pull(&key_a, a, id))
            .await
            .unwrap()
            .into_inner();
        assert!(r.object_available, "A's objects survive B's confirm");
    }
    // A's own confirm deletes them.
    fleet
        .confirm_message_received(confirm(&key_a, a))
        .await
        .unwrap();
    let r = fleet.pull_object(pull(&key_a, a, chunk_id)).await.unwrap();
    assert!(unknown(r.into_inner()));
}

/// What each engine answers to instructions whose numbers no engine can store.
async fn answers_to_impossible_numbers(engine: &[&str]) -> Vec<(Code, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = vec!["--isolation", "process"];
    flags.extend_from_slice(engine);
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &flags);
    let key = NodeSigningKey::generate();
    let node = join(&superlink.fleet, &key).await;
    let (run_id, token) = running_run(&superlink.control, &superlink.serverappio).await;
    let mut appio =
        pb::server_app_io_client::ServerAppIoClient::new(channel(&superlink.serverappio));
    let mut answers = Vec::new();
    for (ttl, created_at) in [
        (f64::NAN, now()),
        (f64::INFINITY, now()),
        (600.0, f64::NAN),
        (600.0, f64::NEG_INFINITY),
    ] {
        let status = appio
            .push_messages(pb::PushAppMessagesRequest {
                token: token.clone(),
                run_id,
                messages_list: vec![pb::Message {
                    metadata: Some(pb::Metadata {
                        run_id,
                        message_id: "a".repeat(64),
                        src_node_id: 1,
                        dst_node_id: node,
                        ttl,
                        message_type: "train".into(),
                        created_at,
                        ..Default::default()
                    }),
                    content: Some(pb::RecordDict::default()),
                    error: None,
                }],
                message_object_trees: vec![pb::ObjectTree {
                    object_id: "a".repeat(64),
                    children: vec![],
                }],
            })
            .await
            .unwrap_err();
        let dir_text = dir.path().display().to_string();
        assert!(
            !status.message().contains(&dir_text),
            "a server path reached the caller: {status:?}"
        );
        answers.push((status.code(), status.message().to_owned()));
    }
    // A reply reporting an impossible ClientApp runtime is no server error either.
    let mut fleet = fleet_client(&superlink.fleet);
    let r = fleet
        .push_messages(signed(
            &key,
            pb::PushMessagesRequest {
                node: Some(pb::Node { node_id: node }),
                messages_list: vec![pb::Message {
                    metadata: Some(pb::Metadata {
                        run_id,
                        message_id: "b".repeat(64),
                        src_node_id: node,
                        dst_node_id: 1,
                        reply_to_message_id: "c".repeat(64),
                        ttl: f64::NAN,
                        message_type: "train".into(),
                        created_at: now(),
                        ..Default::default()
                    }),
                    content: Some(pb::RecordDict::default()),
                    error: None,
                }],
                message_object_trees: vec![pb::ObjectTree {
                    object_id: "b".repeat(64),
                    children: vec![],
                }],
                clientapp_runtime_list: vec![f64::NAN],
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.results.keys().collect::<Vec<_>>(),
        vec!["None"],
        "refused, not stored"
    );
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn impossible_numbers_are_refused_alike_by_every_engine() {
    let memory = answers_to_impossible_numbers(&[]).await;
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("state.db");
    let sqlite = answers_to_impossible_numbers(&["--database", path.to_str().unwrap()]).await;
    assert_eq!(memory, sqlite);
    for (code, message) in &memory {
        assert_eq!(*code, Code::Unknown, "{message}");
        assert!(
            message.contains("metadata.ttl") || message.contains("metadata.created_at"),
            "{message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fab_with_an_oversized_pyproject_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let mut control = pb::control_client::ControlClient::new(channel(&superlink.control));
    // A real pyproject followed by 2 MiB of comment: Flower read the first MiB and went on.
    let pyproject = format!("{}#{}\n", common::PYPROJECT, "x".repeat(2 * MIB as usize));
    let status = control
        .start_run(pb::StartRunRequest {
            fab: Some(pb::Fab {
                content: common::fab(&pyproject),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("pyproject.toml") && status.message().contains("larger than"),
        "{status:?}"
    );
}
