//! The conformance suite every engine passes: Flower's semantics, with a manual clock to cross
//! heartbeat and token deadlines. [`conformance_tests!`](crate::conformance_tests) turns each
//! check into a test of its own for an engine, so that one failure hides no other.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// Defines one `#[tokio::test]` per check, in modules `link_state` and `object_store`, for the
/// engine that `$make` makes: an async closure from `Arc<ManualClock>` to [`crate::Stores`]
/// (each test gets a fresh one).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@link $make;
            node_lifecycle,
            keys_are_unique_forever,
            runs_and_transitions,
            tokens_expire_into_failed_runs,
            logs_in_order,
            instructions_are_delivered_once_in_order,
            lost_deliveries_are_repeated_until_confirmed,
            delivered_instructions_belong_to_their_node,
            replies_and_generated_errors,
            stopping_a_run_drops_its_messages,
            census_by_status,
            simulation_config_by_federation
        );
        $crate::conformance_tests!(@objects $make;
            preregister_put_get,
            shared_objects_survive,
            run_cleanup,
            trees,
            availability,
            content_bytes
        );
        mod link_state_with_objects {
            #[tokio::test]
            async fn messages_with_objects() {
                let clock = ::std::sync::Arc::new($crate::ManualClock::new());
                let stores = ($make)(clock.clone()).await;
                $crate::conformance::objects::messages_with_objects(
                    &*stores.state,
                    &*stores.objects,
                    &clock,
                )
                .await;
            }
        }
        mod fab_store {
            /// The engine's own FAB store, or the on-disk one the SuperLink gives the engines
            /// that have none (in a fresh directory, removed afterwards).
            #[tokio::test]
            async fn fabs_by_hash() {
                let clock = ::std::sync::Arc::new($crate::ManualClock::new());
                let stores = ($make)(clock).await;
                match stores.fabs {
                    Some(fabs) => $crate::conformance::fabs::fabs_by_hash(&*fabs).await,
                    None => {
                        let dir = ::tempfile::tempdir().unwrap();
                        let fabs = $crate::fabs::FileFabs::new(dir.path());
                        $crate::conformance::fabs::fabs_by_hash(&fabs).await;
                    }
                }
            }
        }
    };
    (@link $make:expr; $($name:ident),*) => {
        mod link_state {
            $(
                #[tokio::test]
                async fn $name() {
                    let clock = ::std::sync::Arc::new($crate::ManualClock::new());
                    let stores = ($make)(clock.clone()).await;
                    $crate::conformance::link::$name(&*stores.state, &clock).await;
                }
            )*
        }
    };
    (@objects $make:expr; $($name:ident),*) => {
        mod object_store {
            $(
                #[tokio::test]
                async fn $name() {
                    let clock = ::std::sync::Arc::new($crate::ManualClock::new());
                    let stores = ($make)(clock).await;
                    $crate::conformance::objects::$name(&*stores.objects).await;
                }
            )*
        }
    };
}

/// The checks of [`crate::LinkState`].
pub mod link {
    use bytes::Bytes;
    use flwr_objects::message::{error_code, MessageMeta, SUPERLINK_NODE_ID};

    use crate::clock::{Clock, ManualClock};
    use crate::*;

    /// A node of the default account with this key.
    pub fn new_node(key: &str, interval: f64) -> NewNode {
        NewNode {
            owner_aid: "<id:none>".into(),
            owner_name: "none".into(),
            public_key: Bytes::from(key.to_owned()),
            heartbeat_interval: interval,
        }
    }

    /// A run of the default account.
    pub fn new_run() -> NewRun {
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
    pub async fn setup(s: &dyn LinkState, key: &str) -> (NodeId, RunId) {
        let node = s.create_node(new_node(key, 0.0)).await.unwrap();
        assert_eq!(
            s.activate_node(key.as_bytes(), 30.0).await.unwrap(),
            Ok(node)
        );
        let run = s.create_run(new_run()).await.unwrap();
        assert!(s
            .update_run_status(run, RunStatus::new(Status::Starting))
            .await
            .unwrap());
        assert!(s
            .update_run_status(run, RunStatus::new(Status::Running))
            .await
            .unwrap());
        (node, run)
    }

    /// Nodes and runs counted by status; an online node whose heartbeat is late counts as
    /// offline.
    pub async fn census_by_status(s: &dyn LinkState, clock: &ManualClock) {
        assert_eq!(s.census().await.unwrap(), Census::default());
        let late = online_node(s, "late").await;
        clock.advance(1000.0);
        online_node(s, "online").await;
        s.create_node(new_node("registered", 0.0)).await.unwrap();
        let gone = s.create_node(new_node("gone", 0.0)).await.unwrap();
        assert_eq!(s.unregister_node(gone, None).await.unwrap(), Ok(()));
        s.create_run(new_run()).await.unwrap();
        let done = s.create_run(new_run()).await.unwrap();
        for status in [
            RunStatus::new(Status::Starting),
            RunStatus::new(Status::Running),
            RunStatus::finished(SubStatus::Completed, ""),
        ] {
            assert!(s.update_run_status(done, status).await.unwrap());
        }
        let census = s.census().await.unwrap();
        let nodes: Vec<(&str, u64)> = census.nodes.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            nodes,
            vec![
                ("offline", 1),
                ("online", 1),
                ("registered", 1),
                ("unregistered", 1)
            ],
            "node {late} is late"
        );
        let runs: Vec<(&str, &str, u64)> = census
            .runs
            .iter()
            .map(|((a, b), n)| (a.as_str(), b.as_str(), *n))
            .collect();
        assert_eq!(runs, vec![("finished", "completed", 1), ("pending", "", 1)]);
    }

