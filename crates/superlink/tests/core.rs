//! `Core` in process, on the in-memory engine with a manual clock and tokio's paused time: no
//! port, no child process, no sleep. A ServerApp's held pull (`--serverappio-pull-hold`) answers
//! as soon as a reply and its object arrive through the same `Core`, looks again on its own
//! timer for the replies the SuperLink makes itself when time passes (a node gone offline), and
//! otherwise waits out its hold without polling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flwr_objects::content::{serialize, ObjectType};
use flwr_objects::message::{error_code, MessageMeta};
use flwr_objects::{ObjectId, ObjectTree};
use flwr_state::conformance::link;
use flwr_state::{Clock, ManualClock, NodeId, RunId};
use flwr_superlink::core::{Core, Settings};
use tokio::time::Instant;

const HOLD: Duration = Duration::from_secs(30);

/// A `Core` holding pulls for [`HOLD`], with an online node (30 s heartbeat interval) and a
/// running run.
async fn core() -> (Core, Arc<ManualClock>, NodeId, RunId) {
    let clock = Arc::new(ManualClock::new());
    let stores = flwr_state::in_memory(clock.clone());
    let (node, run) = link::setup(&*stores.state, "key").await;
    let fabs = flwr_state::fabs::FileFabs::new(std::env::temp_dir().join("flwr-core-test-fabs"));
    let settings = Settings {
        enable_supernode_auth: false,
        simulation: false,
        fleet_adapter: false,
        proof_per_connection: None,
        pull_hold: Some(HOLD),
    };
    let core = Core::new(
        stores.state,
        stores.objects,
        Arc::new(fabs),
        clock.clone(),
        settings,
        None,
    );
    (core, clock, node, run)
}

/// A message object with `body`, its tree, and its id.
fn object(body: &[u8]) -> (Bytes, ObjectTree, ObjectId) {
    let content = Bytes::from(serialize(ObjectType::Message, &[], body));
    let id = ObjectId::of(&content);
    (
        content,
        ObjectTree {
            id,
            children: vec![],
        },
        id,
    )
}

/// An instruction for `node`, pushed by the ServerApp with its object.
async fn instruction(core: &Core, clock: &ManualClock, run: RunId, node: NodeId) -> MessageMeta {
    let (content, tree, id) = object(b"instruction");
    let mut meta = link::instruction(run, node, "", clock.now(), 600.0);
    meta.message_id = id.to_hex();
    let (ids, to_push) = core
        .push_instructions(run, vec![(meta.clone(), tree)])
        .await
        .unwrap();
    assert_eq!((ids, to_push), (vec![id.to_hex()], vec![id]));
    assert!(core.push_object(run, id.to_hex(), content).await.unwrap());
    meta
}

#[tokio::test(start_paused = true)]
async fn a_reply_and_its_object_end_the_hold_at_once() {
    let (core, clock, node, run) = core().await;
    let ins = instruction(&core, &clock, run, node).await;
    let (delivered, _) = core.pull_instruction(node).await.unwrap().unwrap();
    assert_eq!(delivered.message_id, ins.message_id);

    let started = Instant::now();
    let held = tokio::spawn({
        let (core, id) = (core.clone(), ins.message_id.clone());
        async move { core.pull_replies_held(run, vec![id]).await }
    });
    // The node replies a second later, and pushes the reply's object a second after that.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (content, tree, id) = object(b"reply");
    let mut reply = link::reply_to(&ins, "", clock.now());
    reply.message_id = id.to_hex();
    let (stored, to_push) = core.push_reply(node, reply, vec![tree], 0.0).await.unwrap();
    assert_eq!((stored, to_push), (Some(id.to_hex()), vec![id]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!held.is_finished(), "the reply's object is not in yet");
    assert!(core.push_object(run, id.to_hex(), content).await.unwrap());

    let answered = held.await.unwrap().unwrap();
    let ids: Vec<&str> = answered
        .iter()
        .map(|(m, _)| m.message_id.as_str())
        .collect();
    assert_eq!(ids, vec![id.to_hex().as_str()]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "answered when the object came, not on a timer: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_gone_offline_is_answered_by_the_timer_look() {
    let (core, clock, node, run) = core().await;
    let ins = instruction(&core, &clock, run, node).await;
    let started = Instant::now();
    let held = tokio::spawn({
        let (core, id) = (core.clone(), ins.message_id.clone());
        async move { core.pull_replies_held(run, vec![id]).await }
    });
    // The first look finds the node online and nothing to answer; then its heartbeat lapses
    // (nothing announces that) and the next timer look answers for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished());
    clock.advance(300.0);
    let answered = held.await.unwrap().unwrap();
    assert_eq!(answered.len(), 1);
    let (reply, _) = &answered[0];
    assert_eq!(reply.reply_to_message_id, ins.message_id);
    assert_eq!(
        reply.error.as_ref().map(|e| e.code),
        Some(error_code::NODE_UNAVAILABLE)
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "one timer look (5 s), not the hold's end, not a 500 ms poll: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn without_news_the_hold_runs_out() {
    let (core, clock, node, run) = core().await;
    let ins = instruction(&core, &clock, run, node).await;
    let started = Instant::now();
    let answered = core
        .pull_replies_held(run, vec![ins.message_id.clone()])
        .await
        .unwrap();
    assert!(answered.is_empty());
    let took = started.elapsed();
    assert!(
        took >= HOLD && took < HOLD + Duration::from_secs(1),
        "{took:?}"
    );
}
