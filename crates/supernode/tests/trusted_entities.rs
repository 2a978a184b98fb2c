//! `--trusted-entities`: a run's FAB must come with a license and a signature by a trusted key.
//! Unsigned, signed by another key, or tampered: the node answers the message at once with an
//! INVALID_FAB error reply naming the reason (Flower's SuperNode drops its refusal, and the
//! ServerApp waits for its timeout). Signed by a trusted key: the run goes on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64ct::Encoding as _;
use bytes::Bytes;
use flwr_objects::message::{error_code, MessageMeta, SUPERLINK_NODE_ID};
use flwr_objects::{ObjectId, ObjectTree};
use flwr_proto::convert::{message_from_pb, message_to_pb, tree_to_pb};
use flwr_proto::proto as pb;
use flwr_testkit::federation::logged_address;
use flwr_testkit::process::{command, Proc, Signal};
use sha2::Digest;
use tonic::{Response, Status};

mod common;
use common::{until_while_alive, FakeSuperLink, Script, NODE, R, SUPERNODE};

const RUN: u64 = 9;

/// A FAB the node can read.
fn fab() -> Bytes {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file("pyproject.toml", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(
            br#"[project]
name = "app"
version = "1.0.0"
[tool.flwr.app]
publisher = "tests"
[tool.flwr.app.components]
serverapp = "a:app"
clientapp = "b:app"
[tool.flwr.app.config]
rounds = 3
"#,
        )
        .unwrap();
        z.finish().unwrap();
    }
    Bytes::from(buf.into_inner())
}

/// `{"signature": ..., "signed_at": ...}` by `pair` over `content`, as Flower Hub signs.
fn signature(pair: &Ed25519KeyPair, content: &[u8]) -> String {
    let at: u64 = 1_767_000_000;
    let mut m = at.to_be_bytes().to_vec();
    m.extend_from_slice(&sha2::Sha256::digest(content));
    let sig = base64ct::Base64UrlUnpadded::encode_string(pair.sign(&m).as_ref());
    format!("{{\"signature\": \"{sig}\", \"signed_at\": {at}}}")
}

fn ssh_public(pair: &Ed25519KeyPair) -> String {
    let mut wire = Vec::new();
    for part in [b"ssh-ed25519".as_slice(), pair.public_key().as_ref()] {
        wire.extend_from_slice(&(part.len() as u32).to_be_bytes());
        wire.extend_from_slice(part);
    }
    format!(
        "ssh-ed25519 {} publisher",
        base64ct::Base64::encode_string(&wire)
    )
}

#[derive(Default)]
struct Seen {
    confirmed: Vec<String>,
    replies: Vec<MessageMeta>,
    object_pulls: usize,
}

/// A SuperLink with one instruction of run [`RUN`] whose FAB comes with `verifications`.
struct SignedFab {
    instruction: MessageMeta,
    fab: Bytes,
    verifications: HashMap<String, String>,
    seen: Arc<Mutex<Seen>>,
}

#[tonic::async_trait]
impl Script for SignedFab {
    async fn pull_messages(&self) -> R<pb::PullMessagesResponse> {
        if !self.seen.lock().unwrap().confirmed.is_empty() {
            return Ok(Response::new(pb::PullMessagesResponse::default()));
        }
        let tree = ObjectTree::leaf(ObjectId::of(b"the instruction's content"));
        Ok(Response::new(pb::PullMessagesResponse {
            messages_list: vec![message_to_pb(&self.instruction)],
            message_object_trees: vec![tree_to_pb(&tree)],
            ..Default::default()
        }))
    }
    async fn push_messages(&self, request: pb::PushMessagesRequest) -> R<pb::PushMessagesResponse> {
        let mut results = HashMap::new();
        for m in &request.messages_list {
            let reply = message_from_pb(m).map_err(Status::invalid_argument)?;
            results.insert(reply.message_id.clone(), 0);
            self.seen.lock().unwrap().replies.push(reply);
        }
        Ok(Response::new(pb::PushMessagesResponse {
            results,
            ..Default::default()
        }))
    }
    async fn get_run(&self) -> R<pb::GetRunResponse> {
        Ok(Response::new(pb::GetRunResponse {
            run: Some(pb::Run {
                run_id: RUN,
                fab_id: "tests/app".into(),
                fab_version: "1.0.0".into(),
                fab_hash: hex::encode(sha2::Sha256::digest(&self.fab)),
                ..Default::default()
            }),
        }))
    }
    async fn get_fab(&self) -> R<pb::GetFabResponse> {
        Ok(Response::new(pb::GetFabResponse {
            fab: Some(pb::Fab {
                content: self.fab.clone(),
                verifications: self.verifications.clone(),
                ..Default::default()
            }),
        }))
    }
    async fn pull_object(&self) -> R<pb::PullObjectResponse> {
        // This test stops at the FAB: the object is unknown, and the node drops the message.
        self.seen.lock().unwrap().object_pulls += 1;
        Ok(Response::new(pb::PullObjectResponse::default()))
    }
    async fn confirm_message_received(
        &self,
        request: pb::ConfirmMessageReceivedRequest,
    ) -> R<pb::ConfirmMessageReceivedResponse> {
        self.seen
            .lock()
            .unwrap()
            .confirmed
            .push(request.message_object_id);
        Ok(Response::new(pb::ConfirmMessageReceivedResponse {}))
    }
}

