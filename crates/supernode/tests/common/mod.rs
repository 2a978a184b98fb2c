//! A fake SuperLink for the SuperNode's black-box tests: a Fleet server whose answers a test
//! scripts by overriding only the calls it cares about ([`Script`]); the rest answer as a quiet
//! SuperLink would (the node joins as [`NODE`], heartbeats succeed, nothing is queued).

#![allow(dead_code)] // each test binary uses its own part

use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64ct::Encoding as _;
use sha2::Digest;

use flwr_proto::proto as pb;
use flwr_testkit::federation::logged_address;
use flwr_testkit::process::{command, Proc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The node id the fake SuperLink gives.
pub const NODE: u64 = 42;

pub type R<T> = Result<Response<T>, Status>;

/// A call the script does not expect.
pub fn unused<T>() -> R<T> {
    Err(Status::unimplemented("not used by this test"))
}

/// The calls a test may script.
#[tonic::async_trait]
pub trait Script: Send + Sync + 'static {
    async fn register_node(&self) -> R<pb::RegisterNodeFleetResponse> {
        Ok(Response::new(pb::RegisterNodeFleetResponse {
            node_id: NODE,
        }))
    }
    async fn activate_node(&self) -> R<pb::ActivateNodeResponse> {
        Ok(Response::new(pb::ActivateNodeResponse { node_id: NODE }))
    }
    async fn pull_messages(&self) -> R<pb::PullMessagesResponse> {
        Ok(Response::new(pb::PullMessagesResponse::default()))
    }
    async fn push_messages(&self, _: pb::PushMessagesRequest) -> R<pb::PushMessagesResponse> {
        unused()
    }
    async fn get_run(&self) -> R<pb::GetRunResponse> {
        unused()
    }
    async fn get_fab(&self) -> R<pb::GetFabResponse> {
        unused()
    }
    async fn pull_object(&self) -> R<pb::PullObjectResponse> {
        unused()
    }
    async fn confirm_message_received(
        &self,
        _: pb::ConfirmMessageReceivedRequest,
    ) -> R<pb::ConfirmMessageReceivedResponse> {
        unused()
    }
}

struct Fake<S>(S);

