//! `--log-format json`: every line the SuperLink writes is one JSON object, and what it logs
//! while serving a call carries the call's span: API, method, peer, and the node and run once
//! the call has named them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{fleet_client, join, running_run, signed};
use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_transport::node_auth::NodeSigningKey;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

#[tokio::test(flavor = "multi_thread")]
async fn json_lines_with_the_rpc_span_of_node_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(
        BIN.as_ref(),
        None,
        dir.path(),
        &["--isolation", "process", "--log-format", "json"],
    );
    let key = NodeSigningKey::generate();
    let node = join(&superlink.fleet, &key).await;
    let (run_id, _token) = running_run(&superlink.control, &superlink.serverappio).await;
    // A confirm of an instruction that was never delivered to this node: warned about, inside
    // the call's span.
    fleet_client(&superlink.fleet)
        .confirm_message_received(signed(
            &key,
            pb::ConfirmMessageReceivedRequest {
                node: Some(pb::Node { node_id: node }),
                run_id,
                message_object_id: "ab".repeat(32),
            },
            None,
        ))
        .await
        .unwrap();

    let warned = "confirm of an instruction not delivered to this node";
    let start = Instant::now();
    while !superlink.proc.output().contains(warned) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            superlink.proc.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    superlink
        .proc
        .signal(flwr_testkit::process::Signal::SIGTERM);
    let out = superlink.proc.output();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{out}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
    let line = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(warned))
        })
        .unwrap();
    let span = &line["span"];
    assert_eq!(span["name"], "rpc", "{line}");
    assert_eq!(span["api"], "fleet", "{line}");
    assert_eq!(span["method"], "ConfirmMessageReceived", "{line}");
    assert_eq!(span["node_id"], node, "{line}");
    assert_eq!(span["run_id"], run_id, "{line}");
    assert!(
        span["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
}