    /// Another online node, with key `key`.
    pub async fn online_node(s: &dyn LinkState, key: &str) -> NodeId {
        let node = s.create_node(new_node(key, 0.0)).await.unwrap();
        assert_eq!(
            s.activate_node(key.as_bytes(), 30.0).await.unwrap(),
            Ok(node)
        );
        node
    }

    /// `message`, delivered to `node` and not confirmed, is delivered again once
    /// [`REDELIVER_AFTER`] has passed (`why` says so on failure), and never again once confirmed.
    pub async fn repeated_until_confirmed(
        s: &dyn LinkState,
        clock: &ManualClock,
        node: NodeId,
        message: &MessageMeta,
        why: &str,
    ) {
        clock.advance(REDELIVER_AFTER);
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            Some(message.clone()),
            "{why}"
        );
        s.confirm_instruction(node, &message.message_id)
            .await
            .unwrap();
        clock.advance(REDELIVER_AFTER);
        assert_eq!(s.pull_instruction(node).await.unwrap(), None);
    }

    /// Stores these instructions, each accepted.
    pub async fn store_all(s: &dyn LinkState, messages: &[&MessageMeta]) {
        for m in messages {
            assert_eq!(
                s.store_instruction((*m).clone()).await.unwrap(),
                Some(m.message_id.clone())
            );
        }
    }

    /// An instruction for `dst` in `run`, its id made of `tag`.
    pub fn instruction(run: RunId, dst: NodeId, tag: &str, now: f64, ttl: f64) -> MessageMeta {
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

    pub fn reply_to(ins: &MessageMeta, tag: &str, now: f64) -> MessageMeta {
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

    pub async fn node_lifecycle(s: &dyn LinkState, clock: &ManualClock) {
        let id = s.create_node(new_node("k1", 0.0)).await.unwrap();
        assert!(id > 1);
        assert_eq!(
            s.node(id).await.unwrap().unwrap().status,
            NodeStatus::Registered
        );
        assert_eq!(s.node_id_by_public_key(b"k1").await.unwrap(), Some(id));
        assert_eq!(s.node_id_by_public_key(b"nope").await.unwrap(), None);
        assert_eq!(
            s.activate_node(b"nope", 30.0).await.unwrap(),
            Err(NodeRefusal::UnknownKey)
        );
        assert_eq!(s.activate_node(b"k1", 10.0).await.unwrap(), Ok(id));
        assert_eq!(
            s.activate_node(b"k1", 10.0).await.unwrap(),
            Err(NodeRefusal::AlreadyOnline(id))
        );
        assert_eq!(s.online_node_ids().await.unwrap(), vec![id]);
        // Offline once 2 × interval passes without a heartbeat, since that deadline.
        clock.advance(19.5);
        assert_eq!(
            s.node(id).await.unwrap().unwrap().status,
            NodeStatus::Online
        );
        clock.advance(1.0);
        let n = s.node(id).await.unwrap().unwrap();
        assert_eq!(n.status, NodeStatus::Offline);
        assert_eq!(n.last_deactivated_at, n.online_until);
        assert!(s.online_node_ids().await.unwrap().is_empty());
        // A heartbeat brings it back.
        assert!(s.heartbeat(id, 30.0).await.unwrap());
        assert_eq!(
            s.node(id).await.unwrap().unwrap().status,
            NodeStatus::Online
        );
        assert_eq!(s.deactivate_node(id).await.unwrap(), Ok(()));
        assert_eq!(
            s.deactivate_node(id).await.unwrap(),
            Err(NodeRefusal::NotOnline(id))
        );
        assert_eq!(
            s.activate_node(b"k1", 30.0).await.unwrap(),
            Ok(id),
            "offline nodes may activate again"
        );
        // Unregistered: gone for authentication, still listed.
        assert_eq!(
            s.unregister_node(id, Some("someone else")).await.unwrap(),
            Err(NodeRefusal::NotFound(id))
        );
        assert_eq!(
            s.cached_node_id(b"k1").unwrap_or(id),
            id,
            "a remembered key names its node"
        );
        assert_eq!(
            s.unregister_node(id, Some("<id:none>")).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            s.cached_node_id(b"k1"),
            None,
            "an unregistered key is forgotten"
        );
        assert_eq!(
            s.unregister_node(id, None).await.unwrap(),
            Err(NodeRefusal::NotFound(id))
        );
        assert_eq!(s.node_id_by_public_key(b"k1").await.unwrap(), None);
        assert!(!s.heartbeat(id, 30.0).await.unwrap());
        let listed = s.nodes_of("<id:none>").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].status, NodeStatus::Unregistered);
        assert!(!s.heartbeat(424242, 30.0).await.unwrap());
    }

    pub async fn keys_are_unique_forever(s: &dyn LinkState, _clock: &ManualClock) {
        let id = s.create_node(new_node("same", 30.0)).await.unwrap();
        assert!(matches!(
            s.create_node(new_node("same", 30.0)).await,
            Err(StateError::PublicKeyInUse)
        ));
        s.unregister_node(id, None).await.unwrap().unwrap();
        assert!(matches!(
            s.create_node(new_node("same", 30.0)).await,
            Err(StateError::PublicKeyInUse)
        ));
    }

    pub async fn runs_and_transitions(s: &dyn LinkState, clock: &ManualClock) {
        let a = s.create_run(new_run()).await.unwrap();
        clock.advance(1.0);
        let b = s.create_run(new_run()).await.unwrap();
        assert_eq!(
            s.pending_run_ids().await.unwrap(),
            vec![a, b],
            "oldest first"
        );
        let run = s.run(a).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::new(Status::Pending));
        assert_eq!(run.override_config, new_run().override_config);
        assert!(run.pending_at.is_some() && run.starting_at.is_none());
        assert_eq!(s.context(a).await.unwrap().as_deref(), Some(&b"ctx"[..]));
        s.set_context(a, Bytes::from_static(b"ctx2")).await.unwrap();
        assert_eq!(s.context(a).await.unwrap().as_deref(), Some(&b"ctx2"[..]));
        assert!(!s
            .update_run_status(a, RunStatus::finished(SubStatus::Completed, ""))
            .await
            .unwrap());
        assert!(s
            .update_run_status(a, RunStatus::new(Status::Starting))
            .await
            .unwrap());
        assert!(s
            .update_run_status(a, RunStatus::new(Status::Running))
            .await
            .unwrap());
        assert!(s
            .update_run_status(a, RunStatus::finished(SubStatus::Completed, ""))
            .await
            .unwrap());
        assert!(!s
            .update_run_status(a, RunStatus::finished(SubStatus::Failed, "x"))
            .await
            .unwrap());
        let run = s.run(a).await.unwrap().unwrap();
        assert!(run.starting_at.is_some() && run.running_at.is_some() && run.finished_at.is_some());
        assert!(matches!(
            s.update_run_status(77, RunStatus::new(Status::Starting))
                .await,
            Err(StateError::RunNotFound(77))
        ));
        s.add_run_usage(b, 10, 20, 1.5).await.unwrap();
        s.add_run_usage(b, 1, 2, 0.5).await.unwrap();
        let run = s.run(b).await.unwrap().unwrap();
        assert_eq!(
            (run.bytes_sent, run.bytes_recv, run.clientapp_runtime),
            (11, 22, 2.0)
        );
        let mine = s.runs_of("<id:none>").await.unwrap();
        assert_eq!(
            mine.iter().map(|r| r.run_id).collect::<Vec<_>>(),
            vec![b, a],
            "newest first"
        );
        assert!(s.runs_of("other").await.unwrap().is_empty());
        assert_eq!(s.pending_run_ids().await.unwrap(), vec![b]);
    }

    pub async fn tokens_expire_into_failed_runs(s: &dyn LinkState, clock: &ManualClock) {
        assert_eq!(s.claim_run(404, None).await.unwrap(), None, "no such run");
        let run = s.create_run(new_run()).await.unwrap();
        let token = s.claim_run(run, None).await.unwrap().unwrap();
        assert_eq!(token.len(), 256);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let claimed = s.run(run).await.unwrap().unwrap();
        assert_eq!(claimed.status, RunStatus::new(Status::Starting), "claimed");
        assert_eq!(claimed.starting_at, Some(clock.now()));
        assert_eq!(
            s.claim_run(run, None).await.unwrap(),
            None,
            "one token per run"
        );
        assert_eq!(s.run_id_by_token(&token).await.unwrap(), Some(run));
        assert!(s
            .update_run_status(run, RunStatus::new(Status::Running))
            .await
            .unwrap());
        clock.advance(20.0);
        assert!(
            s.app_heartbeat(&token).await.unwrap(),
            "a heartbeat extends the token to now + 60 s"
        );
        let beat = clock.now();
        clock.advance(59.0);
        assert_eq!(
            s.run(run).await.unwrap().unwrap().status.status,
            Status::Running
        );
        clock.advance(2.0);
        let r = s.run(run).await.unwrap().unwrap();
        assert_eq!(
            r.status,
            RunStatus::finished(SubStatus::Failed, NO_HEARTBEAT_DETAILS)
        );
        let finished_at = r.finished_at.unwrap();
        assert!(
            (finished_at - (beat + 60.0)).abs() < 1e-3,
            "finished when the token expired"
        );
        assert!(!s.app_heartbeat(&token).await.unwrap());
        assert_eq!(s.run_id_by_token(&token).await.unwrap(), None);

        // A deleted token is gone; a run that is no longer pending gets no other.
        let other = s.create_run(new_run()).await.unwrap();
        let t = s.claim_run(other, None).await.unwrap().unwrap();
        s.delete_token(other).await.unwrap();
        assert_eq!(s.run_id_by_token(&t).await.unwrap(), None);
        assert_eq!(s.claim_run(other, None).await.unwrap(), None, "starting");
        let stopped = s.create_run(new_run()).await.unwrap();
        assert!(s
            .update_run_status(stopped, RunStatus::finished(SubStatus::Stopped, ""))
            .await
            .unwrap());
        assert_eq!(s.claim_run(stopped, None).await.unwrap(), None, "finished");

        // A token of a ServerApp that a SuperLink started as its child: the reason names it.
        let launched = s.create_run(new_run()).await.unwrap();
        s.claim_run(launched, Some("host-a (pid 7)"))
            .await
            .unwrap()
            .unwrap();
        clock.advance(heartbeat::DEFAULT_INTERVAL + 1.0);
        let details = s.run(launched).await.unwrap().unwrap().status.details;
        assert!(
            details.starts_with(NO_HEARTBEAT_DETAILS)
                && details.contains("child process of SuperLink host-a (pid 7)")
                && details.contains("--isolation process"),
            "{details}"
        );
    }

    pub async fn logs_in_order(s: &dyn LinkState, clock: &ManualClock) {
        let run = s.create_run(new_run()).await.unwrap();
        assert_eq!(s.logs_after(run, 0.0).await.unwrap(), (String::new(), 0.0));
        s.add_log(run, "a\n").await.unwrap();
        s.add_log(run, "b\n").await.unwrap();
        let (all, latest) = s.logs_after(run, 0.0).await.unwrap();
        assert_eq!(all, "a\nb\n");
        clock.advance(1.0);
        s.add_log(run, "c\n").await.unwrap();
        let (c, latest) = s.logs_after(run, latest).await.unwrap();
        assert_eq!(c, "c\n");
        // At the same instant: a stream that asks from just past what it sent still gets it.
        s.add_log(run, "d\n").await.unwrap();
        let (d, latest) = s.logs_after(run, latest + 1e-6).await.unwrap();
        assert_eq!(d, "d\n");
        // And when the clock moved by no more than that.
        clock.advance(1e-6);
        s.add_log(run, "e\n").await.unwrap();
        assert_eq!(s.logs_after(run, latest + 1e-6).await.unwrap().0, "e\n");
        assert!(matches!(
            s.add_log(999, "x").await,
            Err(StateError::RunNotFound(999))
        ));
        assert!(matches!(
            s.logs_after(999, 0.0).await,
            Err(StateError::RunNotFound(999))
        ));
    }

    pub async fn simulation_config_by_federation(s: &dyn LinkState, _clock: &ManualClock) {
        assert_eq!(s.simulation_config("@none/default").await.unwrap(), None);
        s.set_simulation_config("@none/default", Bytes::from_static(b"first"))
            .await
            .unwrap();
        s.set_simulation_config("other", Bytes::from_static(b""))
            .await
            .unwrap();
        s.set_simulation_config("@none/default", Bytes::from_static(b"second"))
            .await
            .unwrap();
        assert_eq!(
            s.simulation_config("@none/default")
                .await
                .unwrap()
                .as_deref(),
            Some(&b"second"[..])
        );
        // Empty settings (every field unset) are settings, not their absence.
        assert_eq!(
            s.simulation_config("other").await.unwrap().as_deref(),
            Some(&b""[..])
        );
        assert_eq!(s.simulation_config("none").await.unwrap(), None);
    }

    pub async fn instructions_are_delivered_once_in_order(s: &dyn LinkState, clock: &ManualClock) {
        let (node, run) = setup(s, "n1").await;
        let now = clock.now();
        let first = instruction(run, node, "1", now, 600.0);
        let second = instruction(run, node, "2", now, 600.0);
        assert_eq!(
            s.store_instruction(first.clone()).await.unwrap(),
            Some(first.message_id.clone())
        );
        assert_eq!(
            s.store_instruction(second.clone()).await.unwrap(),
            Some(second.message_id.clone())
        );
        // Refused: unknown run, source not the SuperLink, unknown or never-activated destination.
        assert_eq!(
            s.store_instruction(instruction(999, node, "3", now, 600.0))
                .await
                .unwrap(),
            None
        );
        let mut bad_src = instruction(run, node, "4", now, 600.0);
        bad_src.src_node_id = 5;
        assert_eq!(s.store_instruction(bad_src).await.unwrap(), None);
        assert_eq!(
            s.store_instruction(instruction(run, 12345, "5", now, 600.0))
                .await
                .unwrap(),
            None
        );
        let registered = s.create_node(new_node("n-registered", 0.0)).await.unwrap();
        assert_eq!(
            s.store_instruction(instruction(run, registered, "6", now, 600.0))
                .await
                .unwrap(),
            None
        );

        assert!(
            s.may_have_instruction(node),
            "queued instructions are hinted"
        );
        assert_eq!(s.pull_instruction(node).await.unwrap(), Some(first.clone()));
        assert!(s.may_have_instruction(node));
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            Some(second.clone())
        );
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            None,
            "never delivered twice"
        );
        assert_eq!(s.pull_instruction(registered).await.unwrap(), None);
        s.confirm_instruction(node, &first.message_id)
            .await
            .unwrap();
        s.confirm_instruction(node, &second.message_id)
            .await
            .unwrap();

        // Expired instructions are not delivered.
        let short = instruction(run, node, "7", clock.now(), 5.0);
        s.store_instruction(short).await.unwrap();
        clock.advance(6.0);
        assert_eq!(s.pull_instruction(node).await.unwrap(), None);

        // A hint may say "maybe" for nothing, never "no" for something.
        let third = instruction(run, node, "8", clock.now(), 600.0);
        s.store_instruction(third.clone()).await.unwrap();
        assert!(s.may_have_instruction(node));
        assert_eq!(s.pull_instruction(node).await.unwrap(), Some(third));
    }

    pub async fn lost_deliveries_are_repeated_until_confirmed(
        s: &dyn LinkState,
        clock: &ManualClock,
    ) {
        let (node, run) = setup(s, "n1").await;
        let other = online_node(s, "n2").await;
        let now = clock.now();
        let first = instruction(run, node, "1", now, 600.0);
        let second = instruction(run, node, "2", now, 600.0);
        store_all(s, &[&first, &second]).await;
        assert_eq!(s.pull_instruction(node).await.unwrap(), Some(first.clone()));
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            Some(second.clone())
        );
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            None,
            "not repeated while its answer may still be on its way"
        );
        assert!(
            s.may_have_instruction(node),
            "a node with unconfirmed deliveries keeps its hint"
        );

        // The second is confirmed; a confirm by another node changes nothing for the first.
        s.confirm_instruction(node, &second.message_id)
            .await
            .unwrap();
        s.confirm_instruction(other, &first.message_id)
            .await
            .unwrap();
        clock.advance(REDELIVER_AFTER);
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            Some(first.clone()),
            "an unconfirmed delivery is repeated"
        );
        assert_eq!(s.pull_instruction(other).await.unwrap(), None);
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            None,
            "a repeat waits as long as a first delivery"
        );
        repeated_until_confirmed(s, clock, node, &first, "repeated until confirmed").await;
        let mut kept = s.delivered_instructions(node, run).await.unwrap();
        kept.sort();
        assert_eq!(
            kept,
            vec![first.message_id.clone(), second.message_id.clone()],
            "confirmed instructions stay until their replies are taken"
        );

        // An answered instruction is not repeated, nor an expired one.
        let answered = instruction(run, node, "3", clock.now(), 600.0);
        s.store_instruction(answered.clone()).await.unwrap();
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            Some(answered.clone())
        );
        s.store_reply(reply_to(&answered, "r3", clock.now()))
            .await
            .unwrap()
            .unwrap();
        let short = instruction(run, node, "4", clock.now(), 2.0 * REDELIVER_AFTER);
        s.store_instruction(short.clone()).await.unwrap();
        assert_eq!(s.pull_instruction(node).await.unwrap(), Some(short));
        clock.advance(2.0 * REDELIVER_AFTER);
        assert_eq!(s.pull_instruction(node).await.unwrap(), None);

        // A new instruction goes before a repeat.
        let lost = instruction(run, node, "5", clock.now(), 600.0);
        let fresh = instruction(run, node, "6", clock.now(), 600.0);
        s.store_instruction(lost.clone()).await.unwrap();
        assert_eq!(s.pull_instruction(node).await.unwrap(), Some(lost.clone()));
        clock.advance(REDELIVER_AFTER);
        s.store_instruction(fresh.clone()).await.unwrap();
        assert_eq!(s.pull_instruction(node).await.unwrap(), Some(fresh));
        assert_eq!(s.pull_instruction(node).await.unwrap(), Some(lost));
    }

    pub async fn delivered_instructions_belong_to_their_node(
        s: &dyn LinkState,
        clock: &ManualClock,
    ) {
        let (a, run) = setup(s, "a").await;
        let b = online_node(s, "b").await;
        let now = clock.now();
        let for_a = instruction(run, a, "1", now, 600.0);
        let for_b = instruction(run, b, "2", now, 600.0);
        store_all(s, &[&for_a, &for_b]).await;
        assert!(
            s.delivered_instructions(a, run).await.unwrap().is_empty(),
            "not delivered yet"
        );
        assert_eq!(s.pull_instruction(a).await.unwrap(), Some(for_a.clone()));
        assert_eq!(
            s.delivered_instructions(a, run).await.unwrap(),
            vec![for_a.message_id.clone()]
        );
        assert!(s.delivered_instructions(b, run).await.unwrap().is_empty());
        assert!(s
            .delivered_instructions(a, run + 1)
            .await
            .unwrap()
            .is_empty());
        // Answered, taken and confirmed: gone.
        let reply = reply_to(&for_a, "r1", clock.now());
        s.store_reply(reply.clone()).await.unwrap().unwrap();
        s.take_replies(std::slice::from_ref(&for_a.message_id))
            .await
            .unwrap();
        s.confirm_reply(run, &reply.message_id).await.unwrap();
        assert!(s.delivered_instructions(a, run).await.unwrap().is_empty());
    }

    pub async fn replies_and_generated_errors(s: &dyn LinkState, clock: &ManualClock) {
        let (node, run) = setup(s, "n1").await;
        let now = clock.now();
        let ins = instruction(run, node, "a", now, 600.0);
        s.store_instruction(ins.clone()).await.unwrap();
        s.pull_instruction(node).await.unwrap();

        // Nothing yet: omitted, and the instruction stays.
        assert_eq!(
            s.take_replies(std::slice::from_ref(&ins.message_id))
                .await
                .unwrap(),
            vec![]
        );

        // Checks against the instruction.
        let mut wrong_node = reply_to(&ins, "r0", now);
        wrong_node.src_node_id = 77;
        assert_eq!(
            s.store_reply(wrong_node).await.unwrap(),
            Err(ReplyRejected::WrongNode)
        );
        let mut too_long = reply_to(&ins, "r1", now);
        too_long.ttl = 10_000.0;
        assert!(matches!(
            s.store_reply(too_long).await.unwrap(),
            Err(ReplyRejected::TtlTooLong { .. })
        ));
        let mut wrong_run = reply_to(&ins, "r2", now);
        wrong_run.run_id = run + 1;
        assert_eq!(
            s.store_reply(wrong_run).await.unwrap(),
            Err(ReplyRejected::WrongRun)
        );
        let mut orphan = reply_to(&ins, "r3", now);
        orphan.reply_to_message_id = "0".repeat(64);
        assert!(matches!(
            s.store_reply(orphan).await.unwrap(),
            Err(ReplyRejected::NoInstruction(_))
        ));

        let reply = reply_to(&ins, "ok", now);
        assert_eq!(
            s.store_reply(reply.clone()).await.unwrap(),
            Ok(reply.message_id.clone())
        );
        let got = s
            .take_replies(std::slice::from_ref(&ins.message_id))
            .await
            .unwrap();
        assert_eq!(got, vec![PulledReply::Stored(reply.clone())]);
        // Taken but not confirmed: asked for again (the answer was lost), it comes again. A
        // confirm of another run, or of an id that is no taken reply, changes nothing.
        s.confirm_reply(run + 1, &reply.message_id).await.unwrap();
        s.confirm_reply(run, &ins.message_id).await.unwrap();
        assert_eq!(
            s.take_replies(std::slice::from_ref(&ins.message_id))
                .await
                .unwrap(),
            vec![PulledReply::Stored(reply.clone())]
        );
        // Confirmed: now the id is unknown.
        s.confirm_reply(run, &reply.message_id).await.unwrap();
        match &s
            .take_replies(std::slice::from_ref(&ins.message_id))
            .await
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
        s.store_instruction(ins2.clone()).await.unwrap();
        s.pull_instruction(node).await.unwrap();
        s.store_reply(reply_to(&ins2, "late", clock.now()))
            .await
            .unwrap()
            .unwrap();
        s.deactivate_node(node).await.unwrap().unwrap();
        clock.advance(0.5);
        match &s
            .take_replies(std::slice::from_ref(&ins2.message_id))
            .await
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
                .await
                .unwrap()
                .is_err(),
            "the instruction is gone"
        );

        // A reply that expired: REPLY_MESSAGE_UNAVAILABLE.
        s.heartbeat(node, 600.0).await.unwrap();
        let ins3 = instruction(run, node, "c", clock.now(), 600.0);
        s.store_instruction(ins3.clone()).await.unwrap();
        let mut short = reply_to(&ins3, "short", clock.now());
        short.ttl = 1.0;
        s.store_reply(short).await.unwrap().unwrap();
        clock.advance(2.0);
        match &s
            .take_replies(std::slice::from_ref(&ins3.message_id))
            .await
            .unwrap()[..]
        {
            [PulledReply::Generated(m)] => assert_eq!(
                m.error.as_ref().unwrap().code,
                error_code::REPLY_MESSAGE_UNAVAILABLE
            ),
            other => panic!("{other:?}"),
        }
    }

    pub async fn stopping_a_run_drops_its_messages(s: &dyn LinkState, clock: &ManualClock) {
        let (node, run) = setup(s, "n1").await;
        let ins = instruction(run, node, "z", clock.now(), 600.0);
        s.store_instruction(ins.clone()).await.unwrap();
        s.delete_run_messages(run).await.unwrap();
        assert_eq!(s.pull_instruction(node).await.unwrap(), None);
        match &s
            .take_replies(std::slice::from_ref(&ins.message_id))
            .await
            .unwrap()[..]
        {
            [PulledReply::Generated(m)] => assert_eq!(
                m.error.as_ref().unwrap().code,
                error_code::MESSAGE_UNAVAILABLE
            ),
            other => panic!("{other:?}"),
        }
    }
}

