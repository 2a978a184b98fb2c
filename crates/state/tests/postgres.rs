//! The conformance suite on the PostgreSQL engine: a throwaway cluster for this test process,
//! a fresh database per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

flwr_state::conformance_tests!(|clock| async move {
    let url = flwr_testkit::postgres::shared().create_database();
    let target = flwr_state::postgres::PgTarget::parse(&url).unwrap();
    flwr_state::postgres::connect(flwr_state::postgres::PgOptions::new(target), clock)
        .await
        .unwrap()
});

mod replicas {
    //! What one replica learns from another through notifications.

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use flwr_state::conformance::link;
    use flwr_state::postgres::{connect, PgOptions, PgTarget};
    use flwr_state::*;

    async fn replica(url: &str, clock: Arc<ManualClock>) -> Stores {
        connect(PgOptions::new(PgTarget::parse(url).unwrap()), clock)
            .await
            .unwrap()
    }

    /// Two replicas on a fresh database, sharing one clock.
    async fn two_replicas() -> (Stores, Stores, Arc<ManualClock>) {
        let url = flwr_testkit::postgres::shared().create_database();
        let clock = Arc::new(ManualClock::new());
        let a = replica(&url, clock.clone()).await;
        let b = replica(&url, clock.clone()).await;
        (a, b, clock)
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < Duration::from_secs(30), "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An online node with key "key", and an instruction for it stored through A once B listens,
    /// which B has heard of.
    async fn instruction_heard_by_b(
        a: &Arc<dyn LinkState>,
        b: &Arc<dyn LinkState>,
        clock: &ManualClock,
    ) -> (NodeId, RunId, flwr_objects::message::MessageMeta) {
        let node = link::online_node(&**a, "key").await;
        // B's listener is up once it hints "nothing" for a node with nothing queued.
        eventually("B listens", || !b.may_have_instruction(node)).await;
        let run = a.create_run(link::new_run()).await.unwrap();
        let message = link::instruction(run, node, "c", clock.now(), 600.0);
        a.store_instruction(message.clone()).await.unwrap();
        eventually("B hears of the instruction", || {
            b.may_have_instruction(node)
        })
        .await;
        (node, run, message)
    }

    #[tokio::test]
    async fn hints_follow_the_other_replicas() {
        let (a, b, clock) = two_replicas().await;
        let (a, a_objects, b) = (a.state, a.objects, b.state);
        // An instruction stored through A: B's hint turns to "maybe" and B delivers it.
        let (node, run, message) = instruction_heard_by_b(&a, &b, &clock).await;
        assert_eq!(b.node_id_by_public_key(b"key").await.unwrap(), Some(node));
        assert_eq!(b.cached_node_id(b"key"), Some(node), "B remembers the key");
        assert_eq!(
            b.pull_instruction(node).await.unwrap(),
            Some(message.clone())
        );
        assert_eq!(b.pull_instruction(node).await.unwrap(), None);
        assert!(
            b.may_have_instruction(node),
            "an unconfirmed delivery keeps the hint"
        );
        a.confirm_instruction(node, &message.message_id)
            .await
            .unwrap();
        assert_eq!(b.pull_instruction(node).await.unwrap(), None);
        assert!(
            !b.may_have_instruction(node),
            "an empty pull clears the hint"
        );

        // Log output through A wakes B's streams.
        let mut logs = b.log_events().expect("B delivers log events");
        a.add_log(run, "hello\n").await.unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(10), logs.recv()).await;
        assert_eq!(woke.unwrap().unwrap(), run);

        // A reply and an object stored through A wake B's held pulls of the run (and only
        // with the run's id); the memory and SQLite engines have no one else to hear from.
        let Arrivals::Announced(mut arrivals) = b.arrivals_elsewhere() else {
            panic!("B announces the arrivals through other replicas");
        };
        let reply = link::reply_to(&message, "r", clock.now());
        assert!(a.store_reply(reply).await.unwrap().is_ok());
        let woke = tokio::time::timeout(Duration::from_secs(10), arrivals.recv()).await;
        assert_eq!(woke.unwrap().unwrap(), Some(run));
        let object = flwr_objects::ObjectId::of(b"reply content");
        let tree = flwr_objects::tree::ObjectTree {
            id: object,
            children: vec![],
        };
        a_objects.preregister(run, &tree).await.unwrap();
        a_objects
            .put(&object, bytes::Bytes::from_static(b"reply content"))
            .await
            .unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(10), arrivals.recv()).await;
        assert_eq!(woke.unwrap().unwrap(), Some(run));
        assert!(arrivals.is_empty(), "one announcement per arrival");

