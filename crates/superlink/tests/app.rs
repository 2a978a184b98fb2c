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

/// A `--simulation` SuperLink on SQLite, in process.
async fn simulation_app(dir: &std::path::Path) -> App {
    let parsed = cli::parse_from([
        "superlink",
        "--insecure",
        "--simulation",
        "--isolation",
        "process",
        "--control-api-address",
        "127.0.0.1:0",
        "--serverappio-api-address",
        "127.0.0.1:0",
        "--database",
        dir.join("state.db").to_str().unwrap(),
        "--storage-dir",
        dir.join("ffs").to_str().unwrap(),
    ])
    .unwrap();
    let (config, _warnings) = config::from_parsed(&parsed).unwrap();
    App::build(config).await.unwrap()
}

async fn shown_simulation_config(control: &str) -> pb::SimulationConfig {
    pb::control_client::ControlClient::new(channel(control))
        .show_federation(pb::ShowFederationRequest {
            federation_name: "@none/default".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .federation
        .unwrap()
        .config
        .expect("a simulation federation shows its settings")
}

/// The settings a simulation run hands to the simulation with its inputs.
async fn run_simulation_config(
    control: &str,
    serverappio: &str,
    overrides: Option<pb::SimulationConfig>,
) -> pb::SimulationConfig {
    let request = pb::StartRunRequest {
        override_federation_config: overrides,
        ..common::start_run_request()
    };
    let (_, _, inputs) = common::start_and_pull(control, serverappio, request).await;
    inputs
        .federation_config
        .expect("a simulation run carries the federation's settings")
}

/// `flwr federation simulation-config` is stored with the state: `ShowFederation` shows it, every
/// new run carries it (with the run's own `--federation-config` on top, as Flower resolves them)
/// to the simulation, and a restart on the same database keeps it.
#[tokio::test(flavor = "multi_thread")]
async fn simulation_settings_are_stored_and_carried_into_runs() {
    let dir = tempfile::tempdir().unwrap();
    let app = simulation_app(dir.path()).await;
    let (control, serverappio) = (
        app.addresses().control.to_string(),
        app.addresses().serverappio.to_string(),
    );
    let running = app.spawn();

    let defaults = shown_simulation_config(&control).await;
    assert_eq!(defaults.num_supernodes, Some(10), "Flower's defaults");
    assert_eq!(defaults.backend.as_deref(), Some("ray"));
    pb::control_client::ControlClient::new(channel(&control))
        .configure_simulation_federation(pb::ConfigureSimulationFederationRequest {
            federation_name: "@none/default".to_owned(),
            config: Some(pb::SimulationConfig {
                num_supernodes: Some(3),
                verbose: Some(true),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let set = shown_simulation_config(&control).await;
    assert_eq!(set.num_supernodes, Some(3));
    assert_eq!(set.verbose, Some(true));
    assert_eq!(
        set.client_resources_num_cpus,
        Some(2),
        "unset fields keep theirs"
    );

    let plain = run_simulation_config(&control, &serverappio, None).await;
    assert_eq!(
        plain, set,
        "a run without overrides takes the federation's settings"
    );
    let overridden = run_simulation_config(
        &control,
        &serverappio,
        Some(pb::SimulationConfig {
            num_supernodes: Some(5),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        overridden.num_supernodes,
        Some(5),
        "the run's own override wins"
    );
    assert_eq!(
        overridden.verbose,
        Some(true),
        "the rest from the federation"
    );
    assert!(running.shutdown(Duration::from_secs(10)).await);

    let app = simulation_app(dir.path()).await;
    let control = app.addresses().control.to_string();
    let running = app.spawn();
    assert_eq!(
        shown_simulation_config(&control).await,
        set,
        "kept across a restart"
    );
    assert!(running.shutdown(Duration::from_secs(10)).await);
}
