//! `--fleet-api-type rest` on the wire: Flower's paths (also with the doubled slash of its REST
//! SuperNode), its header checks and texts, signed and unsigned calls, and bad requests (unknown
//! paths, wrong methods, truncated and oversized bodies, wrong signatures, unsigned calls under
//! `--enable-supernode-auth`), each answered with a clear status while the state stays whole.
//! (Flower's own REST SuperNodes against ours: `federation.rs`; ours against Flower's REST
//! SuperLink: the SuperNode's federation tests.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use bytes::Bytes;
use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_testkit::pki;
use flwr_transport::node_auth::NodeSigningKey;
use flwr_transport::rest::RestClient;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use prost::Message as _;

mod common;
use common::signed;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");
const PROTOBUF: &str = "application/protobuf";

struct Answer {
    status: StatusCode,
    grpc_status: Option<i32>,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// POSTs `body` to `path` with `headers` (the signature's, and the media types unless
/// `media` is false).
async fn post(
    client: &RestClient,
    method: http::Method,
    path: &str,
    headers: http::HeaderMap,
    media: Option<&str>,
    body: Bytes,
) -> Answer {
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = format!("http://superlink{path}").parse().unwrap();
    request.headers_mut().extend(headers);
    if let Some(media) = media {
        let v = http::HeaderValue::from_str(media).unwrap();
        request
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, v.clone());
        request.headers_mut().insert(http::header::ACCEPT, v);
    }
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        grpc_status,
        body,
    }
}

/// A Fleet call through REST, signed by `key` (unsigned when `None`).
async fn call<T: prost::Message>(
    client: &RestClient,
    key: Option<&NodeSigningKey>,
    path: &str,
    body: T,
) -> Answer {
    let headers = match key {
        Some(k) => signed(k, (), None).metadata().clone().into_headers(),
        None => http::HeaderMap::new(),
    };
    post(
        client,
        http::Method::POST,
        path,
        headers,
        Some(PROTOBUF),
        body.encode_to_vec().into(),
    )
    .await
}

fn ok<R: prost::Message + Default>(a: Answer) -> R {
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.grpc_status, Some(0));
    R::decode(a.body).unwrap()
}

