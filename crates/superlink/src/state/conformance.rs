//! The conformance suite both state engines pass: Flower's semantics, with a manual clock to
//! cross heartbeat and token deadlines. Each engine's tests call [`run`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use flwr_objects::message::{error_code, MessageMeta, SUPERLINK_NODE_ID};

use super::*;
use crate::clock::ManualClock;

/// Makes a fresh engine on the given clock.
pub type Factory<'a> = &'a dyn Fn(Arc<ManualClock>) -> Arc<dyn LinkState>;

/// Runs every check, each on a fresh engine.
pub fn run(make: Factory<'_>) {
    node_lifecycle(make);
    keys_are_unique_forever(make);
    runs_and_transitions(make);
    tokens_expire_into_failed_runs(make);
    logs_in_order(make);
    instructions_are_delivered_once_in_order(make);
    delivered_instructions_belong_to_their_node(make);
    replies_and_generated_errors(make);
    stopping_a_run_drops_its_messages(make);
}

fn new_node(key: &str, interval: f64) -> NewNode {
    NewNode {
        owner_aid: "<id:none>".into(),
        owner_name: "none".into(),
        public_key: Bytes::from(key.to_owned()),
        heartbeat_interval: interval,
    }
}

fn new_run() -> NewRun {
    NewRun {
        fab_id: "p/app".into(),
        fab_version: "1.0".into(),
        fab_hash: "ab".repeat(32),
        override_config: vec![
            ("num-rounds".into(), ConfigValue::Int(3)),
            ("lr".into(), ConfigValue::Double(0.1)),
        ],
        flwr_aid: "<id:none>".into(),
        federation: "@none/default".into(),
        run_type: RunType::ServerApp,
        federation_config: None,
        context: Bytes::from_static(b"ctx"),
    }
}

/// An online node and a running run.
fn setup(s: &dyn LinkState, key: &str) -> (NodeId, RunId) {
    let node = s.create_node(new_node(key, 0.0)).unwrap();
    assert_eq!(s.activate_node(key.as_bytes(), 30.0).unwrap(), Ok(node));
    let run = s.create_run(new_run()).unwrap();
    assert!(s
        .update_run_status(run, RunStatus::new(Status::Starting))
        .unwrap());
    assert!(s
        .update_run_status(run, RunStatus::new(Status::Running))
        .unwrap());
    (node, run)
}

fn instruction(run: RunId, dst: NodeId, tag: &str, now: f64, ttl: f64) -> MessageMeta {
    MessageMeta {
        run_id: run,
        message_id: format!("{tag:0>64}"),
        src_node_id: SUPERLINK_NODE_ID,
        dst_node_id: dst,
        reply_to_message_id: String::new(),
        group_id: "1".into(),
        ttl,
        message_type: "train".into(),
        created_at: now,
        error: None,
        has_content: true,
    }
}

fn reply_to(ins: &MessageMeta, tag: &str, now: f64) -> MessageMeta {
    MessageMeta {
        run_id: ins.run_id,
        message_id: format!("{tag:f>64}"),
        src_node_id: ins.dst_node_id,
        dst_node_id: SUPERLINK_NODE_ID,
        reply_to_message_id: ins.message_id.clone(),
        group_id: ins.group_id.clone(),
        ttl: ins.created_at + ins.ttl - now,
        message_type: ins.message_type.clone(),
        created_at: now,
        error: None,
        has_content: true,
    }
}