#[tonic::async_trait]
impl<S: Script> pb::fleet_server::Fleet for Fake<S> {
    async fn register_node(
        &self,
        _: Request<pb::RegisterNodeFleetRequest>,
    ) -> R<pb::RegisterNodeFleetResponse> {
        self.0.register_node().await
    }
    async fn activate_node(
        &self,
        _: Request<pb::ActivateNodeRequest>,
    ) -> R<pb::ActivateNodeResponse> {
        self.0.activate_node().await
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
    async fn pull_messages(
        &self,
        _: Request<pb::PullMessagesRequest>,
    ) -> R<pb::PullMessagesResponse> {
        self.0.pull_messages().await
    }
    async fn push_messages(
        &self,
        request: Request<pb::PushMessagesRequest>,
    ) -> R<pb::PushMessagesResponse> {
        self.0.push_messages(request.into_inner()).await
    }
    async fn get_run(&self, _: Request<pb::GetRunRequest>) -> R<pb::GetRunResponse> {
        self.0.get_run().await
    }
    async fn get_fab(&self, _: Request<pb::GetFabRequest>) -> R<pb::GetFabResponse> {
        self.0.get_fab().await
    }
    async fn push_object(&self, _: Request<pb::PushObjectRequest>) -> R<pb::PushObjectResponse> {
        unused()
    }
    async fn pull_object(&self, _: Request<pb::PullObjectRequest>) -> R<pb::PullObjectResponse> {
        self.0.pull_object().await
    }
    async fn confirm_message_received(
        &self,
        request: Request<pb::ConfirmMessageReceivedRequest>,
    ) -> R<pb::ConfirmMessageReceivedResponse> {
        self.0.confirm_message_received(request.into_inner()).await
    }
}

/// What a fake SuperLink with [`OneInstruction`] saw.
#[derive(Default)]
pub struct Seen {
    /// The ids of the messages confirmed.
    pub confirmed: Vec<String>,
    /// The replies pushed.
    pub replies: Vec<flwr_objects::message::MessageMeta>,
    /// Object pulls (answered "unknown").
    pub object_pulls: usize,
}

/// A training instruction of `run_id` for [`NODE`], created now.
pub fn instruction(run_id: u64) -> flwr_objects::message::MessageMeta {
    use flwr_objects::message::{MessageMeta, SUPERLINK_NODE_ID};
    MessageMeta {
        run_id,
        message_id: "ab".repeat(32),
        src_node_id: SUPERLINK_NODE_ID,
        dst_node_id: NODE,
        reply_to_message_id: String::new(),
        group_id: "1".into(),
        ttl: 3600.0,
        message_type: "train".into(),
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64(),
        error: None,
        has_content: true,
    }
}

/// A SuperLink with one instruction, delivered until the node confirms it (as our SuperLink
/// repeats an unconfirmed delivery); its run says the FAB's hash is `fab_hash` and GetFab
/// gives `fab` with `verifications`. The tests stop at the FAB: objects are "unknown".
pub struct OneInstruction {
    pub instruction: flwr_objects::message::MessageMeta,
    pub fab: bytes::Bytes,
    pub fab_hash: String,
    pub verifications: std::collections::HashMap<String, String>,
    pub seen: std::sync::Arc<std::sync::Mutex<Seen>>,
}

impl OneInstruction {
    /// An instruction of `run_id` whose run has `fab` (and its true hash), no verifications.
    pub fn new(run_id: u64, fab: bytes::Bytes) -> Self {
        use sha2::Digest;
        OneInstruction {
            instruction: instruction(run_id),
            fab_hash: hex::encode(sha2::Sha256::digest(&fab)),
            fab,
            verifications: Default::default(),
            seen: Default::default(),
        }
    }
}

#[tonic::async_trait]
impl Script for OneInstruction {
    async fn pull_messages(&self) -> R<pb::PullMessagesResponse> {
        use flwr_proto::convert::{message_to_pb, tree_to_pb};
        if !self.seen.lock().unwrap().confirmed.is_empty() {
            return Ok(Response::new(pb::PullMessagesResponse::default()));
        }
        let tree = flwr_objects::ObjectTree::leaf(flwr_objects::ObjectId::of(
            b"the instruction's content",
        ));
        Ok(Response::new(pb::PullMessagesResponse {
            messages_list: vec![message_to_pb(&self.instruction)],
            message_object_trees: vec![tree_to_pb(&tree)],
            ..Default::default()
        }))
    }
    async fn push_messages(&self, request: pb::PushMessagesRequest) -> R<pb::PushMessagesResponse> {
        let mut results = std::collections::HashMap::new();
        for m in &request.messages_list {
            let reply =
                flwr_proto::convert::message_from_pb(m).map_err(Status::invalid_argument)?;
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
                run_id: self.instruction.run_id,
                fab_id: "tests/app".into(),
                fab_version: "1.0.0".into(),
                fab_hash: self.fab_hash.clone(),
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

/// A running fake SuperLink (plaintext, port 0); stops when dropped after [`FakeSuperLink::stop`].
pub struct FakeSuperLink {
    /// Where it listens (host:port).
    pub address: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl FakeSuperLink {
    /// Serves `script` on a port of its own.
    pub async fn start(script: impl Script) -> FakeSuperLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let server = tokio::spawn(flwr_transport::server::serve(
            tonic::service::Routes::new(pb::fleet_server::FleetServer::new(Fake(script))),
            listener,
            None,
            flwr_transport::server::ServeOptions::default(),
            stop.clone(),
        ));
        FakeSuperLink {
            address,
            stop,
            server,
        }
    }

    /// Stops serving and waits for the server to end.
    pub async fn stop(self) {
        self.stop.cancel();
        self.server.await.unwrap();
    }
}

pub const SUPERNODE: &str = env!("CARGO_BIN_EXE_supernode");

/// Our SuperNode against `superlink` (plaintext), ClientAppIo on port 0, in process isolation;
/// returns it with its ClientAppIo address.
pub fn supernode(superlink: &str) -> (Proc, String) {
    supernode_with(superlink, &[])
}

/// [`supernode`] with `extra` flags.
pub fn supernode_with(superlink: &str, extra: &[&str]) -> (Proc, String) {
    let mut cmd = command(SUPERNODE);
    cmd.args([
        "--insecure",
        "--superlink",
        superlink,
        "--isolation",
        "process",
    ])
    .args(["--clientappio-api-address", "127.0.0.1:0"])
    .args(extra);
    let mut p = Proc::spawn("supernode", cmd);
    let out = p.wait_for_output("ClientAppIo API serving", Duration::from_secs(30));
    let appio = logged_address(&out, "ClientAppIo API serving");
    (p, appio)
}

/// Waits until `done`, failing the test with the node's output if the node exits first or
/// `timeout` passes without `what`.
pub async fn until_while_alive(
    node: &mut Proc,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            node.try_status().is_none(),
            "the SuperNode exited before {what}:\n{}",
            node.output()
        );
        assert!(
            started.elapsed() < timeout,
            "no {what} within {timeout:?}:\n{}",
            node.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `{"signature": ..., "signed_at": ...}` by `pair` over `content`, as Flower Hub signs.
pub fn signature(pair: &Ed25519KeyPair, content: &[u8]) -> String {
    let at: u64 = 1_767_000_000;
    let mut m = at.to_be_bytes().to_vec();
    m.extend_from_slice(&sha2::Sha256::digest(content));
    let sig = base64ct::Base64UrlUnpadded::encode_string(pair.sign(&m).as_ref());
    format!("{{\"signature\": \"{sig}\", \"signed_at\": {at}}}")
}

pub fn ssh_public(pair: &Ed25519KeyPair) -> String {
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
