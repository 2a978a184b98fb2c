//! `Core` in process, on the in-memory engine with a manual clock and tokio's paused time: no
//! port, no child process, no sleep. A ServerApp's held pull (`--serverappio-pull-hold`) answers
//! as soon as a reply and its object arrive through the same `Core`, looks again on its own
//! timer for the replies the SuperLink makes itself when time passes (a node gone offline), and
//! otherwise waits out its hold without polling. A SuperNode's held pull (`--fleet-pull-hold`,
//! asked for by our SuperNodes) answers as soon as an instruction for its node and the
//! instruction's objects are in; a pull that does not ask is answered at once.

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
    let (core, clock, node, run, _) = core_and_state().await;
    (core, clock, node, run)
}

/// [`core`], and its state.
async fn core_and_state() -> (
    Core,
    Arc<ManualClock>,
    NodeId,
    RunId,
    Arc<dyn flwr_state::LinkState>,
) {
    let clock = Arc::new(ManualClock::new());
    let stores = flwr_state::in_memory(clock.clone());
    let state = stores.state.clone();
    let (node, run) = link::setup(&*stores.state, "key").await;
    let fabs = flwr_state::fabs::FileFabs::new(std::env::temp_dir().join("flwr-core-test-fabs"));
    let settings = Settings {
        enable_supernode_auth: false,
        simulation: false,
        fleet_adapter: false,
        proof_per_connection: None,
        pull_hold: Some(HOLD),
        fleet_pull_hold: Some(HOLD),
    };
    let core = Core::new(
        stores.state,
        stores.objects,
        Arc::new(fabs),
        clock.clone(),
        settings,
        None,
    );
    (core, clock, node, run, state)
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

/// An instruction, stored by the ServerApp without its object yet.
async fn instruction_without_object(
    core: &Core,
    clock: &ManualClock,
    run: RunId,
    node: NodeId,
    body: &[u8],
) -> (MessageMeta, Bytes) {
    let (content, tree, id) = object(body);
    let mut meta = link::instruction(run, node, "", clock.now(), 600.0);
    meta.message_id = id.to_hex();
    core.push_instructions(run, vec![(meta.clone(), tree)])
        .await
        .unwrap();
    (meta, content)
}

#[tokio::test(start_paused = true)]
async fn a_held_fleet_pull_answers_once_the_instruction_and_its_objects_are_in() {
    let (core, clock, node, run) = core().await;
    let started = Instant::now();
    let held = tokio::spawn({
        let core = core.clone();
        async move {
            core.pull_instruction_held(node, Some(Duration::from_secs(20)))
                .await
        }
    });
    // The ServerApp stores the instruction a second later, and its object a second after that.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!held.is_finished());
    let (ins, content) = instruction_without_object(&core, &clock, run, node, b"instruction").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !held.is_finished(),
        "the instruction's object is not in yet"
    );
    assert!(core
        .push_object(run, ins.message_id.clone(), content)
        .await
        .unwrap());

    let (pulled, hold) = held.await.unwrap().unwrap();
    assert_eq!(
        hold,
        Some(Duration::from_secs(20)),
        "held, for what it asked"
    );
    let (meta, _) = pulled.expect("the instruction");
    assert_eq!(meta.message_id, ins.message_id);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "answered when the object came, not on a timer: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fleet_pull_that_does_not_ask_to_wait_is_answered_at_once() {
    let (core, _clock, node, _run) = core().await;
    let started = Instant::now();
    let (pulled, hold) = core.pull_instruction_held(node, None).await.unwrap();
    assert!(pulled.is_none());
    assert_eq!(hold, None, "not held: the node keeps its own poll");
    assert_eq!(started.elapsed(), Duration::ZERO);
    // Zero is no wait either.
    let (_, hold) = core
        .pull_instruction_held(node, Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(hold, None);
}

#[tokio::test(start_paused = true)]
async fn a_held_fleet_pull_without_news_ends_at_the_superlinks_limit() {
    let (core, _clock, node, _run) = core().await;
    let started = Instant::now();
    // The node asks for more than the SuperLink grants (HOLD).
    let (pulled, hold) = core
        .pull_instruction_held(node, Some(HOLD * 3))
        .await
        .unwrap();
    assert!(pulled.is_none());
    assert_eq!(hold, Some(HOLD));
    let took = started.elapsed();
    assert!(
        took >= HOLD && took < HOLD + Duration::from_secs(1),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_instruction_for_another_node_does_not_end_the_hold() {
    let (core, clock, node, run, state) = core_and_state().await;
    let other = link::online_node(&*state, "other-key").await;
    let held = tokio::spawn({
        let core = core.clone();
        async move { core.pull_instruction_held(node, Some(HOLD)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, content) = instruction_without_object(&core, &clock, run, other, b"for another").await;
    core.push_object(run, ObjectId::of(&content).to_hex(), content)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!held.is_finished(), "not this node's instruction");
    let mine = instruction(&core, &clock, run, node).await;
    let (pulled, _) = held.await.unwrap().unwrap();
    assert_eq!(pulled.unwrap().0.message_id, mine.message_id);
}