fn node_lifecycle(make: Factory<'_>) {
    let clock = Arc::new(ManualClock::new());
    let s = make(clock.clone());
    let id = s.create_node(new_node("k1", 0.0)).unwrap();
    assert!(id > 1);
    assert_eq!(s.node(id).unwrap().unwrap().status, NodeStatus::Registered);
    assert_eq!(s.node_id_by_public_key(b"k1").unwrap(), Some(id));
    assert_eq!(s.node_id_by_public_key(b"nope").unwrap(), None);
    assert_eq!(
        s.activate_node(b"nope", 30.0).unwrap(),
        Err(NodeRefusal::UnknownKey)
    );
    assert_eq!(s.activate_node(b"k1", 10.0).unwrap(), Ok(id));
    assert_eq!(
        s.activate_node(b"k1", 10.0).unwrap(),
        Err(NodeRefusal::AlreadyOnline(id))
    );
    assert_eq!(s.online_node_ids().unwrap(), vec![id]);
    // Offline once 2 × interval passes without a heartbeat, since that deadline.
    clock.advance(19.5);
    assert_eq!(s.node(id).unwrap().unwrap().status, NodeStatus::Online);
    clock.advance(1.0);
    let n = s.node(id).unwrap().unwrap();
    assert_eq!(n.status, NodeStatus::Offline);
    assert_eq!(n.last_deactivated_at, n.online_until);
    assert!(s.online_node_ids().unwrap().is_empty());
    // A heartbeat brings it back.
    assert!(s.heartbeat(id, 30.0).unwrap());
    assert_eq!(s.node(id).unwrap().unwrap().status, NodeStatus::Online);
    assert_eq!(s.deactivate_node(id).unwrap(), Ok(()));
    assert_eq!(
        s.deactivate_node(id).unwrap(),
        Err(NodeRefusal::NotOnline(id))
    );
    assert_eq!(
        s.activate_node(b"k1", 30.0).unwrap(),
        Ok(id),
        "offline nodes may activate again"
    );
    // Unregistered: gone for authentication, still listed.
    assert_eq!(
        s.unregister_node(id, Some("someone else")).unwrap(),
        Err(NodeRefusal::NotFound(id))
    );
    assert_eq!(
        s.cached_node_id(b"k1").unwrap_or(id),
        id,
        "a remembered key names its node"
    );
    assert_eq!(s.unregister_node(id, Some("<id:none>")).unwrap(), Ok(()));
    assert_eq!(
        s.cached_node_id(b"k1"),
        None,
        "an unregistered key is forgotten"
    );
    assert_eq!(
        s.unregister_node(id, None).unwrap(),
        Err(NodeRefusal::NotFound(id))
    );
    assert_eq!(s.node_id_by_public_key(b"k1").unwrap(), None);
    assert!(!s.heartbeat(id, 30.0).unwrap());
    let listed = s.nodes_of("<id:none>").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, NodeStatus::Unregistered);
    assert!(!s.heartbeat(424242, 30.0).unwrap());
}

fn keys_are_unique_forever(make: Factory<'_>) {
    let s = make(Arc::new(ManualClock::new()));
    let id = s.create_node(new_node("same", 30.0)).unwrap();
    assert!(matches!(
        s.create_node(new_node("same", 30.0)),
        Err(StateError::PublicKeyInUse)
    ));
    s.unregister_node(id, None).unwrap().unwrap();
    assert!(matches!(
        s.create_node(new_node("same", 30.0)),
        Err(StateError::PublicKeyInUse)
    ));
}

fn runs_and_transitions(make: Factory<'_>) {
    let clock = Arc::new(ManualClock::new());
    let s = make(clock.clone());
    let a = s.create_run(new_run()).unwrap();
    clock.advance(1.0);
    let b = s.create_run(new_run()).unwrap();
    assert_eq!(s.pending_run_ids().unwrap(), vec![a, b], "oldest first");
    let run = s.run(a).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::new(Status::Pending));
    assert_eq!(run.override_config, new_run().override_config);
    assert!(run.pending_at.is_some() && run.starting_at.is_none());
    assert_eq!(s.context(a).unwrap().as_deref(), Some(&b"ctx"[..]));
    s.set_context(a, Bytes::from_static(b"ctx2")).unwrap();
    assert_eq!(s.context(a).unwrap().as_deref(), Some(&b"ctx2"[..]));
    assert!(!s
        .update_run_status(a, RunStatus::finished(SubStatus::Completed, ""))
        .unwrap());
    assert!(s
        .update_run_status(a, RunStatus::new(Status::Starting))
        .unwrap());
    assert!(s
        .update_run_status(a, RunStatus::new(Status::Running))
        .unwrap());
    assert!(s
        .update_run_status(a, RunStatus::finished(SubStatus::Completed, ""))
        .unwrap());
    assert!(!s
        .update_run_status(a, RunStatus::finished(SubStatus::Failed, "x"))
        .unwrap());
    let run = s.run(a).unwrap().unwrap();
    assert!(run.starting_at.is_some() && run.running_at.is_some() && run.finished_at.is_some());
    assert!(matches!(
        s.update_run_status(77, RunStatus::new(Status::Starting)),
        Err(StateError::RunNotFound(77))
    ));
    s.add_run_usage(b, 10, 20, 1.5).unwrap();
    s.add_run_usage(b, 1, 2, 0.5).unwrap();
    let run = s.run(b).unwrap().unwrap();
    assert_eq!(
        (run.bytes_sent, run.bytes_recv, run.clientapp_runtime),
        (11, 22, 2.0)
    );
    let mine = s.runs_of("<id:none>").unwrap();
    assert_eq!(
        mine.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        vec![b, a],
        "newest first"
    );
    assert!(s.runs_of("other").unwrap().is_empty());
    assert_eq!(s.pending_run_ids().unwrap(), vec![b]);
}

