//! `App` in process: built from a command line on port-0 addresses, served, and drained, with
//! no child process. A node joins, a run goes through its token to running, the node sees it;
//! the health service says SERVING; the shutdown drains within its grace and closes the ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{channel, join, running_run, signed};
use flwr_proto::proto as pb;
use flwr_superlink::app::App;
use flwr_superlink::{cli, config};
use flwr_transport::node_auth::NodeSigningKey;

#[tokio::test(flavor = "multi_thread")]
async fn the_app_serves_on_port_0_and_drains_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("ffs");
    let parsed = cli::parse_from([
        "superlink",
        "--insecure",
        "--isolation",
        "process",
        "--control-api-address",
        "127.0.0.1:0",
        "--serverappio-api-address",
        "127.0.0.1:0",
        "--fleet-api-address",
        "127.0.0.1:0",
        "--health-server-address",
        "127.0.0.1:0",
        "--storage-dir",
        storage.to_str().unwrap(),
    ])
    .unwrap();
    let (config, _warnings) = config::from_parsed(&parsed).unwrap();
    let app = App::build(config).await.unwrap();
    let bound = app.addresses();
    for port in [bound.control, bound.serverappio, bound.fleet.unwrap()] {
        assert_ne!(port.port(), 0, "the bound port, not the asked one");
    }
    let health = bound.health.unwrap().to_string();
    let (control, serverappio, fleet) = (
        bound.control.to_string(),
        bound.serverappio.to_string(),
        bound.fleet.unwrap().to_string(),
    );
    let running = app.spawn();

    let key = NodeSigningKey::generate();
    let node = join(&fleet, &key).await;
    let (run_id, _token) = running_run(&control, &serverappio).await;
    let run = common::fleet_client(&fleet)
        .get_run(signed(
            &key,
            pb::GetRunRequest {
                node: Some(pb::Node { node_id: node }),
                run_id,
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.run_id, run_id);
    assert_eq!(run.status.unwrap().status, "running");

    let serving = flwr_transport::health::check(channel(&health))
        .await
        .unwrap();
    assert!(serving, "the health service says SERVING");
    assert!(
        running.shutdown(Duration::from_secs(10)).await,
        "drained in time"
    );
    assert!(
        std::net::TcpStream::connect(&control).is_err(),
        "the Control API is closed"
    );
}
