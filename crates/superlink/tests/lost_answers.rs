//! An answer that never reaches its caller (a replica killed after its commit, a connection
//! cut) loses nothing: a node that pulls again without having confirmed gets its instruction
//! again, and a ServerApp that asks again for a reply it has not confirmed gets it again. Against
//! the real binary, on every engine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{channel, fleet_client, join, push_instruction, push_reply, running_run, signed};
use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_transport::node_auth::NodeSigningKey;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

#[tokio::test(flavor = "multi_thread")]
async fn in_memory() {
    lost_answers_are_given_again(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    lost_answers_are_given_again(&["--database", db.to_str().unwrap()]).await;
}

#[cfg(feature = "external")]
#[tokio::test(flavor = "multi_thread")]
async fn on_postgresql() {
    let db = flwr_testkit::postgres::shared().create_database();
    lost_answers_are_given_again(&["--database", &db]).await;
}

async fn lost_answers_are_given_again(database: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--isolation", "process"];
    args.extend_from_slice(database);
    let mut superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &args);
    let key = NodeSigningKey::generate();
    let node = join(&superlink.fleet, &key).await;
    let (run_id, token) = running_run(&superlink.control, &superlink.serverappio).await;
    let mut appio =
        pb::server_app_io_client::ServerAppIoClient::new(channel(&superlink.serverappio));
    let mut fleet = fleet_client(&superlink.fleet);

    // The ServerApp sends an instruction.
    let ins_id = push_instruction(&superlink.serverappio, &token, run_id, node).await;

    // The node pulls it, and the answer is lost.
    let pull_messages = || {
        signed(
            &key,
            pb::PullMessagesRequest {
                node: Some(pb::Node { node_id: node }),
                message_ids: vec![],
            },
            None,
        )
    };
    // The clock starts before the delivery, which the SuperLink stamps while it answers.
    let start = Instant::now();
    let pulled = fleet.pull_messages(pull_messages()).await.unwrap();
    assert_eq!(pulled.into_inner().messages_list.len(), 1);
    // Its next pulls get it again, once the delivery cannot be merely slow.
    let again = loop {
        let r = fleet
            .pull_messages(pull_messages())
            .await
            .unwrap()
            .into_inner();
        if let Some(m) = r.messages_list.first() {
            break m.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the lost instruction never came again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "delivered again too soon: {:?}",
        start.elapsed()
    );
    assert_eq!(again.metadata.unwrap().message_id, ins_id.to_hex());

    // This time it arrives: the node takes its objects and confirms it.
    let object = fleet
        .pull_object(signed(
            &key,
            pb::PullObjectRequest {
                node: Some(pb::Node { node_id: node }),
                run_id,
                object_id: ins_id.to_hex(),
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(object.object_found && object.object_available);
    fleet
        .confirm_message_received(signed(
            &key,
            pb::ConfirmMessageReceivedRequest {
                node: Some(pb::Node { node_id: node }),
                run_id,
                message_object_id: ins_id.to_hex(),
            },
            None,
        ))
        .await
        .unwrap();

    // The node replies.
    let reply_id = push_reply(&superlink.fleet, &key, node, run_id, ins_id, Duration::ZERO).await;

    // The ServerApp takes the reply, and that answer is lost too: asked again, it comes again.
    let take = || pb::PullAppMessagesRequest {
        token: token.clone(),
        run_id,
        message_ids: vec![ins_id.to_hex()],
    };
    let ids = |r: pb::PullAppMessagesResponse| -> Vec<(String, Option<i64>)> {
        r.messages_list
            .into_iter()
            .map(|m| (m.metadata.unwrap().message_id, m.error.map(|e| e.code)))
            .collect()
    };
    for attempt in ["first", "second"] {
        let r = appio.pull_messages(take()).await.unwrap().into_inner();
        assert_eq!(
            ids(r),
            vec![(reply_id.to_hex(), None)],
            "{attempt} take of the reply"
        );
    }
    // It confirms the reply: then the instruction is gone, as Flower answers it.
    appio
        .confirm_message_received(pb::ConfirmMessageReceivedRequest {
            node: Some(pb::Node { node_id: 1 }),
            run_id,
            message_object_id: reply_id.to_hex(),
        })
        .await
        .unwrap();
    let r = appio.pull_messages(take()).await.unwrap().into_inner();
    let errors: Vec<Option<i64>> = ids(r).into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        errors,
        vec![Some(flwr_objects::message::error_code::MESSAGE_UNAVAILABLE)]
    );
    assert!(superlink.proc.try_status().is_none(), "still serving");
}
