//! `--serverappio-pull-hold`: a ServerApp's PullMessages for replies that are not in yet waits
//! for them (up to the hold) and answers as soon as they and all their objects are in, instead of
//! leaving the ServerApp to its 3-second sleep; with nothing arriving it answers what there is
//! when the hold ends; `0` answers at once, as Flower. A held call is also how the drain at
//! SIGTERM is tested: NOT_SERVING first, calls in flight finish.
//!
//! `--fleet-pull-hold`: a SuperNode's PullMessages that asks to wait (our SuperNodes' request
//! header) is held until an instruction for the node is in, through this replica or another; one
//! that does not ask (Flower's SuperNodes) is answered at once, as by Flower.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{channel, fleet_client, join, push_instruction, push_reply, running_run, signed};
use flwr_objects::ObjectId;
use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_transport::node_auth::NodeSigningKey;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

type AppIo = pb::server_app_io_client::ServerAppIoClient<tonic::transport::Channel>;

/// A SuperLink with `hold`, a node, a running run and one instruction for the node; returns the
/// SuperLink, the node's key and id, the run, the ServerApp's token and the instruction's id.
async fn one_instruction(
    hold: &str,
    extra: &[&str],
) -> (
    SuperLink,
    tempfile::TempDir,
    NodeSigningKey,
    u64,
    u64,
    String,
    ObjectId,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = vec!["--isolation", "process", "--serverappio-pull-hold", hold];
    flags.extend_from_slice(extra);
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &flags);
    let key = NodeSigningKey::generate();
    let node = join(&superlink.fleet, &key).await;
    let (run_id, token) = running_run(&superlink.control, &superlink.serverappio).await;
    let ins = push_instruction(&superlink.serverappio, &token, run_id, node).await;
    (superlink, dir, key, node, run_id, token, ins)
}