/// Our SuperNode trusting `trusted` (a YAML file) against `superlink`.
fn node(superlink: &str, trusted: &std::path::Path) -> Proc {
    let mut cmd = command(SUPERNODE);
    cmd.args([
        "--insecure",
        "--superlink",
        superlink,
        "--isolation",
        "process",
    ])
    .args(["--clientappio-api-address", "127.0.0.1:0"])
    .arg("--trusted-entities")
    .arg(trusted);
    let mut p = Proc::spawn("supernode", cmd);
    let out = p.wait_for_output("ClientAppIo API serving", Duration::from_secs(30));
    logged_address(&out, "ClientAppIo API serving");
    p
}

/// What the node does with one message whose FAB is `content` with `verifications`: the error
/// reply's reason, or `None` when it went on to the message's objects.
async fn outcome(
    trusted: &std::path::Path,
    content: Bytes,
    verifications: HashMap<String, String>,
) -> Option<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let instruction = MessageMeta {
        run_id: RUN,
        message_id: "cd".repeat(32),
        src_node_id: SUPERLINK_NODE_ID,
        dst_node_id: NODE,
        reply_to_message_id: String::new(),
        group_id: "1".into(),
        ttl: 3600.0,
        message_type: "train".into(),
        created_at: now,
        error: None,
        has_content: true,
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let superlink = FakeSuperLink::start(SignedFab {
        instruction: instruction.clone(),
        fab: content,
        verifications,
        seen: seen.clone(),
    })
    .await;
    let mut node = node(&superlink.address, trusted);
    until_while_alive(
        &mut node,
        "a reply or an object pull",
        Duration::from_secs(60),
        || {
            let s = seen.lock().unwrap();
            !s.replies.is_empty() || s.object_pulls > 0
        },
    )
    .await;
    node.signal(Signal::SIGTERM);
    let out = node.wait(Duration::from_secs(30)).1;
    superlink.stop().await;
    let seen = seen.lock().unwrap();
    match seen.replies.first() {
        Some(reply) => {
            assert_eq!(seen.confirmed, vec![instruction.message_id.clone()]);
            assert_eq!(reply.reply_to_message_id, instruction.message_id);
            let error = reply.error.clone().expect("an error reply");
            assert_eq!(error.code, error_code::INVALID_FAB, "{out}");
            Some(error.reason)
        }
        None => {
            assert!(
                out.contains("the FAB is signed by a trusted entity"),
                "{out}"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_fabs_signed_by_a_trusted_entity_run() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = Ed25519KeyPair::generate().unwrap();
    let stranger = Ed25519KeyPair::generate().unwrap();
    let trusted = dir.path().join("trusted-entities.yaml");
    std::fs::write(
        &trusted,
        format!("fpk_publisher: '{}'\n", ssh_public(&publisher)),
    )
    .unwrap();
    let content = fab();
    let licensed = |id: &str, sig: String| {
        HashMap::from([
            ("valid_license".to_owned(), "valid".to_owned()),
            (id.to_owned(), sig),
        ])
    };

    // Signed by the trusted publisher: the node goes on to the message.
    let signed = licensed("fpk_publisher", signature(&publisher, &content));
    assert_eq!(
        outcome(&trusted, content.clone(), signed.clone()).await,
        None
    );

    // No license (a SuperLink that does not verify apps).
    let mut unlicensed = signed.clone();
    unlicensed.remove("valid_license");
    let reason = outcome(&trusted, content.clone(), unlicensed)
        .await
        .unwrap();
    assert!(reason.contains("carries no license"), "{reason}");

    // Signed by someone else, under the trusted id and under an id of its own.
    for verifications in [
        licensed("fpk_publisher", signature(&stranger, &content)),
        licensed("fpk_stranger", signature(&stranger, &content)),
    ] {
        let reason = outcome(&trusted, content.clone(), verifications)
            .await
            .unwrap();
        assert!(
            reason.contains("not signed by a trusted entity"),
            "{reason}"
        );
    }

    // Tampered: other bytes (with a matching run hash) under the publisher's signature.
    let mut tampered = content.to_vec();
    tampered.extend_from_slice(b"\n");
    let reason = outcome(&trusted, Bytes::from(tampered), signed)
        .await
        .unwrap();
    assert!(reason.contains("does not verify"), "{reason}");
}

/// A file it cannot use stops the node at start with the reason.
#[test]
fn an_unusable_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("trusted.yaml");
    std::fs::write(&bad, "fpk_a: 'ssh-rsa AAAAB3NzaC1yc2E'\n").unwrap();
    for (path, expected) in [
        (dir.path().join("missing.yaml"), "cannot read it"),
        (bad, "trusted entity fpk_a is not Ed25519"),
    ] {
        let (status, out) = flwr_testkit::process::run(
            std::process::Command::new(SUPERNODE)
                .args(["--insecure", "--trusted-entities"])
                .arg(&path),
        );
        assert_eq!(status.code(), Some(1), "{out}");
        assert!(
            out.contains("`--trusted-entities`") && out.contains(expected),
            "{out}"
        );
    }
}
