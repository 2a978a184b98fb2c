//! The SuperNode's security findings as tests: ClientAppIo checks the token before the body, and
//! a SuperLink that fails (UNKNOWN or INTERNAL while the node joins, INTERNAL for ten seconds
//! while it polls) does not take the node down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flwr_proto::proto as pb;
use flwr_testkit::process::Signal;
use tonic::{Code, Response, Status};

mod common;
use common::{supernode, until_while_alive, FakeSuperLink, Script, NODE, R};

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

#[tonic::async_trait]
impl Script for Hiccup {
    async fn register_node(&self) -> R<pb::RegisterNodeFleetResponse> {
        if Self::failing(&self.registers) {
            return Err(Status::unknown(
                "Exception calling application: database is locked",
            ));
        }
        Ok(Response::new(pb::RegisterNodeFleetResponse {
            node_id: NODE,
        }))
    }
    async fn activate_node(&self) -> R<pb::ActivateNodeResponse> {
        if Self::failing(&self.activates) {
            return Err(Status::internal("database is restarting"));
        }
        Ok(Response::new(pb::ActivateNodeResponse { node_id: NODE }))
    }
    async fn pull_messages(&self) -> R<pb::PullMessagesResponse> {
        self.pulls.fetch_add(1, Ordering::SeqCst);
        if self.first_pull.get_or_init(Instant::now).elapsed() < PULL_FAILURE {
            return Err(Status::internal("database is restarting"));
        }
        self.pulls_after.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pb::PullMessagesResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_superlink_failing_for_ten_seconds_does_not_end_the_node() {
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
    let superlink = FakeSuperLink::start(hiccup).await;
    let (mut node, _) = supernode(&superlink.address);
    // The node keeps polling through the failures and is still there once the SuperLink is back.
    until_while_alive(
        &mut node,
        "a successful pull after the SuperLink recovered",
        Duration::from_secs(90),
        || pulls_after.load(Ordering::SeqCst) > 0,
    )
    .await;
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
    superlink.stop().await;
}