/// The node takes the instruction (pulling until it comes: another replica learns of it from a
/// notification) and replies: the reply message, then (after `object_delay`) its object.
/// Returns the reply's id.
async fn reply(
    fleet_addr: &str,
    key: &NodeSigningKey,
    node: u64,
    run_id: u64,
    ins: ObjectId,
    object_delay: Duration,
) -> ObjectId {
    let mut fleet = fleet_client(fleet_addr);
    let start = Instant::now();
    loop {
        let pulled = fleet
            .pull_messages(signed(
                key,
                pb::PullMessagesRequest {
                    node: Some(pb::Node { node_id: node }),
                    message_ids: vec![],
                },
                None,
            ))
            .await
            .unwrap()
            .into_inner();
        if pulled.messages_list.len() == 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no instruction");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet
        .confirm_message_received(signed(
            key,
            pb::ConfirmMessageReceivedRequest {
                node: Some(pb::Node { node_id: node }),
                run_id,
                message_object_id: ins.to_hex(),
            },
            None,
        ))
        .await
        .unwrap();
    push_reply(fleet_addr, key, node, run_id, ins, object_delay).await
}

/// The ServerApp can pull the object `id` at once.
async fn assert_available(appio: &mut AppIo, run_id: u64, id: ObjectId) {
    let object = appio
        .pull_object(pb::PullObjectRequest {
            node: Some(pb::Node { node_id: 1 }),
            run_id,
            object_id: id.to_hex(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(object.object_found && object.object_available);
}

fn take(token: &str, run_id: u64, ins: ObjectId) -> pb::PullAppMessagesRequest {
    pb::PullAppMessagesRequest {
        token: token.to_owned(),
        run_id,
        message_ids: vec![ins.to_hex()],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_pull_answers_once_the_reply_and_its_objects_are_in() {
    let (superlink, _dir, key, node, run_id, token, ins) = one_instruction("20", &[]).await;
    let mut appio = AppIo::new(channel(&superlink.serverappio));

    // The ServerApp asks before the node has even pulled; the node replies meanwhile, its
    // object a second after its message.
    let started = Instant::now();
    let pull = timed_pull(appio.clone(), take(&token, run_id, ins), started);
    let (before_reply, object_delay) = (Duration::from_millis(300), Duration::from_secs(1));
    tokio::time::sleep(before_reply).await;
    let reply_id = reply(&superlink.fleet, &key, node, run_id, ins, object_delay).await;
    let (answer, took) = pull.await.unwrap();
    let answer = answer.unwrap().into_inner();
    let ids: Vec<String> = answer
        .messages_list
        .iter()
        .map(|m| m.metadata.as_ref().unwrap().message_id.clone())
        .collect();
    assert_eq!(ids, vec![reply_id.to_hex()]);
    // The reply's object is pushed no sooner than this after the pull started.
    let object_in = before_reply + object_delay;
    assert!(
        took >= object_in,
        "answered before the reply's object was in ({took:?} < {object_in:?})"
    );
    assert!(
        took < Duration::from_secs(15),
        "answered only when the hold ran out: {took:?}"
    );
    // Its object is there for the ServerApp to pull at once.
    assert_available(&mut appio, run_id, reply_id).await;
}

/// The ServerApp's pull `request` in a task of its own: its answer, and how long after `started`
/// it came.
fn timed_pull(
    mut appio: AppIo,
    request: pb::PullAppMessagesRequest,
    started: Instant,
) -> tokio::task::JoinHandle<(
    Result<tonic::Response<pb::PullAppMessagesResponse>, tonic::Status>,
    Duration,
)> {
    tokio::spawn(async move {
        let answer = appio.pull_messages(request).await;
        (answer, started.elapsed())
    })
}

/// How long the ServerApp's pull of the reply to `ins` took; there is none.
async fn time_an_empty_pull(
    appio: &mut AppIo,
    token: &str,
    run_id: u64,
    ins: ObjectId,
) -> Duration {
    let started = Instant::now();
    let answer = appio
        .pull_messages(take(token, run_id, ins))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.messages_list.is_empty());
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_replies_the_hold_ends_and_zero_answers_at_once() {
    let (superlink, _dir, _key, _node, run_id, token, ins) = one_instruction("2", &[]).await;
    let mut appio = AppIo::new(channel(&superlink.serverappio));
    let took = time_an_empty_pull(&mut appio, &token, run_id, ins).await;
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    drop(superlink);

    let (superlink, _dir, _key, _node, run_id, token, ins) = one_instruction("0", &[]).await;
    let mut appio = AppIo::new(channel(&superlink.serverappio));
    // The first call also connects: time the second one.
    time_an_empty_pull(&mut appio, &token, run_id, ins).await;
    let took = time_an_empty_pull(&mut appio, &token, run_id, ins).await;
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

/// SIGTERM while a held pull is in flight: the health service answers NOT_SERVING at once (and
/// keeps answering), the call in flight finishes normally within `--shutdown-grace-seconds`, and
/// the SuperLink exits with status 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_calls_in_flight_and_reports_not_serving_first() {
    // A hold long enough that the pull is still held when the health service has changed,
    // however late the pull reached the SuperLink on a loaded machine.
    let (mut superlink, _dir, _key, _node, run_id, token, ins) = one_instruction(
        "10",
        &[
            "--health-server-address",
            "127.0.0.1:0",
            "--shutdown-grace-seconds",
            "20",
        ],
    )
    .await;
    let out = superlink
        .proc
        .wait_for_output("Health service serving", Duration::from_secs(30));
    let health_addr = flwr_testkit::federation::logged_address(&out, "Health service serving");
    let serving = || async {
        flwr_transport::health::check(channel(&health_addr))
            .await
            .unwrap()
    };
    assert!(serving().await);
    let mut appio = AppIo::new(channel(&superlink.serverappio));
    let started = Instant::now();
    let pull = tokio::spawn(async move { appio.pull_messages(take(&token, run_id, ins)).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    superlink
        .proc
        .signal(flwr_testkit::process::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while serving().await {
        assert!(Instant::now() < deadline, "still SERVING after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !pull.is_finished(),
        "the held pull is still in flight while draining"
    );
    let answer = pull.await.unwrap();
    assert!(
        answer.is_ok(),
        "a call in flight is not cut short: {answer:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(9));
    let (status, out) = superlink.proc.wait(Duration::from_secs(20));
    assert!(status.success(), "{out}");
    assert!(out.contains("draining: health NOT_SERVING"), "{out}");
}

/// Two replicas on a fresh PostgreSQL database, holding pulls for 30 s, with `extra` flags.
#[cfg(feature = "external")]
fn two_replicas(
    extra: &[&str],
) -> (
    &'static flwr_testkit::postgres::PgCluster,
    String,
    tempfile::TempDir,
    SuperLink,
    SuperLink,
) {
    let pg = flwr_testkit::postgres::shared();
    let db = pg.create_database();
    let dir = tempfile::tempdir().unwrap();
    let mut flags = vec![
        "--isolation",
        "process",
        "--database",
        db.as_str(),
        "--serverappio-pull-hold",
        "30",
    ];
    flags.extend_from_slice(extra);
    let a = SuperLink::start(BIN.as_ref(), None, &dir.path().join("a"), &flags);
    let b = SuperLink::start(BIN.as_ref(), None, &dir.path().join("b"), &flags);
    (pg, db, dir, a, b)
}

/// High availability, the lost-answer window: replica A holds a ServerApp's pull with the reply
/// already taken (marked delivered in the database) while its object is not in yet, and is
/// SIGKILLed. Nothing is lost: the ServerApp asks replica B, which gives the reply (unconfirmed
/// replies are given again) once the node has pushed its object through B.
#[cfg(feature = "external")]
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_while_it_holds_a_taken_reply_loses_nothing() {
    let (pg, db, _dir, a, b) = two_replicas(&[]);
    let key = std::sync::Arc::new(NodeSigningKey::generate());
    let node = join(&b.fleet, &key).await;
    let (run_id, token) = running_run(&a.control, &a.serverappio).await;
    let ins = push_instruction(&a.serverappio, &token, run_id, node).await;

    // Through B, the node takes the instruction and pushes its reply; the reply's object follows
    // twenty seconds later (long after A took the reply, however slow the machine).
    let replying = tokio::spawn({
        let (fleet, key) = (b.fleet.clone(), key.clone());
        async move { reply(&fleet, &key, node, run_id, ins, Duration::from_secs(20)).await }
    });
    // The ServerApp's held pull on A takes the reply and waits for its object.
    let held = tokio::spawn({
        let mut appio = AppIo::new(channel(&a.serverappio));
        let request = take(&token, run_id, ins);
        async move { appio.pull_messages(request).await }
    });
    let start = Instant::now();
    // psql blocks: off the runtime, so that the spawned calls go on meanwhile.
    let taken = || {
        tokio::task::block_in_place(|| {
            pg.psql_in(&db, "SELECT COUNT(*) FROM message_res WHERE delivered")
        })
    };
    while taken().trim() != "1" {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "replica A never took the reply:\n{}",
            a.proc.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !held.is_finished(),
        "the pull is held: the object is not in"
    );
    a.proc.signal(flwr_testkit::process::Signal::SIGKILL);
    let lost = held.await.unwrap();
    assert!(lost.is_err(), "A died with the pull in hand: {lost:?}");

    // The ServerApp asks again, through B: the reply comes once its object is in.
    let mut appio = AppIo::new(channel(&b.serverappio));
    let answer = appio
        .pull_messages(take(&token, run_id, ins))
        .await
        .unwrap()
        .into_inner();
    let reply_id = replying.await.unwrap();
    let got: Vec<(String, bool)> = answer
        .messages_list
        .iter()
        .map(|m| {
            (
                m.metadata.as_ref().unwrap().message_id.clone(),
                m.error.is_none(),
            )
        })
        .collect();
    assert_eq!(got, vec![(reply_id.to_hex(), true)]);
    assert_available(&mut appio, run_id, reply_id).await;
}

/// Across replicas a held pull waits for news, not for a timer: the ServerApp's pull is held by
/// replica A while the node replies through replica B, its object a second after its message.
/// A learns of both through PostgreSQL's notifications and answers with the complete reply; its
/// metrics show that every look it took again was for an arrival, none on a timer (a missing
/// announcement would show as a 5 s timer look, or as 500 ms polls).
#[cfg(feature = "external")]
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_through_another_replica_wakes_the_held_pull() {
    use flwr_testkit::federation::logged_address;
    use flwr_testkit::metrics::{scrape, value};
    let (_pg, _db, _dir, mut a, b) = two_replicas(&["--metrics-address", "127.0.0.1:0"]);
    let out = a
        .proc
        .wait_for_output("Metrics serving", Duration::from_secs(10));
    let metrics = logged_address(&out, "Metrics serving");
    let key = NodeSigningKey::generate();
    let node = join(&b.fleet, &key).await;
    let (run_id, token) = running_run(&a.control, &a.serverappio).await;
    let ins = push_instruction(&a.serverappio, &token, run_id, node).await;

    let held = timed_pull(
        AppIo::new(channel(&a.serverappio)),
        take(&token, run_id, ins),
        Instant::now(),
    );
    let reply_id = reply(&b.fleet, &key, node, run_id, ins, Duration::from_secs(1)).await;
    let (answer, hold_lasted) = held.await.unwrap();
    let answer = answer.unwrap().into_inner();
    let ids: Vec<String> = answer
        .messages_list
        .iter()
        .map(|m| m.metadata.as_ref().unwrap().message_id.clone())
        .collect();
    assert_eq!(
        ids,
        vec![reply_id.to_hex()],
        "answered complete, before the hold ended"
    );
    let mut appio = AppIo::new(channel(&a.serverappio));
    assert_available(&mut appio, run_id, reply_id).await;

    let text = scrape(&metrics);
    let wakeups =
        |cause| value(&text, "flwr_held_pull_wakeups_total", &[("cause", cause)]).unwrap_or(0.0);
    assert!(
        wakeups("arrival") >= 1.0,
        "A was woken by the arrivals:\n{text}"
    );
    for cause in ["poll", "hold_ended"] {
        assert_eq!(
            wakeups(cause),
            0.0,
            "A looked again without news ({cause}):\n{text}"
        );
    }
    // The 5 s timer looks only where a loaded machine held the pull that long (its replies
    // take about a second).
    let timer_looks_due = (hold_lasted.as_secs_f64() / 5.0).floor();
    assert!(
        wakeups("timer") <= timer_looks_due,
        "A looked again without news (timer) within {hold_lasted:?}:\n{text}"
    );
}

/// A node's PullMessages, asking to wait `wait_ms` (our SuperNode's header) or not (as Flower's
/// SuperNode asks).
async fn pull_as_node(
    fleet_addr: &str,
    key: &NodeSigningKey,
    node: u64,
    wait_ms: Option<u64>,
) -> tonic::Response<pb::PullMessagesResponse> {
    let mut request = signed(
        key,
        pb::PullMessagesRequest {
            node: Some(pb::Node { node_id: node }),
            message_ids: vec![],
        },
        None,
    );
    if let Some(ms) = wait_ms {
        request
            .metadata_mut()
            .insert(flwr_transport::grpc::PULL_WAIT_HEADER, ms.into());
    }
    fleet_client(fleet_addr)
        .pull_messages(request)
        .await
        .unwrap()
}

/// The ids of the instructions a node's pull was answered with.
fn message_ids(answer: &pb::PullMessagesResponse) -> Vec<String> {
    answer
        .messages_list
        .iter()
        .map(|m| m.metadata.as_ref().unwrap().message_id.clone())
        .collect()
}

fn held_for(answer: &tonic::Response<pb::PullMessagesResponse>) -> Option<String> {
    answer
        .metadata()
        .get(flwr_transport::grpc::PULL_WAIT_HEADER)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_asking_to_wait_is_held_and_one_that_does_not_is_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // The default --fleet-pull-hold (30 s).
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let flowers = NodeSigningKey::generate();
    let flowers_node = join(&superlink.fleet, &flowers).await;
    let ours = std::sync::Arc::new(NodeSigningKey::generate());
    let our_node = join(&superlink.fleet, &ours).await;
    let (run_id, token) = running_run(&superlink.control, &superlink.serverappio).await;

    // As Flower's SuperNode asks (no header): answered at once, empty, and not marked held.
    let started = Instant::now();
    let answer = pull_as_node(&superlink.fleet, &flowers, flowers_node, None).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(answer.get_ref().messages_list.is_empty());
    assert_eq!(held_for(&answer), None);

    // Ours asks to wait 20 s: held until its instruction is in, then answered with it at once.
    let started = Instant::now();
    let held = tokio::spawn({
        let (fleet, key) = (superlink.fleet.clone(), ours.clone());
        async move { pull_as_node(&fleet, &key, our_node, Some(20_000)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!held.is_finished(), "nothing to pull yet: held");
    let ins = push_instruction(&superlink.serverappio, &token, run_id, our_node).await;
    let answer = held.await.unwrap();
    let took = started.elapsed();
    let ids = message_ids(answer.get_ref());
    assert_eq!(ids, vec![ins.to_hex()]);
    assert_eq!(held_for(&answer).as_deref(), Some("20000"));
    assert!(
        took < Duration::from_secs(15),
        "answered when the instruction came, not when the hold ended: {took:?}"
    );

    // --fleet-pull-hold 0: nobody is held.
    drop(superlink);
    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(
        BIN.as_ref(),
        None,
        dir.path(),
        &["--isolation", "process", "--fleet-pull-hold", "0"],
    );
    let node = join(&superlink.fleet, &ours).await;
    let started = Instant::now();
    let answer = pull_as_node(&superlink.fleet, &ours, node, Some(20_000)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(held_for(&answer), None);
}

/// Across replicas: our node's pull is held by replica B while the ServerApp pushes its
/// instruction through replica A. B learns of it from PostgreSQL's notification and answers at
/// once with the instruction (its object in), long before the hold ends.
#[cfg(feature = "external")]
#[tokio::test(flavor = "multi_thread")]
async fn an_instruction_through_another_replica_ends_the_held_node_pull() {
    let (_pg, _db, _dir, a, b) = two_replicas(&[]);
    let key = std::sync::Arc::new(NodeSigningKey::generate());
    let node = join(&b.fleet, &key).await;
    let (run_id, token) = running_run(&a.control, &a.serverappio).await;
    let held = tokio::spawn({
        let (fleet, key) = (b.fleet.clone(), key.clone());
        async move { pull_as_node(&fleet, &key, node, Some(20_000)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!held.is_finished(), "nothing to pull yet: held");
    let pushed = Instant::now();
    let ins = push_instruction(&a.serverappio, &token, run_id, node).await;
    let answer = held.await.unwrap();
    let took = pushed.elapsed();
    let ids = message_ids(answer.get_ref());
    assert_eq!(ids, vec![ins.to_hex()], "{}", b.proc.output());
    // B's own look without news comes 10 s into the hold, the hold's end at 20 s.
    assert!(
        took < Duration::from_secs(8),
        "woken by the notification, not by a timer or the hold's end: {took:?}"
    );
}