fn tokens_expire_into_failed_runs(make: Factory<'_>) {
    let clock = Arc::new(ManualClock::new());
    let s = make(clock.clone());
    let run = s.create_run(new_run()).unwrap();
    let token = s.create_token(run).unwrap().unwrap();
    assert_eq!(token.len(), 256);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(s.create_token(run).unwrap(), None, "one token per run");
    assert_eq!(s.run_id_by_token(&token).unwrap(), Some(run));
    assert!(s
        .update_run_status(run, RunStatus::new(Status::Starting))
        .unwrap());
    assert!(s
        .update_run_status(run, RunStatus::new(Status::Running))
        .unwrap());
    clock.advance(20.0);
    assert!(
        s.app_heartbeat(&token).unwrap(),
        "a heartbeat extends the token to now + 60 s"
    );
    let beat = clock.now();
    clock.advance(59.0);
    assert_eq!(s.run(run).unwrap().unwrap().status.status, Status::Running);
    clock.advance(2.0);
    let r = s.run(run).unwrap().unwrap();
    assert_eq!(
        r.status,
        RunStatus::finished(SubStatus::Failed, NO_HEARTBEAT_DETAILS)
    );
    let finished_at = r.finished_at.unwrap();
    assert!(
        (finished_at - (beat + 60.0)).abs() < 1e-3,
        "finished when the token expired"
    );
    assert!(!s.app_heartbeat(&token).unwrap());
    assert_eq!(s.run_id_by_token(&token).unwrap(), None);

    // A deleted token is gone; a new one may be made.
    let other = s.create_run(new_run()).unwrap();
    let t = s.create_token(other).unwrap().unwrap();
    s.delete_token(other).unwrap();
    assert_eq!(s.run_id_by_token(&t).unwrap(), None);
    assert!(s.create_token(other).unwrap().is_some());
}

fn logs_in_order(make: Factory<'_>) {
    let clock = Arc::new(ManualClock::new());
    let s = make(clock.clone());
    let run = s.create_run(new_run()).unwrap();
    assert_eq!(s.logs_after(run, 0.0).unwrap(), (String::new(), 0.0));
    s.add_log(run, "a\n").unwrap();
    s.add_log(run, "b\n").unwrap();
    let (all, latest) = s.logs_after(run, 0.0).unwrap();
    assert_eq!(all, "a\nb\n");
    clock.advance(1.0);
    s.add_log(run, "c\n").unwrap();
    assert_eq!(s.logs_after(run, latest).unwrap().0, "c\n");
    assert!(matches!(
        s.add_log(999, "x"),
        Err(StateError::RunNotFound(999))
    ));
    assert!(matches!(
        s.logs_after(999, 0.0),
        Err(StateError::RunNotFound(999))
    ));
}