/// The checks of [`crate::ObjectStore`].
pub mod objects {
    use bytes::Bytes;
    use flwr_objects::content::{serialize, ObjectType};
    use flwr_objects::{ObjectId, ObjectTree};

    use super::link;
    use crate::{Clock, LinkState, ManualClock, PulledReply, ReplyRejected};
    use crate::{Lookup, ObjectStore};

    fn obj(t: ObjectType, children: &[ObjectId], body: &[u8]) -> (ObjectId, Bytes) {
        let b = serialize(t, children, body);
        (ObjectId::of(&b), Bytes::from(b))
    }

    /// A message with a RecordDict holding two records that share one Array.
    struct Fixture {
        chunk: (ObjectId, Bytes),
        array: (ObjectId, Bytes),
        rec: (ObjectId, Bytes),
        cfg: (ObjectId, Bytes),
        dict: (ObjectId, Bytes),
        msg: (ObjectId, Bytes),
    }

    fn fixture(tag: &[u8]) -> Fixture {
        let chunk = obj(ObjectType::ArrayChunk, &[], b"\x93NUMPY data");
        let array = obj(ObjectType::Array, &[chunk.0], b"{\"arraychunk_ids\": [0]}");
        let rec = obj(ObjectType::ArrayRecord, &[array.0], b"{\"w\": \"...\"}");
        let cfg = obj(ObjectType::ConfigRecord, &[], tag);
        let dict = obj(ObjectType::RecordDict, &[rec.0, cfg.0], b"{}");
        let msg = obj(ObjectType::Message, &[dict.0], tag);
        Fixture {
            chunk,
            array,
            rec,
            cfg,
            dict,
            msg,
        }
    }

