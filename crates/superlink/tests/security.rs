//! The security findings, each as a test against the real binary: what an unauthenticated or
//! hostile peer can make the SuperLink hold, what a node may touch, what callers are told.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use bytes::Bytes;
use common::{channel, signed};
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

fn fleet_client(addr: &str) -> pb::fleet_client::FleetClient<tonic::transport::Channel> {
    flwr_transport::limits!(pb::fleet_client::FleetClient::new(channel(addr)))
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
    assert!(superlink.proc.try_status().is_none(), "still serving");
}

/// Registers and activates a node for `key` through the Fleet API; returns its id.
async fn join(fleet: &str, key: &NodeSigningKey) -> u64 {
    let mut client = fleet_client(fleet);
    let public_key = Bytes::copy_from_slice(key.public_key_pem());
    client
        .register_node(signed(
            key,
            pb::RegisterNodeFleetRequest {
                public_key: public_key.clone(),
            },
            None,
        ))
        .await
        .unwrap();
    client
        .activate_node(signed(
            key,
            pb::ActivateNodeRequest {
                public_key,
                heartbeat_interval: 30.0,
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .node_id
}
