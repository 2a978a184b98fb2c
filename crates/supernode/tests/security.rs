//! The SuperNode's security findings as tests: ClientAppIo checks the token before the body, and
//! a SuperLink that fails (UNKNOWN or INTERNAL while the node joins, INTERNAL for ten seconds
//! while it polls) does not take the node down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flwr_proto::proto as pb;
use flwr_testkit::federation::logged_address;
use flwr_testkit::process::{command, Proc, Signal};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

const SUPERNODE: &str = env!("CARGO_BIN_EXE_supernode");

/// Our SuperNode against `superlink` (plaintext), ClientAppIo on port 0, in process isolation;
/// returns it with its ClientAppIo address.
fn supernode(superlink: &str) -> (Proc, String) {
    let mut cmd = command(SUPERNODE);
    cmd.args([
        "--insecure",
        "--superlink",
        superlink,
        "--isolation",
        "process",
    ])
    .args(["--clientappio-api-address", "127.0.0.1:0"]);
    let mut p = Proc::spawn("supernode", cmd);
    let out = p.wait_for_output("ClientAppIo API serving", Duration::from_secs(30));
    let appio = logged_address(&out, "ClientAppIo API serving");
    (p, appio)
}

#[tokio::test(flavor = "multi_thread")]
async fn clientappio_checks_the_token_before_the_body() {
    // No SuperLink needed: the ClientAppIo API serves from the start.
    let closed = flwr_testkit::ports::reserve_address();
    let (_node, appio) = supernode(&closed);
    let channel = flwr_transport::grpc::channel(&appio.parse().unwrap(), None);
    let mut client = pb::client_app_io_client::ClientAppIoClient::new(channel);
    for body in [
        // Empty lists: Flower answers PERMISSION_DENIED, not "list index out of range".
        pb::PushAppMessagesRequest {
            token: "not-a-token".into(),
            ..Default::default()
        },
        // A well-formed message: refused all the same.
        pb::PushAppMessagesRequest {
            token: "not-a-token".into(),
            run_id: 1,
            messages_list: vec![pb::Message::default()],
            message_object_trees: vec![pb::ObjectTree {
                object_id: "a".repeat(64),
                children: vec![],
            }],
        },
    ] {
        let status = client.push_message(body).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
}

/// A SuperLink that fails while the node joins and then while it polls: RegisterNode (UNKNOWN)
/// and ActivateNode (INTERNAL) the first [`FAILURES`] times each, PullMessages (INTERNAL) for
/// [`PULL_FAILURE`] from its first call; then it answers, PullMessages with nothing.
#[derive(Clone)]
struct Hiccup {
    registers: Arc<AtomicU64>,
    activates: Arc<AtomicU64>,
    pulls: Arc<AtomicU64>,
    first_pull: Arc<std::sync::OnceLock<Instant>>,
    pulls_after: Arc<AtomicU64>,
}

/// How many times RegisterNode and ActivateNode fail before they succeed.
const FAILURES: u64 = 3;
/// How long PullMessages fails.
const PULL_FAILURE: Duration = Duration::from_secs(10);

impl Hiccup {
    /// Counts a call; true while it is to fail.
    fn failing(calls: &AtomicU64) -> bool {
        calls.fetch_add(1, Ordering::SeqCst) < FAILURES
    }
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::fleet_server::Fleet for Hiccup {
    async fn register_node(
        &self,
        _: Request<pb::RegisterNodeFleetRequest>,
    ) -> R<pb::RegisterNodeFleetResponse> {
        if Self::failing(&self.registers) {
            return Err(Status::unknown(
                "Exception calling application: database is locked",
            ));
        }
        Ok(Response::new(pb::RegisterNodeFleetResponse { node_id: 42 }))
    }
    async fn activate_node(
        &self,
        _: Request<pb::ActivateNodeRequest>,
    ) -> R<pb::ActivateNodeResponse> {
        if Self::failing(&self.activates) {
            return Err(Status::internal("database is restarting"));
        }
        Ok(Response::new(pb::ActivateNodeResponse { node_id: 42 }))
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
        self.pulls.fetch_add(1, Ordering::SeqCst);
        if self.first_pull.get_or_init(Instant::now).elapsed() < PULL_FAILURE {
            return Err(Status::internal("database is restarting"));
        }
        self.pulls_after.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pb::PullMessagesResponse::default()))
    }
    async fn push_messages(
        &self,
        _: Request<pb::PushMessagesRequest>,
    ) -> R<pb::PushMessagesResponse> {
        Err(Status::unimplemented(""))
    }
    async fn get_run(&self, _: Request<pb::GetRunRequest>) -> R<pb::GetRunResponse> {
        Err(Status::unimplemented(""))
    }
    async fn get_fab(&self, _: Request<pb::GetFabRequest>) -> R<pb::GetFabResponse> {
        Err(Status::unimplemented(""))
    }
    async fn push_object(&self, _: Request<pb::PushObjectRequest>) -> R<pb::PushObjectResponse> {
        Err(Status::unimplemented(""))
    }
    async fn pull_object(&self, _: Request<pb::PullObjectRequest>) -> R<pb::PullObjectResponse> {
        Err(Status::unimplemented(""))
    }
    async fn confirm_message_received(
        &self,
        _: Request<pb::ConfirmMessageReceivedRequest>,
    ) -> R<pb::ConfirmMessageReceivedResponse> {
        Err(Status::unimplemented(""))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_superlink_failing_for_ten_seconds_does_not_end_the_node() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let hiccup = Hiccup {
        registers: Arc::default(),
        activates: Arc::default(),
        pulls: Arc::default(),
        first_pull: Arc::default(),
        pulls_after: Arc::default(),
    };
    let pulls_after = hiccup.pulls_after.clone();
    let calls = [
        hiccup.registers.clone(),
        hiccup.activates.clone(),
        hiccup.pulls.clone(),
    ];
    let stop = CancellationToken::new();
    let server = tokio::spawn(flwr_transport::server::serve(
        tonic::service::Routes::new(pb::fleet_server::FleetServer::new(hiccup)),
        listener,
        None,
        flwr_transport::server::ServeOptions::default(),
        stop.clone(),
    ));
    let (mut node, _) = supernode(&address);
    // The node keeps polling through the failures and is still there once the SuperLink is back.
    let started = Instant::now();
    while pulls_after.load(Ordering::SeqCst) == 0 {
        assert!(
            node.try_status().is_none(),
            "the SuperNode exited on UNKNOWN or INTERNAL:\n{}",
            node.output()
        );
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no successful pull after the SuperLink recovered:\n{}",
            node.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        node.output().contains("the SuperLink failed"),
        "{}",
        node.output()
    );
    assert!(
        calls.iter().all(|c| c.load(Ordering::SeqCst) > FAILURES),
        "RegisterNode and ActivateNode each failed {FAILURES} times, PullMessages for \
         {PULL_FAILURE:?}, and each was tried again:\n{}",
        node.output()
    );
    node.signal(Signal::SIGTERM);
    let (status, out) = node.wait(Duration::from_secs(30));
    assert!(status.success(), "{out}");
    stop.cancel();
    server.await.unwrap();
}
