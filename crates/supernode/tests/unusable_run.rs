//! A run whose FAB the node cannot use: our SuperNode confirms the instruction and answers it with
//! an INVALID_FAB error reply that says why, instead of leaving it unconfirmed (the SuperLink
//! would deliver it again every few seconds until its TTL, and the ServerApp would wait that long).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::time::Duration;

use bytes::Bytes;
use flwr_objects::message::{error_code, MessageError};
use flwr_testkit::process::Signal;
use sha2::Digest;

mod common;
use common::{supernode, until_while_alive, FakeSuperLink, OneInstruction, NODE};

const RUN: u64 = 7;

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_fab_does_not_match_gets_an_error_reply_at_once() {
    // A run whose FAB does not match the run's hash.
    let fake = OneInstruction {
        fab_hash: hex::encode(sha2::Sha256::digest(b"the FAB the run was started with")),
        ..OneInstruction::new(RUN, Bytes::from_static(b"some other FAB"))
    };
    let (instruction, seen) = (fake.instruction.clone(), fake.seen.clone());
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
