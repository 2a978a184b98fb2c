//! `--metrics-address` without Python: a node joins, a run starts, a forged signature is
//! refused, and the scrape says so (calls by method and code, signature checks, nodes and runs
//! by status, the SQLite engine's calls). The real federations check the rest (see federation.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::{fleet_client, join, running_run, signed};
use flwr_proto::proto as pb;
use flwr_testkit::federation::{logged_address, SuperLink};
use flwr_testkit::metrics::{scrape, value};
use flwr_transport::node_auth::NodeSigningKey;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

#[tokio::test(flavor = "multi_thread")]
async fn the_scrape_counts_calls_signatures_nodes_runs_and_state_calls() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut superlink = SuperLink::start(
        BIN.as_ref(),
        None,
        dir.path(),
        &[
            "--isolation",
            "process",
            "--database",
            db.to_str().unwrap(),
            "--metrics-address",
            "127.0.0.1:0",
        ],
    );
    let out = superlink
        .proc
        .wait_for_output("Metrics serving", std::time::Duration::from_secs(10));
    let metrics = logged_address(&out, "Metrics serving");

    let key = NodeSigningKey::generate();
    let node = join(&superlink.fleet, &key).await;
    let (run_id, _token) = running_run(&superlink.control, &superlink.serverappio).await;
    // Signed by another key than the one it names: refused.
    let mut forged = signed(
        &NodeSigningKey::generate(),
        pb::SendNodeHeartbeatRequest {
            node: Some(pb::Node { node_id: node }),
            heartbeat_interval: 30.0,
        },
        None,
    );
    forged.metadata_mut().insert_bin(
        flwr_transport::node_auth::PUBLIC_KEY_HEADER,
        tonic::metadata::MetadataValue::from_bytes(key.public_key_pem()),
    );
    let refused = fleet_client(&superlink.fleet)
        .send_node_heartbeat(forged)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // The same signed call twice (a replay): verified once, then found among the verified
    // signatures; a forged signature with the same key and timestamp is still refused.
    let once = signed(
        &key,
        pb::SendNodeHeartbeatRequest {
            node: Some(pb::Node { node_id: node }),
            heartbeat_interval: 30.0,
        },
        None,
    );
    let headers = once.metadata().clone();
    let body = *once.get_ref();
    for _ in 0..2 {
        let again = tonic::Request::from_parts(headers.clone(), tonic::Extensions::default(), body);
        fleet_client(&superlink.fleet)
            .send_node_heartbeat(again)
            .await
            .unwrap();
    }
    let mut forged_again =
        tonic::Request::from_parts(headers.clone(), tonic::Extensions::default(), body);
    forged_again.metadata_mut().insert_bin(
        flwr_transport::node_auth::SIGNATURE_HEADER,
        tonic::metadata::MetadataValue::from_bytes(&NodeSigningKey::generate().sign(b"x")),
    );
    let refused_again = fleet_client(&superlink.fleet)
        .send_node_heartbeat(forged_again)
        .await
        .unwrap_err();
    assert_eq!(refused_again.code(), tonic::Code::Unauthenticated);
    // Paths outside the schema, made up by the peer: one label for all of them.
    for path in [
        "/flwr.proto.Fleet/Invented1",
        "/flwr.proto.Fleet/Invented2",
        "/no.such.Service/Anything",
    ] {
        let mut grpc = tonic::client::Grpc::new(common::channel(&superlink.fleet));
        grpc.ready().await.unwrap();
        let answer: Result<tonic::Response<pb::Node>, _> = grpc
            .unary(
                tonic::Request::new(pb::Node { node_id: 1 }),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await;
        assert!(answer.is_err(), "{path}");
    }

    let text = scrape(&metrics);
    assert!(
        !text.contains("Invented") && !text.contains("Anything"),
        "{text}"
    );
    let count = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels).unwrap_or(0.0);
    let unknown: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("flwr_rpc_duration_seconds_count{")
                && l.contains("api=\"fleet\"")
                && l.contains("method=\"unknown\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(unknown, 3.0, "{text}");
    let calls = |api: &str, method: &str, code: &str| {
        count(
            "flwr_rpc_duration_seconds_count",
            &[("api", api), ("method", method), ("code", code)],
        )
    };
    assert_eq!(calls("fleet", "RegisterNode", "OK"), 1.0, "{text}");
    assert_eq!(calls("fleet", "ActivateNode", "OK"), 1.0, "{text}");
    assert_eq!(
        calls("fleet", "SendNodeHeartbeat", "UNAUTHENTICATED"),
        2.0,
        "{text}"
    );
    assert_eq!(calls("fleet", "SendNodeHeartbeat", "OK"), 2.0, "{text}");
    assert_eq!(calls("control", "StartRun", "OK"), 1.0, "{text}");
    assert_eq!(calls("serverappio", "PullAppInputs", "OK"), 1.0, "{text}");
    assert_eq!(
        count("flwr_signature_checks_total", &[("outcome", "valid")]),
        3.0,
        "{text}"
    );
    assert_eq!(
        count("flwr_signature_checks_total", &[("outcome", "cached")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        count("flwr_signature_checks_total", &[("outcome", "invalid")]),
        2.0,
        "{text}"
    );
    assert_eq!(count("flwr_nodes", &[("status", "online")]), 1.0, "{text}");
    assert_eq!(
        count("flwr_runs", &[("status", "running"), ("sub_status", "")]),
        1.0,
        "run {run_id}: {text}"
    );
    assert!(
        count(
            "flwr_state_call_duration_seconds_count",
            &[("engine", "sqlite"), ("outcome", "ok")]
        ) > 5.0,
        "{text}"
    );
}