fn instructions_are_delivered_once_in_order(make: Factory<'_>) {
    let clock = Arc::new(ManualClock::new());
    let s = make(clock.clone());
    let (node, run) = setup(&*s, "n1");
    let now = clock.now();
    let first = instruction(run, node, "1", now, 600.0);
    let second = instruction(run, node, "2", now, 600.0);
    assert_eq!(
        s.store_instruction(first.clone()).unwrap(),
        Some(first.message_id.clone())
    );
    assert_eq!(
        s.store_instruction(second.clone()).unwrap(),
        Some(second.message_id.clone())
    );
    // Refused: unknown run, source not the SuperLink, unknown or never-activated destination.
    assert_eq!(
        s.store_instruction(instruction(999, node, "3", now, 600.0))
            .unwrap(),
        None
    );
    let mut bad_src = instruction(run, node, "4", now, 600.0);
    bad_src.src_node_id = 5;
    assert_eq!(s.store_instruction(bad_src).unwrap(), None);
    assert_eq!(
        s.store_instruction(instruction(run, 12345, "5", now, 600.0))
            .unwrap(),
        None
    );
    let registered = s.create_node(new_node("n-registered", 0.0)).unwrap();
    assert_eq!(
        s.store_instruction(instruction(run, registered, "6", now, 600.0))
            .unwrap(),
        None
    );

    assert!(
        s.may_have_instruction(node),
        "queued instructions are hinted"
    );
    assert_eq!(s.pull_instruction(node).unwrap(), Some(first));
    assert!(s.may_have_instruction(node));
    assert_eq!(s.pull_instruction(node).unwrap(), Some(second));
    assert_eq!(
        s.pull_instruction(node).unwrap(),
        None,
        "never delivered twice"
    );
    assert_eq!(s.pull_instruction(registered).unwrap(), None);

    // Expired instructions are not delivered.
    let short = instruction(run, node, "7", clock.now(), 5.0);
    s.store_instruction(short).unwrap();
    clock.advance(6.0);
    assert_eq!(s.pull_instruction(node).unwrap(), None);

    // A hint may say "maybe" for nothing, never "no" for something.
    let third = instruction(run, node, "8", clock.now(), 600.0);
    s.store_instruction(third.clone()).unwrap();
    assert!(s.may_have_instruction(node));
    assert_eq!(s.pull_instruction(node).unwrap(), Some(third));
}

fn delivered_instructions_belong_to_their_node(make: Factory<'_>) {
    let clock = Arc::new(ManualClock::new());
    let s = make(clock.clone());
    let (a, run) = setup(&*s, "a");
    let b = s.create_node(new_node("b", 0.0)).unwrap();
    assert_eq!(s.activate_node(b"b", 30.0).unwrap(), Ok(b));
    let now = clock.now();
    let for_a = instruction(run, a, "1", now, 600.0);
    let for_b = instruction(run, b, "2", now, 600.0);
    s.store_instruction(for_a.clone()).unwrap();
    s.store_instruction(for_b.clone()).unwrap();
    assert!(
        s.delivered_instructions(a, run).unwrap().is_empty(),
        "not delivered yet"
    );
    assert_eq!(s.pull_instruction(a).unwrap(), Some(for_a.clone()));
    assert_eq!(
        s.delivered_instructions(a, run).unwrap(),
        vec![for_a.message_id.clone()]
    );
    assert!(s.delivered_instructions(b, run).unwrap().is_empty());
    assert!(s.delivered_instructions(a, run + 1).unwrap().is_empty());
    // Answered and taken: gone.
    s.store_reply(reply_to(&for_a, "r1", clock.now()))
        .unwrap()
        .unwrap();
    s.take_replies(std::slice::from_ref(&for_a.message_id))
        .unwrap();
    assert!(s.delivered_instructions(a, run).unwrap().is_empty());
}