fn refused(a: &Answer, status: StatusCode, grpc: Option<i32>, text: &str) {
    assert_eq!(a.status, status, "{}", a.text());
    assert_eq!(a.grpc_status, grpc, "{}", a.text());
    assert!(a.text().contains(text), "{:?} in {}", text, a.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_serves_flowers_paths_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let superlink = SuperLink::start(
        BIN.as_ref(),
        None,
        dir.path(),
        &["--isolation", "process", "--fleet-api-type", "rest"],
    );
    let address = superlink.fleet.parse().unwrap();
    let client = flwr_transport::rest::client(&address, None);
    let key = NodeSigningKey::generate();
    let public_key = Bytes::copy_from_slice(key.public_key_pem());

    // Signed, as our SuperNode calls; the doubled slash of Flower's REST SuperNode is accepted.
    let registered: pb::RegisterNodeFleetResponse = ok(call(
        &client,
        Some(&key),
        "//api/v0/fleet/register-node",
        pb::RegisterNodeFleetRequest {
            public_key: public_key.clone(),
        },
    )
    .await);
    let activated: pb::ActivateNodeResponse = ok(call(
        &client,
        Some(&key),
        "/api/v0/fleet/activate-node",
        pb::ActivateNodeRequest {
            public_key: public_key.clone(),
            heartbeat_interval: 30.0,
        },
    )
    .await);
    assert_eq!(registered.node_id, activated.node_id);
    let node = Some(pb::Node {
        node_id: activated.node_id,
    });
    // Unsigned, as Flower's REST SuperNode calls: taken to come from the node the body names.
    let pulled: pb::PullMessagesResponse = ok(call(
        &client,
        None,
        "//api/v0/fleet/pull-messages",
        pb::PullMessagesRequest {
            node,
            message_ids: Vec::new(),
        },
    )
    .await);
    assert!(pulled.messages_list.is_empty());

    // Flower's routing and header checks, with its texts.
    let get = post(
        &client,
        http::Method::GET,
        "/api/v0/fleet/pull-messages",
        http::HeaderMap::new(),
        Some(PROTOBUF),
        Bytes::new(),
    )
    .await;
    refused(
        &get,
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        "Method Not Allowed",
    );
    let unknown = call(&client, Some(&key), "/api/v0/fleet/steal-everything", ()).await;
    refused(&unknown, StatusCode::NOT_FOUND, None, "Not Found");
    let no_media = post(
        &client,
        http::Method::POST,
        "/api/v0/fleet/pull-messages",
        http::HeaderMap::new(),
        None,
        Bytes::new(),
    )
    .await;
    refused(
        &no_media,
        StatusCode::BAD_REQUEST,
        None,
        "Missing header `Content-Type`",
    );
    let json = post(
        &client,
        http::Method::POST,
        "/api/v0/fleet/pull-messages",
        http::HeaderMap::new(),
        Some("application/json"),
        Bytes::new(),
    )
    .await;
    refused(
        &json,
        StatusCode::BAD_REQUEST,
        None,
        "Unsupported `Content-Type`",
    );

    // A truncated body, an oversized join, a wrong signature, a node that is not the signer's.
    let truncated = post(
        &client,
        http::Method::POST,
        "/api/v0/fleet/pull-messages",
        signed(&key, (), None).metadata().clone().into_headers(),
        Some(PROTOBUF),
        Bytes::from_static(b"\x0a\x05\x08"),
    )
    .await;
    // As Flower's REST server answers a body that does not parse (500), with the code the
    // grpc-adapter gives it (UNKNOWN, like the exception Flower raises).
    refused(
        &truncated,
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(tonic::Code::Unknown as i32),
        "Error parsing message with type 'flwr.proto.PullMessagesRequest'",
    );
    let oversized = call(
        &client,
        Some(&key),
        "/api/v0/fleet/register-node",
        pb::RegisterNodeFleetRequest {
            public_key: vec![b'k'; 200 * 1024].into(),
        },
    )
    .await;
    refused(
        &oversized,
        StatusCode::PAYLOAD_TOO_LARGE,
        Some(tonic::Code::ResourceExhausted as i32),
        "RegisterNode",
    );
    let mut forged = signed(&key, (), None).metadata().clone().into_headers();
    let other = signed(&NodeSigningKey::generate(), (), None)
        .metadata()
        .clone()
        .into_headers();
    forged.insert(
        flwr_transport::node_auth::SIGNATURE_HEADER,
        other[flwr_transport::node_auth::SIGNATURE_HEADER].clone(),
    );
    let forged = post(
        &client,
        http::Method::POST,
        "/api/v0/fleet/pull-messages",
        forged,
        Some(PROTOBUF),
        pb::PullMessagesRequest {
            node,
            message_ids: Vec::new(),
        }
        .encode_to_vec()
        .into(),
    )
    .await;
    refused(
        &forged,
        StatusCode::UNAUTHORIZED,
        Some(tonic::Code::Unauthenticated as i32),
        "",
    );
    let not_mine = call(
        &client,
        Some(&key),
        "/api/v0/fleet/send-node-heartbeat",
        pb::SendNodeHeartbeatRequest {
            node: Some(pb::Node { node_id: 12345 }),
            heartbeat_interval: 30.0,
        },
    )
    .await;
    refused(
        &not_mine,
        StatusCode::UNAUTHORIZED,
        Some(tonic::Code::Unauthenticated as i32),
        "Invalid node ID",
    );

    // The state is whole: the node still beats, signed or not.
    for k in [Some(&key), None] {
        let beat: pb::SendNodeHeartbeatResponse = ok(call(
            &client,
            k,
            "/api/v0/fleet/send-node-heartbeat",
            pb::SendNodeHeartbeatRequest {
                node,
                heartbeat_interval: 30.0,
            },
        )
        .await);
        assert!(beat.success);
    }
    let log = superlink.proc.output();
    assert!(!log.contains("panicked"), "{log}");
}

/// Under `--enable-supernode-auth` (TLS), an unsigned REST call is refused before its body is
/// read, and a key that is not registered cannot join.
#[tokio::test(flavor = "multi_thread")]
async fn rest_under_supernode_auth_takes_only_signed_calls_of_registered_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, tls) = pki::write_tls_files(&dir.path().join("certificates"), pki::LOCAL_SANS);
    let superlink = SuperLink::start(
        BIN.as_ref(),
        Some(&tls),
        &dir.path().join("home"),
        &[
            "--isolation",
            "process",
            "--fleet-api-type",
            "rest",
            "--enable-supernode-auth",
        ],
    );
    let roots = flwr_transport::tls::load_client_config(
        &flwr_transport::tls::ClientTlsChoice::RootCertificates(tls.ca.clone()),
    )
    .unwrap()
    .unwrap();
    let address = superlink.fleet.parse().unwrap();
    let client = flwr_transport::rest::client(&address, Some(roots.config));
    let key = NodeSigningKey::generate();
    let public_key = Bytes::copy_from_slice(key.public_key_pem());
    let unsigned = call(
        &client,
        None,
        "//api/v0/fleet/register-node",
        pb::RegisterNodeFleetRequest {
            public_key: public_key.clone(),
        },
    )
    .await;
    refused(
        &unsigned,
        StatusCode::UNAUTHORIZED,
        Some(tonic::Code::Unauthenticated as i32),
        "metadata",
    );
    let unregistered = call(
        &client,
        Some(&key),
        "/api/v0/fleet/activate-node",
        pb::ActivateNodeRequest {
            public_key,
            heartbeat_interval: 30.0,
        },
    )
    .await;
    assert_ne!(
        unregistered.status,
        StatusCode::OK,
        "{}",
        unregistered.text()
    );
    assert!(
        unregistered
            .text()
            .contains("No SuperNode found with the given public key"),
        "{}",
        unregistered.text()
    );
}
