//! A run whose FAB the node cannot use: our SuperNode confirms the instruction and answers it with
//! an INVALID_FAB error reply that says why, instead of leaving it unconfirmed (the SuperLink
//! would deliver it again every few seconds until its TTL, and the ServerApp would wait that long).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flwr_objects::message::{error_code, MessageError, MessageMeta, SUPERLINK_NODE_ID};
use flwr_objects::{ObjectId, ObjectTree};
use flwr_proto::convert::{message_from_pb, message_to_pb, tree_to_pb};
use flwr_proto::proto as pb;
use flwr_testkit::process::Signal;
use sha2::Digest;
use tonic::{Response, Status};

mod common;
use common::{supernode, until_while_alive, FakeSuperLink, Script, NODE, R};

const RUN: u64 = 7;

/// What the fake SuperLink saw.
#[derive(Default)]
struct Seen {
    confirmed: Vec<String>,
    replies: Vec<MessageMeta>,
}

/// A SuperLink with one instruction for run [`RUN`], whose FAB does not match the run's hash.
struct UnusableFab {
    instruction: MessageMeta,
    seen: Arc<Mutex<Seen>>,
}

#[tonic::async_trait]
impl Script for UnusableFab {
    /// The instruction until the node confirms it (as our SuperLink repeats an unconfirmed
    /// delivery), then nothing.
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
        let mut results = std::collections::HashMap::new();
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
                fab_id: "test/app".into(),
                fab_version: "1.0.0".into(),
                fab_hash: hex::encode(sha2::Sha256::digest(b"the FAB the run was started with")),
                ..Default::default()
            }),
        }))
    }
    async fn get_fab(&self) -> R<pb::GetFabResponse> {
        Ok(Response::new(pb::GetFabResponse {
            fab: Some(pb::Fab {
                content: b"some other FAB".to_vec().into(),
                ..Default::default()
            }),
        }))
    }
    async fn confirm_message_received(
        &self,
        request: pb::ConfirmMessageReceivedRequest,
    ) -> R<pb::ConfirmMessageReceivedResponse> {
        let id = request.message_object_id;
        self.seen.lock().unwrap().confirmed.push(id);
        Ok(Response::new(pb::ConfirmMessageReceivedResponse {}))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_fab_does_not_match_gets_an_error_reply_at_once() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let instruction = MessageMeta {
        run_id: RUN,
        message_id: "ab".repeat(32),
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
    let fake = UnusableFab {
        instruction: instruction.clone(),
        seen: seen.clone(),
    };
    let superlink = FakeSuperLink::start(fake).await;
    let (mut node, _) = supernode(&superlink.address);

    until_while_alive(&mut node, "a reply", Duration::from_secs(60), || {
        !seen.lock().unwrap().replies.is_empty()
    })
    .await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.confirmed,
            vec![instruction.message_id.clone()],
            "confirmed, so that it is not delivered again"
        );
        let reply = &seen.replies[0];
        assert_eq!(reply.reply_to_message_id, instruction.message_id);
        assert_eq!((reply.run_id, reply.src_node_id), (RUN, NODE));
        let MessageError { code, reason } = reply.error.clone().expect("an error reply");
        assert_eq!(code, error_code::INVALID_FAB);
        assert!(
            reason.contains(&format!("the FAB of run {RUN} does not match its hash")),
            "{reason}"
        );
    }
    node.signal(Signal::SIGTERM);
    let (status, out) = node.wait(Duration::from_secs(30));
    assert!(status.success(), "{out}");
    assert_eq!(seen.lock().unwrap().replies.len(), 1, "{out}");
    superlink.stop().await;
}