        // Unregistered through A: B forgets the key.
        a.unregister_node(node, None).await.unwrap().unwrap();
        eventually("B forgets the key", || b.cached_node_id(b"key").is_none()).await;
        assert_eq!(b.node_id_by_public_key(b"key").await.unwrap(), None);
    }

    /// A replica delivers an instruction and dies before its answer leaves: the node's next
    /// pulls, through another replica, get it again once [`REDELIVER_AFTER`] has passed, until
    /// the node confirms it.
    #[tokio::test]
    async fn a_delivery_lost_with_its_replica_is_repeated_by_another() {
        let (a, b, clock) = two_replicas().await;
        let (a, b) = (a.state, b.state);
        let (node, _, message) = instruction_heard_by_b(&a, &b, &clock).await;
        assert_eq!(
            a.pull_instruction(node).await.unwrap(),
            Some(message.clone())
        );
        drop(a);
        assert_eq!(b.pull_instruction(node).await.unwrap(), None, "too early");
        assert!(b.may_have_instruction(node));
        link::repeated_until_confirmed(&*b, &clock, node, &message, "repeated by B").await;
        assert!(!b.may_have_instruction(node), "confirmed: nothing to pull");
    }

    /// Finishing a run and expiring its ServerApp's token happen once across replicas. Two
    /// replicas end the same runs at the same moment, with different outcomes; then tokens
    /// expire while both read the runs and one tries to finish them. Every run makes exactly
    /// one transition to finished, as the one replica that succeeded says, and sends exactly
    /// one run-status notification for it (counted on a connection of the test's own).
    #[tokio::test]
    async fn a_run_ends_once_when_replicas_race() {
        use tokio_postgres::AsyncMessage;

        let url = flwr_testkit::postgres::shared().create_database();
        let clock = Arc::new(ManualClock::new());
        let a = replica(&url, clock.clone()).await.state;
        let b = replica(&url, clock.clone()).await.state;

        let (listener, mut connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let (heard, mut notifications) = tokio::sync::mpsc::unbounded_channel::<String>();
        let listening = tokio::spawn(async move {
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let AsyncMessage::Notification(n) = message {
                    let _ = heard.send(n.payload().to_owned());
                }
            }
        });
        listener.batch_execute("LISTEN flwr_events").await.unwrap();

        let running = || async {
            let run = a.create_run(link::new_run()).await.unwrap();
            for status in [Status::Starting, Status::Running] {
                assert!(a
                    .update_run_status(run, RunStatus::new(status))
                    .await
                    .unwrap());
            }
            run
        };
        let mut runs = Vec::new();
        for _ in 0..10 {
            let run = running().await;
            let (by_a, by_b) = tokio::join!(
                a.update_run_status(run, RunStatus::finished(SubStatus::Completed, "")),
                b.update_run_status(run, RunStatus::finished(SubStatus::Stopped, "stopped")),
            );
            let (by_a, by_b) = (by_a.unwrap(), by_b.unwrap());
            assert!(by_a != by_b, "one of the two ends the run: {by_a} {by_b}");
            let ended = b.run(run).await.unwrap().unwrap().status;
            assert_eq!(
                ended.sub_status,
                if by_a {
                    SubStatus::Completed
                } else {
                    SubStatus::Stopped
                }
            );
            runs.push(run);
        }
        for _ in 0..10 {
            let run = a.create_run(link::new_run()).await.unwrap();
            a.claim_run(run, None).await.unwrap().unwrap();
            assert!(a
                .update_run_status(run, RunStatus::new(Status::Running))
                .await
                .unwrap());
            clock.advance(heartbeat::DEFAULT_INTERVAL + 1.0);
            let (seen_by_a, seen_by_b, finished_by_b) = tokio::join!(
                a.run(run),
                b.run(run),
                b.update_run_status(run, RunStatus::finished(SubStatus::Completed, "")),
            );
            assert!(!finished_by_b.unwrap(), "the token expired first");
            for seen in [seen_by_a, seen_by_b] {
                assert_eq!(
                    seen.unwrap().unwrap().status,
                    RunStatus::finished(SubStatus::Failed, NO_HEARTBEAT_DETAILS)
                );
            }
            runs.push(run);
        }

        // Notifications arrive in commit order: once this one is heard, all of theirs were.
        listener
            .batch_execute("NOTIFY flwr_events, 'end'")
            .await
            .unwrap();
        let mut status_changes = std::collections::HashMap::<String, usize>::new();
        loop {
            let payload = tokio::time::timeout(Duration::from_secs(30), notifications.recv())
                .await
                .expect("the test's own notification arrives")
                .unwrap();
            if payload == "end" {
                break;
            }
            if payload.starts_with('r') {
                *status_changes.entry(payload).or_default() += 1;
            }
        }
        for run in runs {
            assert_eq!(
                status_changes.get(&format!("r{run}")),
                Some(&3),
                "run {run}: starting, running and finished, each announced once"
            );
        }
        drop(listener);
        listening.await.unwrap();
    }

    /// A ServerApp's pull (on any replica) locks the instructions it waits on, and a node's pull
    /// skips locked rows. Finding only such a row must not clear the node's hint: the node would
    /// then be told "nothing" from the cache until its next notification (a stalled round).
    #[tokio::test]
    async fn an_instruction_held_by_another_transaction_keeps_its_hint() {
        let url = flwr_testkit::postgres::shared().create_database();
        let clock = Arc::new(ManualClock::new());
        let a = replica(&url, clock.clone()).await.state;
        let (node, run) = link::setup(&*a, "key").await;
        eventually("A listens", || !a.may_have_instruction(node)).await;
        let message = link::instruction(run, node, "held", clock.now(), 600.0);
        a.store_instruction(message.clone()).await.unwrap();

        let (mut other, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let holder = other.transaction().await.unwrap();
        holder
            .execute("SELECT 1 FROM message_ins FOR UPDATE", &[])
            .await
            .unwrap();
        assert_eq!(a.pull_instruction(node).await.unwrap(), None, "held");
        assert!(
            a.may_have_instruction(node),
            "a held instruction is not nothing"
        );
        holder.commit().await.unwrap();
        assert_eq!(a.pull_instruction(node).await.unwrap(), Some(message));
        drop(other);
        connection.await.unwrap().unwrap();
    }

    /// A database written before `delivered_at` and `confirmed` existed (and before object and
    /// FAB bytes were stored uncompressed, and before federations kept simulation settings) gets
    /// them when a replica starts, and what it held is still delivered.
    // Multi-threaded, and psql off the runtime (block_in_place): the ALTER TABLEs wait for the
    // transactions of the replicas' background tasks (the sweeper), which must be able to run
    // meanwhile. On one thread, psql blocked the runtime while a sweeper transaction held its
    // locks: a deadlock that hung the whole test binary now and then.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_database_from_before_the_added_columns_is_upgraded() {
        let url = flwr_testkit::postgres::shared().create_database();
        let clock = Arc::new(ManualClock::new());
        let (node, run) = {
            let a = replica(&url, clock.clone()).await.state;
            link::setup(&*a, "key").await
        };
        let queued = link::instruction(run, node, "q", clock.now(), 600.0);
        {
            let a = replica(&url, clock.clone()).await.state;
            a.store_instruction(queued.clone()).await.unwrap();
        }
        let pg = flwr_testkit::postgres::shared();
        let storage = "SELECT string_agg(attrelid::regclass || '=' || attstorage::text, ' ' ORDER BY attrelid::regclass::text) \
                       FROM pg_attribute WHERE attname = 'content' \
                       AND attrelid IN ('object'::regclass, 'fab'::regclass)";
        let psql = |sql: &str| tokio::task::block_in_place(|| pg.psql_in(&url, sql));
        assert_eq!(psql(storage).trim(), "fab=e object=e", "a new database");
        psql(
            "ALTER TABLE message_ins DROP COLUMN confirmed, DROP COLUMN delivered_at; \
             ALTER TABLE token DROP COLUMN launcher; \
             ALTER TABLE object ALTER COLUMN content SET STORAGE EXTENDED; \
             ALTER TABLE fab ALTER COLUMN content SET STORAGE EXTENDED; \
             ALTER TABLE fab DROP COLUMN verifications",
        );
        let b = replica(&url, clock.clone()).await.state;
        assert_eq!(psql(storage).trim(), "fab=e object=e", "upgraded");
        assert_eq!(
            b.pull_instruction(node).await.unwrap(),
            Some(queued.clone())
        );
        link::repeated_until_confirmed(&*b, &clock, node, &queued, "repeated after the upgrade")
            .await;
        let fresh = b.create_run(link::new_run()).await.unwrap();
        assert!(b.claim_run(fresh, Some("here")).await.unwrap().is_some());
        let fabs = replica(&url, clock.clone()).await.fabs.unwrap();
        let signed: Verifications = [("valid_license".to_owned(), "Valid".to_owned())].into();
        let hash = fabs
            .put(bytes::Bytes::from_static(b"fab"), signed.clone())
            .await
            .unwrap();
        assert_eq!(
            fabs.get(&hash).await.unwrap().unwrap().verifications,
            signed,
            "FABs keep verifications after the upgrade"
        );
        // Then one written before federations kept simulation settings, and nothing else.
        psql("DROP TABLE federation");
        let c = replica(&url, clock.clone()).await.state;
        c.set_simulation_config("@none/default", bytes::Bytes::from_static(b"x"))
            .await
            .expect("the federation table is made again");
    }

    #[tokio::test]
    async fn usage_counted_on_one_replica_reaches_the_others() {
        let (a, b, _) = two_replicas().await;
        let (a, b) = (a.state, b.state);
        let run = a.create_run(link::new_run()).await.unwrap();
        let usage = |r: Run| (r.bytes_sent, r.bytes_recv, r.clientapp_runtime);
        a.add_run_usage(run, 10, 20, 1.5).await.unwrap();
        a.add_run_usage(run, 1, 2, 0.5).await.unwrap();
        assert_eq!(
            usage(a.run(run).await.unwrap().unwrap()),
            (11, 22, 2.0),
            "A sees its own counts at once"
        );
        // B sees them once A has written them (every second, or at A's shutdown).
        let start = Instant::now();
        while usage(b.run(run).await.unwrap().unwrap()) != (11, 22, 2.0) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "B never sees A's counts"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        b.add_run_usage(run, 5, 0, 0.0).await.unwrap();
        b.flush().await.unwrap();
        assert_eq!(
            usage(a.runs_of("<id:none>").await.unwrap()[0].clone()),
            (16, 22, 2.0)
        );
    }

    #[tokio::test]
    async fn node_unavailable_is_answered_once_when_replicas_race() {
        let (a, b, clock) = two_replicas().await;
        let (a, b) = (a.state, b.state);
        let (node, run) = link::setup(&*a, "racer").await;
        let instructions: Vec<_> = (0..20)
            .map(|i| link::instruction(run, node, &format!("{i}"), clock.now(), 600.0))
            .collect();
        let ids: Vec<String> = instructions.iter().map(|i| i.message_id.clone()).collect();
        for ins in instructions {
            a.store_instruction(ins).await.unwrap().unwrap();
            a.pull_instruction(node).await.unwrap().unwrap();
        }
        a.deactivate_node(node).await.unwrap().unwrap();
        clock.advance(0.5);
        // Both replicas ask for every reply, several times over, at the same moment: each
        // instruction gets one NODE_UNAVAILABLE in all.
        let ask = |s: Arc<dyn LinkState>, ids: Vec<String>| async move {
            let mut got = Vec::new();
            for _ in 0..5 {
                got.extend(s.take_replies(&ids).await.unwrap());
            }
            got
        };
        let (from_a, from_b) = tokio::join!(
            tokio::spawn(ask(a.clone(), ids.clone())),
            tokio::spawn(ask(b.clone(), ids.clone()))
        );
        let mut answered: Vec<String> = Vec::new();
        for reply in from_a.unwrap().into_iter().chain(from_b.unwrap()) {
            use flwr_objects::message::error_code::{MESSAGE_UNAVAILABLE, NODE_UNAVAILABLE};
            match reply {
                PulledReply::Generated(m) => match m.error.as_ref().unwrap().code {
                    NODE_UNAVAILABLE => answered.push(m.reply_to_message_id),
                    MESSAGE_UNAVAILABLE => {}
                    other => panic!("unexpected error code {other}: {m:?}"),
                },
                other => panic!("{other:?}"),
            }
        }
        answered.sort();
        let mut expected = ids.clone();
        expected.sort();
        // An instruction asked for again after its answer was taken is unknown: that answer is
        // MESSAGE_UNAVAILABLE, never a second NODE_UNAVAILABLE.
        assert_eq!(answered, expected, "one NODE_UNAVAILABLE per instruction");
    }

    /// ...and without a deadlock: the release locks its whole tree in the order in which a
    /// pre-registration locks what it finds (PostgreSQL would break a deadlock after a second,
    /// and the retry hides it; its own count of deadlocks in the database does not).
    // Multi-threaded, for psql off the runtime (block_in_place).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_tree_registered_while_a_sharing_one_is_released_stays_whole() {
        use bytes::Bytes;
        use flwr_objects::store::Lookup;
        use flwr_objects::tree::ObjectTree;
        use flwr_objects::ObjectId;
        use std::collections::HashMap;

        let url = flwr_testkit::postgres::shared().create_database();
        let clock = Arc::new(ManualClock::new());
        let a = replica(&url, clock.clone()).await.objects;
        let b = replica(&url, clock.clone()).await.objects;
        let mut contents: HashMap<ObjectId, Bytes> = HashMap::new();
        let mut object = |text: String| {
            let content = Bytes::from(text);
            let id = ObjectId::of(&content);
            contents.insert(id, content);
            id
        };
        let (mid, chunk) = (
            object("shared record".into()),
            object("shared chunk".into()),
        );
        let roots: Vec<(ObjectId, ObjectId)> = (0..100)
            .map(|i| {
                (
                    object(format!("released {i}")),
                    object(format!("registered {i}")),
                )
            })
            .collect();
        let tree_of = |root: ObjectId| ObjectTree {
            id: root,
            children: vec![ObjectTree {
                id: mid,
                children: vec![ObjectTree::leaf(chunk)],
            }],
        };
        for (i, (old, new)) in roots.into_iter().enumerate() {
            // A message whose tree is whole...
            for id in a.preregister(1, &tree_of(old)).await.unwrap() {
                assert!(a.put(&id, contents[&id].clone()).await.unwrap());
            }
            // ...is released on one replica while another registers a message that shares its
            // children: what the second is told to push completes its tree.
            let registered = tree_of(new);
            let (released, to_push) = tokio::join!(a.delete(&old), b.preregister(1, &registered));
            released.unwrap();
            for id in to_push.unwrap() {
                assert!(
                    b.put(&id, contents[&id].clone()).await.unwrap(),
                    "round {i}: {id} could not be pushed"
                );
            }
            for id in [new, mid, chunk] {
                assert!(
                    matches!(b.get(&id).await.unwrap(), Lookup::Available(_)),
                    "round {i}: {id} is missing from the registered tree"
                );
            }
            b.delete(&new).await.unwrap();
        }
        drop((a, b));
        // A backend adds its deadlocks to the database's count at the latest when it exits.
        let pg = flwr_testkit::postgres::shared();
        let psql = |sql: &str| tokio::task::block_in_place(|| pg.psql_in(&url, sql));
        let others = "SELECT count(*) FROM pg_stat_activity \
                      WHERE datname = current_database() AND pid <> pg_backend_pid()";
        eventually("the replicas' connections close", || {
            psql(others).trim() == "0"
        })
        .await;
        let deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()";
        assert_eq!(psql(deadlocks).trim(), "0", "deadlocks in the database");
    }

    /// Reads `run` until `s` knows it is running (its listener may still be connecting, and a
    /// status change that crosses a read keeps that read from being remembered).
    async fn read_until_cached(s: &Arc<dyn LinkState>, run: RunId) {
        let start = Instant::now();
        while !s.cached_running(run) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "never cached: run {run}"
            );
            s.run(run).await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_running_run_is_known_without_asking_until_it_changes_anywhere() {
        let (a, b, clock) = two_replicas().await;
        let (a, b) = (a.state, b.state);
        let run = a.create_run(link::new_run()).await.unwrap();
        assert!(!b.cached_running(run), "pending: ask");
        a.claim_run(run, None).await.unwrap().unwrap();
        assert!(a
            .update_run_status(run, RunStatus::new(Status::Running))
            .await
            .unwrap());
        // Once B has read it as running (and listens), B knows without asking.
        read_until_cached(&b, run).await;
        // Its ServerApp token's deadline passes: B asks again, and the run has failed.
        clock.advance(heartbeat::DEFAULT_INTERVAL + 1.0);
        assert!(!b.cached_running(run), "an expired token ends what B knows");
        assert_eq!(
            b.run(run).await.unwrap().unwrap().status.status,
            Status::Finished
        );
        assert!(!b.cached_running(run));

        // Another run, finished through A: A forgets at once, B when A's notification arrives.
        let other = a.create_run(link::new_run()).await.unwrap();
        for status in [Status::Starting, Status::Running] {
            assert!(a
                .update_run_status(other, RunStatus::new(status))
                .await
                .unwrap());
        }
        read_until_cached(&a, other).await;
        read_until_cached(&b, other).await;
        let finished = RunStatus::finished(SubStatus::Completed, "");
        assert!(a.update_run_status(other, finished).await.unwrap());
        assert!(!a.cached_running(other), "A forgets at once");
        eventually("B forgets the finished run", || !b.cached_running(other)).await;
    }
}
