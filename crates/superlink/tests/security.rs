//! The security findings, each as a test against the real binary: what an unauthenticated or
//! hostile peer can make the SuperLink hold, what a node may touch, what callers are told.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use bytes::Bytes;
use common::{channel, fleet_client, join, now, running_run, signed};
use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_transport::node_auth::NodeSigningKey;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");
const MIB: u64 = 1024 * 1024;

/// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

fn push_object(bytes: usize) -> pb::PushObjectRequest {
    pb::PushObjectRequest {
        node: Some(pb::Node { node_id: 42 }),
        run_id: 1,
        object_id: "0".repeat(64),
        object_content: Bytes::from(vec![7u8; bytes]),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_bodies_are_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut superlink =
        SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let pid = superlink.proc.pid();
    // Settle: one small refused call, so that the connection machinery is warm.
    let mut fleet = fleet_client(&superlink.fleet);
    let refused = fleet.push_object(push_object(10)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let (idle, _) = memory(pid);

    // No signature at all: 400 MiB announced, refused from the headers.
    let body = 400 * MIB as usize;
    let status = fleet.push_object(push_object(body)).await.unwrap_err();
    let held = |what: &str| {
        let (_, peak) = memory(pid);
        assert!(
            peak < idle + 50 * MIB,
            "{what}: peak RSS {} MiB against {} MiB idle: an unauthenticated body was buffered",
            peak / MIB,
            idle / MIB
        );
    };
    held("no signature");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "Missing authentication metadata"),
        "{status:?}"
    );

    // Signed by a key no node has: refused before the body too, three at once.
    let stranger = NodeSigningKey::generate();
    let calls = (0..3).map(|_| {
        let mut fleet = fleet_client(&superlink.fleet);
        let request = signed(&stranger, push_object(body), None);
        tokio::spawn(async move { fleet.push_object(request).await })
    });
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, "Invalid node ID"),
            "{status:?}"
        );
    }

    held("signed by a key no node has, three at once");

    // RegisterNode and ActivateNode take any key that signs: a huge body signed by a fresh key
    // is cut off at a small bound (three at once, each call its own connection).
    let calls = (0..3).map(|i| {
        let mut fleet = fleet_client(&superlink.fleet);
        let key = NodeSigningKey::generate();
        let padded = Bytes::from(vec![b'k'; 100 * MIB as usize]);
        tokio::spawn(async move {
            if i == 0 {
                let request = pb::ActivateNodeRequest {
                    public_key: padded,
                    heartbeat_interval: 30.0,
                };
                fleet
                    .activate_node(signed(&key, request, None))
                    .await
                    .map(|_| ())
            } else {
                let request = pb::RegisterNodeFleetRequest { public_key: padded };
                fleet
                    .register_node(signed(&key, request, None))
                    .await
                    .map(|_| ())
            }
        })
    });
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("larger than"), "{status:?}");
    }
    held("RegisterNode and ActivateNode with huge bodies, three at once");
    // A real join still works.
    join(&superlink.fleet, &NodeSigningKey::generate()).await;
    assert!(superlink.proc.try_status().is_none(), "still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_touches_only_its_own_instructions() {
    use flwr_objects::content::{serialize, ObjectType};
    use flwr_objects::ObjectId;

    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let (key_a, key_b) = (NodeSigningKey::generate(), NodeSigningKey::generate());
    let a = join(&superlink.fleet, &key_a).await;
    let b = join(&superlink.fleet, &key_b).await;
    let (run_id, token) = running_run(&superlink.control, &superlink.serverappio).await;

    // An instruction for A: a message object with one child.
    let chunk = serialize(ObjectType::ArrayChunk, &[], b"for A only");
    let chunk_id = ObjectId::of(&chunk);
    let message = serialize(ObjectType::Message, &[chunk_id], b"instruction");
    let message_id = ObjectId::of(&message);
    let mut appio =
        pb::server_app_io_client::ServerAppIoClient::new(channel(&superlink.serverappio));
    let pushed = appio
        .push_messages(pb::PushAppMessagesRequest {
            token,
            run_id,
            messages_list: vec![pb::Message {
                metadata: Some(pb::Metadata {
                    run_id,
                    message_id: message_id.to_hex(),
                    src_node_id: 1,
                    dst_node_id: a,
                    ttl: 600.0,
                    message_type: "train".into(),
                    created_at: now(),
                    ..Default::default()
                }),
                content: Some(pb::RecordDict::default()),
                error: None,
            }],
            message_object_trees: vec![pb::ObjectTree {
                object_id: message_id.to_hex(),
                children: vec![pb::ObjectTree {
                    object_id: chunk_id.to_hex(),
                    children: vec![],
                }],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pushed.message_ids, vec![message_id.to_hex()]);
    for (id, content) in [(chunk_id, chunk), (message_id, message)] {
        let stored = appio
            .push_object(pb::PushObjectRequest {
                node: Some(pb::Node { node_id: 1 }),
                run_id,
                object_id: id.to_hex(),
                object_content: Bytes::from(content),
            })
            .await
            .unwrap()
            .into_inner()
            .stored;
        assert!(stored);
    }

    let mut fleet = fleet_client(&superlink.fleet);
    let pull = |key: &NodeSigningKey, node_id: u64, id: ObjectId| {
        signed(
            key,
            pb::PullObjectRequest {
                node: Some(pb::Node { node_id }),
                run_id,
                object_id: id.to_hex(),
            },
            None,
        )
    };
    let confirm = |key: &NodeSigningKey, node_id: u64| {
        signed(
            key,
            pb::ConfirmMessageReceivedRequest {
                node: Some(pb::Node { node_id }),
                run_id,
                message_object_id: message_id.to_hex(),
            },
            None,
        )
    };
    let unknown = |r: pb::PullObjectResponse| !r.object_found && !r.object_available;

    // B sees nothing of A's instruction, before and after A takes it.
    let r = fleet.pull_object(pull(&key_b, b, chunk_id)).await.unwrap();
    assert!(unknown(r.into_inner()));
    let pulled = fleet
        .pull_messages(signed(
            &key_a,
            pb::PullMessagesRequest {
                node: Some(pb::Node { node_id: a }),
                message_ids: vec![],
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pulled.messages_list.len(), 1);
    for id in [chunk_id, message_id] {
        let r = fleet.pull_object(pull(&key_b, b, id)).await.unwrap();
        assert!(
            unknown(r.into_inner()),
            "B pulled an object of A's instruction"
        );
    }
    // B's confirm is answered as any confirm, and changes nothing.
    fleet
        .confirm_message_received(confirm(&key_b, b))
        .await
        .unwrap();
    for id in [chunk_id, message_id] {
        let r = fleet
            .pull_object(pull(&key_a, a, id))
            .await
            .unwrap()
            .into_inner();
        assert!(r.object_available, "A's objects survive B's confirm");
    }
    // A's own confirm deletes them.
    fleet
        .confirm_message_received(confirm(&key_a, a))
        .await
        .unwrap();
    let r = fleet.pull_object(pull(&key_a, a, chunk_id)).await.unwrap();
    assert!(unknown(r.into_inner()));
}

/// What each engine answers to instructions whose numbers no engine can store.
async fn answers_to_impossible_numbers(engine: &[&str]) -> Vec<(Code, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = vec!["--isolation", "process"];
    flags.extend_from_slice(engine);
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &flags);
    let key = NodeSigningKey::generate();
    let node = join(&superlink.fleet, &key).await;
    let (run_id, token) = running_run(&superlink.control, &superlink.serverappio).await;
    let mut appio =
        pb::server_app_io_client::ServerAppIoClient::new(channel(&superlink.serverappio));
    let mut answers = Vec::new();
    for (ttl, created_at) in [
        (f64::NAN, now()),
        (f64::INFINITY, now()),
        (600.0, f64::NAN),
        (600.0, f64::NEG_INFINITY),
    ] {
        let status = appio
            .push_messages(pb::PushAppMessagesRequest {
                token: token.clone(),
                run_id,
                messages_list: vec![pb::Message {
                    metadata: Some(pb::Metadata {
                        run_id,
                        message_id: "a".repeat(64),
                        src_node_id: 1,
                        dst_node_id: node,
                        ttl,
                        message_type: "train".into(),
                        created_at,
                        ..Default::default()
                    }),
                    content: Some(pb::RecordDict::default()),
                    error: None,
                }],
                message_object_trees: vec![pb::ObjectTree {
                    object_id: "a".repeat(64),
                    children: vec![],
                }],
            })
            .await
            .unwrap_err();
        let dir_text = dir.path().display().to_string();
        assert!(
            !status.message().contains(&dir_text),
            "a server path reached the caller: {status:?}"
        );
        answers.push((status.code(), status.message().to_owned()));
    }
    // A reply reporting an impossible ClientApp runtime is no server error either.
    let mut fleet = fleet_client(&superlink.fleet);
    let r = fleet
        .push_messages(signed(
            &key,
            pb::PushMessagesRequest {
                node: Some(pb::Node { node_id: node }),
                messages_list: vec![pb::Message {
                    metadata: Some(pb::Metadata {
                        run_id,
                        message_id: "b".repeat(64),
                        src_node_id: node,
                        dst_node_id: 1,
                        reply_to_message_id: "c".repeat(64),
                        ttl: f64::NAN,
                        message_type: "train".into(),
                        created_at: now(),
                        ..Default::default()
                    }),
                    content: Some(pb::RecordDict::default()),
                    error: None,
                }],
                message_object_trees: vec![pb::ObjectTree {
                    object_id: "b".repeat(64),
                    children: vec![],
                }],
                clientapp_runtime_list: vec![f64::NAN],
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.results.keys().collect::<Vec<_>>(),
        vec!["None"],
        "refused, not stored"
    );
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn impossible_numbers_are_refused_alike_by_every_engine() {
    // In memory, in SQLite and in PostgreSQL: checked at the edge, before any engine.
    let memory = answers_to_impossible_numbers(&[]).await;
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("state.db");
    let sqlite = answers_to_impossible_numbers(&["--database", path.to_str().unwrap()]).await;
    assert_eq!(memory, sqlite);
    #[cfg(feature = "external")]
    {
        let url = flwr_testkit::postgres::shared().create_database();
        let postgresql = answers_to_impossible_numbers(&["--database", &url]).await;
        assert_eq!(memory, postgresql);
    }
    for (code, message) in &memory {
        assert_eq!(*code, Code::Unknown, "{message}");
        assert!(
            message.contains("metadata.ttl") || message.contains("metadata.created_at"),
            "{message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fab_with_an_oversized_pyproject_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let mut control = pb::control_client::ControlClient::new(channel(&superlink.control));
    // A real pyproject followed by 2 MiB of comment: Flower read the first MiB and went on.
    let pyproject = format!("{}#{}\n", common::PYPROJECT, "x".repeat(2 * MIB as usize));
    let status = control
        .start_run(pb::StartRunRequest {
            fab: Some(pb::Fab {
                content: common::fab(&pyproject),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("pyproject.toml") && status.message().contains("larger than"),
        "{status:?}"
    );
}

// ------------------------------------------------------------------ HTTP/2 abuse

/// HTTP/2 frames, written by hand: the attacks below are what a well-behaved client library
/// refuses to send.
mod h2raw {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// A literal header field without indexing, new name (HPACK, no Huffman coding).
    pub fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
        assert!(name.len() < 127 && value.len() < 127);
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }

    /// The header block of a Fleet call.
    pub fn request_block() -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        let path = "/flwr.proto.Fleet/PullMessages";
        b.push(0x04); // :path, literal value
        b.push(path.len() as u8);
        b.extend_from_slice(path.as_bytes());
        b.extend_from_slice(&[0x01, 9]); // :authority
        b.extend_from_slice(b"localhost");
        literal(&mut b, "content-type", "application/grpc");
        literal(&mut b, "te", "trailers");
        b
    }

    /// The client preface and an empty SETTINGS frame.
    pub fn start() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        frame(&mut out, SETTINGS, 0, 0, &[]);
        out
    }
}

/// What happened to an abusive connection.
#[derive(Debug)]
struct Abuse {
    /// Bytes of the attack written before the server stopped taking them.
    written: usize,
    /// The server closed the connection (during the attack, or within 10 s after it).
    closed_by_server: bool,
}

/// Writes `attack` after the client preface, in chunks, while discarding whatever the server
/// sends (when `read`), and stops when the server closes the connection or stops reading.
async fn abuse(addr: &str, attack: Vec<u8>, read: bool) -> Abuse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    // Ends when the server closes the connection.
    let drain = read.then(|| {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(rx.read(&mut buf).await, Ok(n) if n > 0) {}
        })
    });
    let mut all = h2raw::start();
    all.extend_from_slice(&attack);
    let mut written = 0;
    let mut write_failed = false;
    for chunk in all.chunks(64 * 1024) {
        match tokio::time::timeout(std::time::Duration::from_secs(5), tx.write_all(chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            _ => {
                write_failed = true;
                break;
            }
        }
    }
    let closed_after = match drain {
        Some(d) => tokio::time::timeout(std::time::Duration::from_secs(10), d)
            .await
            .is_ok(),
        None => false,
    };
    Abuse {
        written: written.saturating_sub(h2raw::start().len()),
        closed_by_server: write_failed || closed_after,
    }
}

/// Starts a SuperLink, runs `attack` against its plaintext Fleet port, then checks that a
/// well-behaved client is served and that the SuperLink's peak memory stayed within 50 MiB of
/// idle. Returns what happened to the attack.
async fn survives(name: &str, attack: impl FnOnce(&str) -> Vec<u8>, read: bool) -> Abuse {
    let dir = tempfile::tempdir().unwrap();
    let mut superlink =
        SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let pid = superlink.proc.pid();
    let mut fleet = fleet_client(&superlink.fleet);
    let _ = fleet.push_object(push_object(10)).await;
    let (idle, _) = memory(pid);
    let bytes = attack(&superlink.fleet);
    let outcome = abuse(&superlink.fleet, bytes, read).await;
    // Another client is served, on a new connection.
    let mut other = fleet_client(&superlink.fleet);
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        other.push_object(push_object(10)),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}: another client was not served"))
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
    let (_, peak) = memory(pid);
    assert!(
        peak < idle + 50 * MIB,
        "{name}: peak RSS {} MiB against {} MiB idle ({outcome:?})",
        peak / MIB,
        idle / MIB
    );
    assert!(
        superlink.proc.try_status().is_none(),
        "{name}: still running"
    );
    eprintln!(
        "{name}: {outcome:?}, peak {} MiB, idle {} MiB",
        peak / MIB,
        idle / MIB
    );
    outcome
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_rapid_reset_is_cut_off() {
    // CVE-2023-44487: open a stream and cancel it at once, 20,000 times.
    let outcome = survives(
        "rapid reset",
        |_| {
            let block = h2raw::request_block();
            let mut out = Vec::new();
            for i in 0..20_000u32 {
                let stream = 2 * i + 1;
                h2raw::frame(&mut out, h2raw::HEADERS, h2raw::END_HEADERS, stream, &block);
                h2raw::frame(&mut out, h2raw::RST_STREAM, 0, stream, &8u32.to_be_bytes());
            }
            out
        },
        true,
    )
    .await;
    assert!(
        outcome.closed_by_server,
        "the connection was closed: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_continuation_flood_is_cut_off() {
    // A header block that never ends: 16 KiB CONTINUATION frames, 10,000 of them (160 MiB).
    let outcome = survives(
        "CONTINUATION flood",
        |_| {
            let mut out = Vec::new();
            h2raw::frame(&mut out, h2raw::HEADERS, 0, 1, &h2raw::request_block());
            let mut filler = Vec::new();
            while filler.len() < 16 * 1024 - 130 {
                h2raw::literal(&mut filler, "x-filler", &"f".repeat(100));
            }
            for _ in 0..10_000 {
                h2raw::frame(&mut out, h2raw::CONTINUATION, 0, 1, &filler);
            }
            out
        },
        true,
    )
    .await;
    assert!(
        outcome.closed_by_server && outcome.written < 160 * MIB as usize,
        "the connection was closed: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_huge_header_list_is_refused() {
    // One complete request whose header list is 1 MiB.
    survives(
        "huge header list",
        |_| {
            let mut block = h2raw::request_block();
            while block.len() < 1024 * 1024 {
                h2raw::literal(&mut block, "x-filler", &"f".repeat(120));
            }
            let mut out = Vec::new();
            let mut chunks = block.chunks(16 * 1024).peekable();
            let first = chunks.next().unwrap();
            h2raw::frame(&mut out, h2raw::HEADERS, 0, 1, first);
            while let Some(c) = chunks.next() {
                let flags = if chunks.peek().is_none() {
                    h2raw::END_HEADERS
                } else {
                    0
                };
                h2raw::frame(&mut out, h2raw::CONTINUATION, flags, 1, c);
            }
            h2raw::frame(
                &mut out,
                h2raw::DATA,
                h2raw::END_STREAM,
                1,
                &[0, 0, 0, 0, 0],
            );
            out
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_settings_and_ping_floods_stay_bounded() {
    // 200,000 SETTINGS and 200,000 PINGs, never reading the acknowledgements.
    survives(
        "SETTINGS flood",
        |_| {
            let mut out = Vec::new();
            for _ in 0..200_000 {
                h2raw::frame(&mut out, h2raw::SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
            }
            out
        },
        false,
    )
    .await;
    survives(
        "PING flood",
        |_| {
            let mut out = Vec::new();
            for i in 0..200_000u64 {
                h2raw::frame(&mut out, h2raw::PING, 0, 0, &i.to_be_bytes());
            }
            out
        },
        false,
    )
    .await;
}

/// Reads from a fresh connection that sent only the HTTP/2 preface until the server closes it;
/// returns how long that took, or `None` if it stayed open for `within`.
async fn closed_within(addr: &str, within: std::time::Duration) -> Option<std::time::Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&h2raw::start()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(within, async {
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_and_the_connection_cap_holds() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--isolation",
        "process",
        "--connection-idle-timeout",
        "10",
        "--max-connections",
        "3",
        "--metrics-address",
        "127.0.0.1:0",
    ];
    let mut superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &flags);
    let out = superlink
        .proc
        .wait_for_output("Metrics serving", std::time::Duration::from_secs(10));
    let metrics = flwr_testkit::federation::logged_address(&out, "Metrics serving");
    // An idle connection goes after about ten seconds.
    let took = closed_within(&superlink.fleet, std::time::Duration::from_secs(60))
        .await
        .expect("the idle connection is closed");
    assert!(took >= std::time::Duration::from_millis(9900), "{took:?}");
    // Its place is given back once the server has let go of it (after the client saw it close).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = flwr_testkit::metrics::scrape(&metrics);
        let open =
            flwr_testkit::metrics::value(&text, "flwr_connections_open", &[("api", "fleet")]);
        if open.unwrap_or(0.0) == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Three connections are held; a fourth is closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(&superlink.fleet)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, &h2raw::start())
            .await
            .unwrap();
        held.push(tcp);
    }
    // Each of the three is served (the server's HTTP/2 preface arrives), so it is counted
    // before the fourth one comes.
    for tcp in &mut held {
        let mut preface = [0u8; 9];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_exact(tcp, &mut preface),
        )
        .await
        .expect("a held connection is served")
        .unwrap();
    }
    // "At once": well before the idle timeout would close it (with room for a loaded machine).
    let took = closed_within(&superlink.fleet, std::time::Duration::from_secs(8))
        .await
        .expect("a connection over the cap is closed before the idle timeout");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
    drop(held);
}

/// Starts the SuperLink with ServerAppIo on `appio` and these flags; returns its output once it
/// serves.
fn started_output(appio: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = flwr_testkit::process::command(BIN);
    cmd.args(["--insecure", "--isolation", "process"])
        .args(["--serverappio-api-address", appio])
        .args(["--fleet-api-address", "127.0.0.1:0"])
        .args(["--control-api-address", "127.0.0.1:0"])
        .args(extra)
        .env("FLWR_HOME", dir.path())
        .env("NO_COLOR", "1");
    let mut p = flwr_testkit::process::Proc::spawn("superlink", cmd);
    p.wait_for_output(
        "Fleet API (grpc-rere) serving",
        std::time::Duration::from_secs(30),
    )
}

#[test]
fn an_exposed_serverappio_is_named_at_start_unless_restricted() {
    let warning = "has no authentication and listens beyond this machine";
    // Flower's default, every interface: warned, with what to do.
    let out = started_output("0.0.0.0:0", &[]);
    assert!(
        out.contains(warning) && out.contains("--serverappio-api-allowed-networks"),
        "{out}"
    );
    // The loopback, or an allow-list: no warning.
    assert!(!started_output("127.0.0.1:0", &[]).contains(warning));
    let out = started_output(
        "0.0.0.0:0",
        &["--serverappio-api-allowed-networks", "127.0.0.1,10.0.0.0/8"],
    );
    assert!(!out.contains(warning), "{out}");
}

/// A heartbeat of `node` signed by `key`, with `signature` in place of the real one when given.
fn heartbeat(
    key: &NodeSigningKey,
    node: u64,
    signature: Option<&[u8]>,
    timestamp: Option<String>,
) -> tonic::Request<pb::SendNodeHeartbeatRequest> {
    let mut r = signed(
        key,
        pb::SendNodeHeartbeatRequest {
            node: Some(pb::Node { node_id: node }),
            heartbeat_interval: 30.0,
        },
        timestamp,
    );
    if let Some(sig) = signature {
        r.metadata_mut().insert_bin(
            flwr_transport::node_auth::SIGNATURE_HEADER,
            tonic::metadata::MetadataValue::from_bytes(sig),
        );
    }
    r
}

/// `--fleet-auth-per-connection` (off by default): a signature verified on a connection vouches
/// for its key on that connection only. The attack it must stop: another connection presenting
/// the verified public key (public keys are not secret) with a bad signature.
#[tokio::test(flavor = "multi_thread")]
async fn a_verified_signature_vouches_only_for_its_own_connection() {
    const BAD: &[u8] = b"not a signature";
    let stale = || {
        Some(flwr_transport::node_auth::format_timestamp(
            chrono::Utc::now() - chrono::Duration::seconds(600),
        ))
    };

    // Off by default: every call is verified, also on a connection that verified before.
    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(BIN.as_ref(), None, dir.path(), &["--isolation", "process"]);
    let key = NodeSigningKey::generate();
    let node = join(&superlink.fleet, &key).await;
    let mut conn = fleet_client(&superlink.fleet);
    conn.send_node_heartbeat(heartbeat(&key, node, None, None))
        .await
        .unwrap();
    let refused = conn
        .send_node_heartbeat(heartbeat(&key, node, Some(BAD), None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    drop(superlink);

    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(
        BIN.as_ref(),
        None,
        dir.path(),
        &["--isolation", "process", "--fleet-auth-per-connection"],
    );
    assert!(
        superlink
            .proc
            .output()
            .contains("is safe only if no proxy in front of the Fleet API"),
        "the start-up warning says when the mode is safe"
    );
    let key = NodeSigningKey::generate();
    let node = join(&superlink.fleet, &key).await;
    let mut first = fleet_client(&superlink.fleet);
    first
        .send_node_heartbeat(heartbeat(&key, node, None, None))
        .await
        .unwrap();
    // The same connection and key: the signature is not checked again...
    first
        .send_node_heartbeat(heartbeat(&key, node, Some(BAD), None))
        .await
        .unwrap();
    // ...but the time window still is.
    let refused = first
        .send_node_heartbeat(heartbeat(&key, node, Some(BAD), stale()))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::Unauthenticated, "Invalid timestamp")
    );
    // The attack: a second connection presents the verified key with a bad signature.
    let mut second = fleet_client(&superlink.fleet);
    let refused = second
        .send_node_heartbeat(heartbeat(&key, node, Some(BAD), None))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::Unauthenticated, "Invalid signature")
    );
    // Another key on the first connection is verified in full too.
    let other = NodeSigningKey::generate();
    let other_node = join(&superlink.fleet, &other).await;
    let refused = first
        .send_node_heartbeat(heartbeat(&other, other_node, Some(BAD), None))
        .await
        .unwrap_err();
    assert_eq!(refused.message(), "Invalid signature");
    // An unregistered node is refused at once, whatever its connection proved.
    let mut control = pb::control_client::ControlClient::new(channel(&superlink.control));
    control
        .unregister_node(pb::UnregisterNodeRequest { node_id: node })
        .await
        .unwrap();
    let refused = first
        .send_node_heartbeat(heartbeat(&key, node, None, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}