    fn tree(f: &Fixture) -> ObjectTree {
        ObjectTree {
            id: f.msg.0,
            children: vec![ObjectTree {
                id: f.dict.0,
                children: vec![
                    ObjectTree {
                        id: f.rec.0,
                        children: vec![ObjectTree {
                            id: f.array.0,
                            children: vec![ObjectTree::leaf(f.chunk.0)],
                        }],
                    },
                    ObjectTree::leaf(f.cfg.0),
                ],
            }],
        }
    }

    async fn push_all(s: &dyn ObjectStore, f: &Fixture) {
        for (id, b) in [&f.chunk, &f.array, &f.rec, &f.cfg, &f.dict, &f.msg] {
            assert!(s.put(id, b.clone()).await.unwrap());
        }
    }

    /// PushMessages in one step: an instruction or a reply stored with its tree pre-registered;
    /// a reply that fails the caller's checks (`store: false`) or its instruction's still gets
    /// its tree pre-registered, as Flower does.
    pub async fn messages_with_objects(
        s: &dyn LinkState,
        o: &dyn ObjectStore,
        clock: &ManualClock,
    ) {
        let (node, run) = link::setup(s, "n1").await;
        let f = fixture(b"ins");
        let t = tree(&f);
        let all: Vec<ObjectId> = t.post_order().iter().map(|n| n.id).collect();
        let mut ins = link::instruction(run, node, "", clock.now(), 600.0);
        ins.message_id = f.msg.0.to_hex();
        let (stored, to_push) = s
            .store_instruction_with_objects(o, ins.clone(), &t)
            .await
            .unwrap();
        assert_eq!(stored, Some(ins.message_id.clone()));
        assert_eq!(to_push, all, "every object, children first");
        assert_eq!(o.get(&f.msg.0).await.unwrap(), Lookup::Pending);
        assert_eq!(s.pull_instruction(node).await.unwrap(), Some(ins.clone()));
        // Not the SuperLink's: not stored, the objects registered all the same.
        let g = fixture(b"stray");
        let mut stray = link::instruction(run, node, "", clock.now(), 600.0);
        stray.message_id = g.msg.0.to_hex();
        stray.src_node_id = node;
        let (stored, to_push) = s
            .store_instruction_with_objects(o, stray, &tree(&g))
            .await
            .unwrap();
        assert_eq!((stored, to_push.len()), (None, 6));

        let r = fixture(b"reply");
        let mut reply = link::reply_to(&ins, "", clock.now());
        reply.message_id = r.msg.0.to_hex();
        let trees = [tree(&r), tree(&r)];
        let (outcome, to_push) = s
            .store_reply_with_objects(o, reply.clone(), &trees, false)
            .await
            .unwrap();
        assert_eq!(outcome, None, "refused by the caller: not stored");
        assert_eq!(to_push.len(), 6, "each object once");
        let (outcome, to_push) = s
            .store_reply_with_objects(o, reply.clone(), &trees, true)
            .await
            .unwrap();
        assert_eq!(outcome, Some(Ok(reply.message_id.clone())));
        assert_eq!(to_push.len(), 6, "still to push");
        let mut orphan = reply.clone();
        orphan.reply_to_message_id = "0".repeat(64);
        let (outcome, _) = s
            .store_reply_with_objects(o, orphan, &trees, true)
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            Some(Err(ReplyRejected::NoInstruction(_)))
        ));
        let taken = s
            .take_replies(std::slice::from_ref(&ins.message_id))
            .await
            .unwrap();
        assert_eq!(taken, vec![PulledReply::Stored(reply)]);
    }

    pub async fn preregister_put_get(s: &dyn ObjectStore) {
        let f = fixture(b"one");
        let t = tree(&f);
        let ids: Vec<ObjectId> = t.post_order().iter().map(|n| n.id).collect();
        assert_eq!(
            s.preregister(1, &t).await.unwrap(),
            ids,
            "everything is new, in post-order"
        );
        assert_eq!(s.get(&f.chunk.0).await.unwrap(), Lookup::Pending);
        assert_eq!(
            s.get(&ObjectId::of(b"never")).await.unwrap(),
            Lookup::Unknown
        );
        assert!(
            !s.put(&ObjectId::of(b"never"), Bytes::from_static(b"never"))
                .await
                .unwrap(),
            "not pre-registered"
        );
        assert!(s.put(&f.chunk.0, f.chunk.1.clone()).await.unwrap());
        assert_eq!(
            s.get(&f.chunk.0).await.unwrap(),
            Lookup::Available(f.chunk.1.clone())
        );
        assert!(
            s.put(&f.chunk.0, f.chunk.1.clone()).await.unwrap(),
            "a second put is a no-op"
        );
        // Pre-registering again reports only what is still missing.
        let again = s.preregister(1, &t).await.unwrap();
        assert!(!again.contains(&f.chunk.0) && again.len() == 5, "{again:?}");
        push_all(s, &f).await;
        assert_eq!(
            s.preregister(2, &t).await.unwrap(),
            Vec::<ObjectId>::new(),
            "available objects are not asked for"
        );
        assert_eq!(s.len().await.unwrap(), 6);
    }

    /// `content_bytes` counts the contents pushed, not the objects only pre-registered.
    pub async fn content_bytes(s: &dyn ObjectStore) {
        assert_eq!(s.content_bytes().await.unwrap(), 0);
        let f = fixture(b"bytes");
        s.preregister(1, &tree(&f)).await.unwrap();
        assert_eq!(s.content_bytes().await.unwrap(), 0);
        assert!(s.put(&f.chunk.0, f.chunk.1.clone()).await.unwrap());
        assert_eq!(s.content_bytes().await.unwrap(), f.chunk.1.len() as u64);
        push_all(s, &f).await;
        let all: usize = [&f.chunk, &f.array, &f.rec, &f.cfg, &f.dict, &f.msg]
            .iter()
            .map(|(_, b)| b.len())
            .sum();
        assert_eq!(s.content_bytes().await.unwrap(), all as u64);
    }

    /// `unavailable` names what is pending or unknown, in the order asked, and reads nothing.
    pub async fn availability(s: &dyn ObjectStore) {
        let f = fixture(b"avail");
        let t = tree(&f);
        let ids: Vec<ObjectId> = t.post_order().iter().map(|n| n.id).collect();
        let never = ObjectId::of(b"never registered");
        assert_eq!(
            s.unavailable(&[never]).await.unwrap(),
            vec![never],
            "unknown"
        );
        s.preregister(1, &t).await.unwrap();
        assert_eq!(s.unavailable(&ids).await.unwrap(), ids, "all pending");
        assert!(s.put(&f.chunk.0, f.chunk.1.clone()).await.unwrap());
        let rest: Vec<ObjectId> = ids.iter().copied().filter(|i| *i != f.chunk.0).collect();
        assert_eq!(s.unavailable(&ids).await.unwrap(), rest);
        push_all(s, &f).await;
        assert_eq!(s.unavailable(&ids).await.unwrap(), Vec::<ObjectId>::new());
        assert_eq!(s.unavailable(&[]).await.unwrap(), Vec::<ObjectId>::new());
    }

    pub async fn shared_objects_survive(s: &dyn ObjectStore) {
        // Two messages share the ArrayRecord subtree; confirming one keeps the shared part.
        let a = fixture(b"a");
        let b = fixture(b"b");
        assert_eq!(a.rec.0, b.rec.0);
        s.preregister(1, &tree(&a)).await.unwrap();
        let to_push_b = s.preregister(1, &tree(&b)).await.unwrap();
        assert!(
            to_push_b.contains(&b.chunk.0),
            "still unavailable objects are asked for again"
        );
        push_all(s, &a).await;
        push_all(s, &b).await;
        s.delete(&a.dict.0).await.unwrap();
        assert!(
            matches!(s.get(&a.dict.0).await.unwrap(), Lookup::Available(_)),
            "referenced objects stay"
        );
        s.delete(&a.msg.0).await.unwrap();
        assert_eq!(s.get(&a.msg.0).await.unwrap(), Lookup::Unknown);
        assert_eq!(s.get(&a.dict.0).await.unwrap(), Lookup::Unknown);
        assert_eq!(s.get(&a.cfg.0).await.unwrap(), Lookup::Unknown);
        assert!(
            matches!(s.get(&a.rec.0).await.unwrap(), Lookup::Available(_)),
            "shared with message b"
        );
        assert!(matches!(
            s.get(&a.chunk.0).await.unwrap(),
            Lookup::Available(_)
        ));
        s.delete(&b.msg.0).await.unwrap();
        assert_eq!(s.len().await.unwrap(), 0, "everything released");
        s.delete(&b.msg.0).await.unwrap();
    }

    pub async fn run_cleanup(s: &dyn ObjectStore) {
        let a = fixture(b"run-a");
        let b = fixture(b"run-b");
        s.preregister(10, &tree(&a)).await.unwrap();
        s.preregister(11, &tree(&b)).await.unwrap();
        push_all(s, &a).await;
        s.delete_objects_in_run(10).await.unwrap();
        assert_eq!(s.get(&a.msg.0).await.unwrap(), Lookup::Unknown);
        assert_eq!(
            s.get(&b.msg.0).await.unwrap(),
            Lookup::Pending,
            "other runs are untouched"
        );
        assert!(
            matches!(s.get(&b.chunk.0).await.unwrap(), Lookup::Available(_)),
            "shared objects of other runs stay"
        );
        s.delete_objects_in_run(11).await.unwrap();
        assert_eq!(s.len().await.unwrap(), 0);
        s.delete_objects_in_run(12).await.unwrap();
    }

    pub async fn trees(s: &dyn ObjectStore) {
        let f = fixture(b"tree");
        let t = tree(&f);
        s.preregister(3, &t).await.unwrap();
        assert_eq!(s.tree(&f.msg.0).await.unwrap(), Some(t));
        assert_eq!(s.tree(&ObjectId::of(b"none")).await.unwrap(), None);
        let leaf = ObjectTree::leaf(ObjectId::of(b"single"));
        s.preregister(3, &leaf).await.unwrap();
        assert_eq!(s.tree(&leaf.id).await.unwrap(), Some(leaf));
    }
}

