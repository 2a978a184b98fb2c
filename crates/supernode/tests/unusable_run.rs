//! A run whose FAB the node cannot use: our SuperNode confirms the instruction and answers it with
//! an INVALID_FAB error reply that says why, instead of leaving it unconfirmed (the SuperLink
//! would deliver it again every few seconds until its TTL, and the ServerApp would wait that long).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flwr_objects::message::{error_code, MessageError, MessageMeta, SUPERLINK_NODE_ID};
use flwr_objects::{ObjectId, ObjectTree};
use flwr_proto::convert::{message_from_pb, message_to_pb, tree_to_pb};
use flwr_proto::proto as pb;
use flwr_testkit::process::{command, Proc, Signal};
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const SUPERNODE: &str = env!("CARGO_BIN_EXE_supernode");
const RUN: u64 = 7;
const NODE: u64 = 42;

/// What the fake SuperLink saw.
#[derive(Default)]
struct Seen {
    pulls: usize,
    confirmed: Vec<String>,
    replies: Vec<MessageMeta>,
}

/// A SuperLink with one instruction for run [`RUN`], whose FAB does not match the run's hash.
#[derive(Clone)]
struct UnusableFab {
    instruction: MessageMeta,
    seen: Arc<Mutex<Seen>>,
}

type R<T> = Result<Response<T>, Status>;

fn unused<T>() -> R<T> {
    Err(Status::unimplemented("not used by this test"))
}

#[tonic::async_trait]
impl pb::fleet_server::Fleet for UnusableFab {
    async fn register_node(
        &self,
        _: Request<pb::RegisterNodeFleetRequest>,
    ) -> R<pb::RegisterNodeFleetResponse> {
        Ok(Response::new(pb::RegisterNodeFleetResponse {
            node_id: NODE,
        }))
    }
    async fn activate_node(
        &self,
        _: Request<pb::ActivateNodeRequest>,
    ) -> R<pb::ActivateNodeResponse> {
        Ok(Response::new(pb::ActivateNodeResponse { node_id: NODE }))
    }
    async fn deactivate_node(
        &self,
        _: Request<pb::DeactivateNodeRequest>,
    ) -> R<pb::DeactivateNodeResponse> {
        Ok(Response::new(pb::DeactivateNodeResponse {}))
    }
    async fn unregister_node(
        &self,
        _: Request<pb::UnregisterNodeFleetRequest>,
    ) -> R<pb::UnregisterNodeFleetResponse> {
        Ok(Response::new(pb::UnregisterNodeFleetResponse {}))
    }
    async fn send_node_heartbeat(
        &self,
        _: Request<pb::SendNodeHeartbeatRequest>,
    ) -> R<pb::SendNodeHeartbeatResponse> {
        Ok(Response::new(pb::SendNodeHeartbeatResponse {
            success: true,
        }))
    }
    /// The instruction until the node confirms it (as our SuperLink repeats an unconfirmed
    /// delivery), then nothing.
    async fn pull_messages(
        &self,
        _: Request<pb::PullMessagesRequest>,
    ) -> R<pb::PullMessagesResponse> {
        let mut seen = self.seen.lock().unwrap();
        seen.pulls += 1;
        if !seen.confirmed.is_empty() {
            return Ok(Response::new(pb::PullMessagesResponse::default()));
        }
        let tree = ObjectTree::leaf(ObjectId::of(b"the instruction's content"));
        Ok(Response::new(pb::PullMessagesResponse {
            messages_list: vec![message_to_pb(&self.instruction)],
            message_object_trees: vec![tree_to_pb(&tree)],
            ..Default::default()
        }))
    }
    async fn push_messages(
        &self,
        request: Request<pb::PushMessagesRequest>,
    ) -> R<pb::PushMessagesResponse> {
        let mut results = std::collections::HashMap::new();
        for m in &request.get_ref().messages_list {
            let reply = message_from_pb(m).map_err(Status::invalid_argument)?;
            results.insert(reply.message_id.clone(), 0);
            self.seen.lock().unwrap().replies.push(reply);
        }
        Ok(Response::new(pb::PushMessagesResponse {
            results,
            ..Default::default()
        }))
    }
    async fn get_run(&self, _: Request<pb::GetRunRequest>) -> R<pb::GetRunResponse> {
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
    async fn get_fab(&self, _: Request<pb::GetFabRequest>) -> R<pb::GetFabResponse> {
        Ok(Response::new(pb::GetFabResponse {
            fab: Some(pb::Fab {
                content: b"some other FAB".to_vec().into(),
                ..Default::default()
            }),
        }))
    }
    async fn push_object(&self, _: Request<pb::PushObjectRequest>) -> R<pb::PushObjectResponse> {
        unused()
    }
    async fn pull_object(&self, _: Request<pb::PullObjectRequest>) -> R<pb::PullObjectResponse> {
        unused()
    }
    async fn confirm_message_received(
        &self,
        request: Request<pb::ConfirmMessageReceivedRequest>,
    ) -> R<pb::ConfirmMessageReceivedResponse> {
        let id = request.get_ref().message_object_id.clone();
        self.seen.lock().unwrap().confirmed.push(id);
        Ok(Response::new(pb::ConfirmMessageReceivedResponse {}))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_fab_does_not_match_gets_an_error_reply_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
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
    let stop = CancellationToken::new();
    let server = tokio::spawn(flwr_transport::server::serve(
        tonic::service::Routes::new(pb::fleet_server::FleetServer::new(fake)),
        listener,
        None,
        flwr_transport::server::ServeOptions::default(),
        stop.clone(),
    ));
    let mut cmd = command(SUPERNODE);
    cmd.args(["--insecure", "--superlink", &address])
        .args(["--isolation", "process"])
        .args(["--clientappio-api-address", "127.0.0.1:0"]);
    let mut node = Proc::spawn("supernode", cmd);

    let started = Instant::now();
    while seen.lock().unwrap().replies.is_empty() {
        assert!(
            node.try_status().is_none(),
            "the SuperNode exited:\n{}",
            node.output()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no reply:\n{}",
            node.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    stop.cancel();
    server.await.unwrap();
}