fn replies_and_generated_errors(make: Factory<'_>) {
    let clock = Arc::new(ManualClock::new());
    let s = make(clock.clone());
    let (node, run) = setup(&*s, "n1");
    let now = clock.now();
    let ins = instruction(run, node, "a", now, 600.0);
    s.store_instruction(ins.clone()).unwrap();
    s.pull_instruction(node).unwrap();

    // Nothing yet: omitted, and the instruction stays.
    assert_eq!(
        s.take_replies(std::slice::from_ref(&ins.message_id))
            .unwrap(),
        vec![]
    );

    // Checks against the instruction.
    let mut wrong_node = reply_to(&ins, "r0", now);
    wrong_node.src_node_id = 77;
    assert_eq!(
        s.store_reply(wrong_node).unwrap(),
        Err(ReplyRejected::WrongNode)
    );
    let mut too_long = reply_to(&ins, "r1", now);
    too_long.ttl = 10_000.0;
    assert!(matches!(
        s.store_reply(too_long).unwrap(),
        Err(ReplyRejected::TtlTooLong { .. })
    ));
    let mut wrong_run = reply_to(&ins, "r2", now);
    wrong_run.run_id = run + 1;
    assert_eq!(
        s.store_reply(wrong_run).unwrap(),
        Err(ReplyRejected::WrongRun)
    );
    let mut orphan = reply_to(&ins, "r3", now);
    orphan.reply_to_message_id = "0".repeat(64);
    assert!(matches!(
        s.store_reply(orphan).unwrap(),
        Err(ReplyRejected::NoInstruction(_))
    ));

    let reply = reply_to(&ins, "ok", now);
    assert_eq!(
        s.store_reply(reply.clone()).unwrap(),
        Ok(reply.message_id.clone())
    );
    let got = s
        .take_replies(std::slice::from_ref(&ins.message_id))
        .unwrap();
    assert_eq!(got, vec![PulledReply::Stored(reply)]);
    // Pulled once: now the id is unknown.
    match &s
        .take_replies(std::slice::from_ref(&ins.message_id))
        .unwrap()[..]
    {
        [PulledReply::Generated(m)] => {
            assert_eq!(
                m.error.as_ref().unwrap().code,
                error_code::MESSAGE_UNAVAILABLE
            );
            assert_eq!(
                (m.run_id, m.message_type.as_str(), m.ttl),
                (0, "system", 0.0)
            );
            assert_eq!(m.reply_to_message_id, ins.message_id);
        }
        other => panic!("{other:?}"),
    }

    // NODE_UNAVAILABLE wins over an arrived reply once the node is offline, and both go.
    let ins2 = instruction(run, node, "b", clock.now(), 600.0);
    s.store_instruction(ins2.clone()).unwrap();
    s.pull_instruction(node).unwrap();
    s.store_reply(reply_to(&ins2, "late", clock.now()))
        .unwrap()
        .unwrap();
    s.deactivate_node(node).unwrap().unwrap();
    clock.advance(0.5);
    match &s
        .take_replies(std::slice::from_ref(&ins2.message_id))
        .unwrap()[..]
    {
        [PulledReply::Generated(m)] => {
            assert_eq!(m.error.as_ref().unwrap().code, error_code::NODE_UNAVAILABLE);
            assert_eq!((m.run_id, m.src_node_id, m.dst_node_id), (run, 1, 1));
            assert_eq!(m.group_id, ins2.group_id);
            assert!(
                m.ttl > 590.0 && m.ttl < 600.0,
                "the instruction's remaining life: {}",
                m.ttl
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        s.store_reply(reply_to(&ins2, "again", clock.now()))
            .unwrap()
            .is_err(),
        "the instruction is gone"
    );

    // A reply that expired: REPLY_MESSAGE_UNAVAILABLE.
    s.heartbeat(node, 600.0).unwrap();
    let ins3 = instruction(run, node, "c", clock.now(), 600.0);
    s.store_instruction(ins3.clone()).unwrap();
    let mut short = reply_to(&ins3, "short", clock.now());
    short.ttl = 1.0;
    s.store_reply(short).unwrap().unwrap();
    clock.advance(2.0);
    match &s
        .take_replies(std::slice::from_ref(&ins3.message_id))
        .unwrap()[..]
    {
        [PulledReply::Generated(m)] => assert_eq!(
            m.error.as_ref().unwrap().code,
            error_code::REPLY_MESSAGE_UNAVAILABLE
        ),
        other => panic!("{other:?}"),
    }
}

fn stopping_a_run_drops_its_messages(make: Factory<'_>) {
    let clock = Arc::new(ManualClock::new());
    let s = make(clock.clone());
    let (node, run) = setup(&*s, "n1");
    let ins = instruction(run, node, "z", clock.now(), 600.0);
    s.store_instruction(ins.clone()).unwrap();
    s.delete_run_messages(run).unwrap();
    assert_eq!(s.pull_instruction(node).unwrap(), None);
    match &s
        .take_replies(std::slice::from_ref(&ins.message_id))
        .unwrap()[..]
    {
        [PulledReply::Generated(m)] => assert_eq!(
            m.error.as_ref().unwrap().code,
            error_code::MESSAGE_UNAVAILABLE
        ),
        other => panic!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_engine_conforms() {
        run(&|clock| super::super::in_memory(clock));
    }

    #[test]
    fn sqlite_engine_conforms() {
        run(&|clock| {
            let (state, _objects) =
                super::super::sqlite::open(std::path::Path::new(":memory:"), clock).unwrap();
            state
        });
    }

    #[test]
    fn sqlite_objects_conform() {
        flwr_objects::store::conformance::run(&|| {
            let (_state, objects) = super::super::sqlite::open(
                std::path::Path::new(":memory:"),
                Arc::new(ManualClock::new()),
            )
            .unwrap();
            objects
        });
    }
}