/// The checks of [`crate::FabStore`].
pub mod fabs {
    use bytes::Bytes;

    use crate::fabs::fab_hash;
    use crate::{FabStore, StoredFab, Verifications};

    /// A FAB is kept under its SHA-256 with its verifications, storing it again changes nothing
    /// but signed verifications (unsigned ones never erase them), and an unknown hash finds
    /// nothing.
    pub async fn fabs_by_hash(s: &dyn FabStore) {
        let fab = Bytes::from_static(b"PK\x03\x04 not really a zip, but bytes all the same");
        let other = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
        let none = Verifications::new();
        let hash = s.put(fab.clone(), none.clone()).await.unwrap();
        assert_eq!(
            hash,
            fab_hash(&fab),
            "the hash is the content's SHA-256 (hex)"
        );
        assert_eq!(
            s.put(fab.clone(), none.clone()).await.unwrap(),
            hash,
            "stored once"
        );
        let big = s.put(other.clone(), none.clone()).await.unwrap();
        let stored = |content: &Bytes, verifications: &Verifications| {
            Some(StoredFab {
                content: content.clone(),
                verifications: verifications.clone(),
            })
        };
        assert_eq!(s.get(&hash).await.unwrap(), stored(&fab, &none));
        assert_eq!(s.get(&big).await.unwrap(), stored(&other, &none));
        assert_eq!(s.get(&fab_hash(b"never stored")).await.unwrap(), None);

        let signed: Verifications = [
            ("valid_license".to_owned(), "Valid".to_owned()),
            (
                "fpk_1".to_owned(),
                r#"{"signature": "c2ln", "signed_at": 1}"#.to_owned(),
            ),
        ]
        .into();
        assert_eq!(s.put(fab.clone(), signed.clone()).await.unwrap(), hash);
        assert_eq!(s.get(&hash).await.unwrap(), stored(&fab, &signed));
        s.put(fab.clone(), none).await.unwrap();
        assert_eq!(
            s.get(&hash).await.unwrap(),
            stored(&fab, &signed),
            "a FAB sent again without verifications keeps its own"
        );
    }
}
