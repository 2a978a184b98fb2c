//! `--otlp-endpoint`: the SuperLink exports a span per gRPC call over OTLP/gRPC, with the call's
//! method, node and run as attributes and its status. An OTLP receiver of the test's own stands
//! in for the collector; the last spans arrive when the SuperLink stops (SIGTERM).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{fleet_client, join, running_run, signed};
use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_testkit::process::Signal;
use flwr_transport::node_auth::NodeSigningKey;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

#[derive(Clone, Default)]
struct Receiver {
    /// (service name, span) of everything exported.
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let v = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .clone()?;
    Some(match v.value? {
        Value::StringValue(s) => s,
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_is_a_span_with_its_node_and_run() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(
        BIN.as_ref(),
        None,
        dir.path(),
        &["--isolation", "process", "--otlp-endpoint", &endpoint],
    );
    let key = NodeSigningKey::generate();
    let node = join(&superlink.fleet, &key).await;
    fleet_client(&superlink.fleet)
        .send_node_heartbeat(signed(
            &key,
            pb::SendNodeHeartbeatRequest {
                node: Some(pb::Node { node_id: node }),
                heartbeat_interval: 30.0,
            },
            None,
        ))
        .await
        .unwrap();
    let (run_id, _) = running_run(&superlink.control, &superlink.serverappio).await;
    superlink.proc.signal(Signal::SIGTERM);
    let (status, out) = superlink.proc.wait(Duration::from_secs(30));
    assert!(status.success(), "{out}");

    let spans = receiver.spans.lock().unwrap().clone();
    server.abort();
    let activate = spans
        .iter()
        .find(|(_, s)| attribute(s, "method").as_deref() == Some("ActivateNode"))
        .unwrap_or_else(|| panic!("no ActivateNode span among {spans:#?}\n{out}"));
    assert_eq!(activate.0, "flwr-superlink");
    assert_eq!(activate.1.name, "rpc");
    assert_eq!(attribute(&activate.1, "api").as_deref(), Some("fleet"));
    assert_eq!(attribute(&activate.1, "code").as_deref(), Some("OK"));
    assert!(activate.1.end_time_unix_nano >= activate.1.start_time_unix_nano);
    let inputs = spans
        .iter()
        .find(|(_, s)| attribute(s, "method").as_deref() == Some("PullAppInputs"))
        .unwrap_or_else(|| panic!("no PullAppInputs span among {spans:#?}"));
    assert_eq!(
        attribute(&inputs.1, "run_id"),
        Some(run_id.to_string()),
        "{:#?}",
        inputs.1
    );
    // A call of a node that has joined carries its id (as a number, or as text when it does
    // not fit OTLP's signed integers).
    let heartbeat = spans
        .iter()
        .find(|(_, s)| attribute(s, "method").as_deref() == Some("SendNodeHeartbeat"))
        .unwrap_or_else(|| panic!("no SendNodeHeartbeat span among {spans:#?}"));
    let id = attribute(&heartbeat.1, "node_id");
    assert!(
        id == Some(node.to_string()) || id == Some((node as i64).to_string()),
        "node {node}: {:#?}",
        heartbeat.1
    );
}

/// An endpoint it cannot use is refused at start, naming the flag and what it takes.
#[test]
fn an_unusable_endpoint_is_refused_at_start() {
    for (endpoint, why) in [
        (
            "https://collector:4317",
            "only http://HOST:PORT is supported",
        ),
        ("collector:4317", "only http://HOST:PORT is supported"),
        ("http://", "not a URL"),
    ] {
        let (status, out) = flwr_testkit::process::run(std::process::Command::new(BIN).args([
            "--insecure",
            "--otlp-endpoint",
            endpoint,
        ]));
        assert_eq!(status.code(), Some(1), "{endpoint}: {out}");
        assert!(
            out.contains(&format!("`--otlp-endpoint` '{endpoint}': {why}"))
                && out.contains("e.g. http://127.0.0.1:4317"),
            "{endpoint}: {out}"
        );
    }
}
