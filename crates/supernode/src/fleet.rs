//! The Fleet API client: every call signed as Flower's SuperNode signs it, and retried with
//! Flower's policy (exponential backoff with full jitter, capped at 20 s, within
//! `--max-retries` / `--max-wait-time`; a TLS handshake failure ends at once). The SuperNode's
//! edge: what it returns is in the object model, not protobuf.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flwr_objects::message::MessageMeta;
use flwr_objects::store::Lookup;
use flwr_objects::{ConfigValue, ObjectTree};
use flwr_proto::adapter;
use flwr_proto::convert::{
    config_from_pb, lookup_from_pb, message_from_pb, message_to_pb, tree_from_pb, tree_to_pb,
};
use flwr_proto::proto as pb;
use flwr_transport::node_auth::{self, NodeSigningKey};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// A pulled instruction and its object tree, or why they cannot be read (Flower's text).
pub type Pulled = Result<(MessageMeta, ObjectTree), String>;

/// A run as `GetRun` describes it.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// The SHA-256 of its FAB (hex).
    pub fab_hash: String,
    /// `publisher/name` of its app.
    pub fab_id: String,
    /// The run config's overrides, or why they cannot be read.
    pub override_config: Result<Vec<(String, ConfigValue)>, String>,
    /// The run as received (encoded `flwr.proto.Run`), handed to ClientApps whole.
    pub encoded: Bytes,
}

/// A FAB as `GetFab` returns it.
#[derive(Clone, Debug)]
pub struct Fab {
    /// The zip.
    pub content: Bytes,
    /// Signatures and licence by key id (Flower Hub's), for `--trusted-entities`.
    pub verifications: HashMap<String, String>,
}

/// What the SuperLink said to a pushed reply.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// False when it refused the reply (its run or instruction is gone).
    pub accepted: bool,
    /// The objects it still needs (hex ids).
    pub objects_to_push: HashSet<String>,
}

/// Largest wait between attempts.
const MAX_BACKOFF: f64 = 20.0;

/// How long and how often to retry.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (`--max-retries` + 1); `None`: no limit.
    pub max_tries: Option<u32>,
    /// Time spent retrying; `None`: no limit.
    pub max_time: Option<Duration>,
}

/// Why a Fleet call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// PERMISSION_DENIED: the run is not running (the message is dropped).
    #[error("run not running: {0}")]
    RunNotRunning(String),
    /// The SuperLink does not know this node (it restarted without its state).
    #[error("the SuperLink does not know this node (Invalid node ID)")]
    InvalidNodeId,
    /// The TLS handshake failed: retrying cannot help.
    #[error(
        "SSL/TLS handshake error detected: {0}. Check that `--root-certificates` holds the CA that signed the \
         SuperLink's certificate and that the certificate names the host of `--superlink` (or use `--insecure` \
         for a plaintext SuperLink)."
    )]
    Handshake(String),
    /// Retries ran out.
    #[error(
        "Giving up reconnection after {seconds:.2} seconds and {tries} tries. Last error: {last}"
    )]
    GaveUp {
        /// Time spent.
        seconds: f64,
        /// Attempts made.
        tries: u32,
        /// The message of the last failure.
        last: String,
    },
    /// Shutdown was requested while waiting.
    #[error("shutting down")]
    Cancelled,
    /// Any other status: not retried.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
    /// `GetRun` answered without the run.
    #[error("the SuperLink sent no run {0} in its GetRun answer")]
    NoRun(u64),
    /// `GetFab` answered without the FAB.
    #[error("the SuperLink sent no FAB {0} in its GetFab answer")]
    NoFab(String),
    /// A call this client cannot make (a method the grpc-adapter does not carry).
    #[error("{0} is not a Fleet method this transport carries")]
    NotCarried(&'static str),
    /// The grpc-adapter answered with another message than the call's.
    #[error("Invalid grpc_message_name. Expected {expected}, but got {got}.")]
    WrongAnswer {
        /// The call's answer type.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// An answer that does not decode.
    #[error("the SuperLink's {what} does not decode: {source}")]
    Undecodable {
        /// The answer type.
        what: &'static str,
        /// The decoder's complaint.
        #[source]
        source: prost::DecodeError,
    },
    /// The connection to the SuperLink cannot take calls any more.
    #[error("the connection to the SuperLink failed: {0}")]
    Channel(#[source] tonic::transport::Error),
}

fn is_transport_failure(s: &Status) -> bool {
    use std::error::Error as _;
    s.code() == Code::Unavailable || (s.code() == Code::Unknown && s.source().is_some())
}

/// Codes a SuperLink answers when it failed, not the request: a hiccup (a database restart, an
/// overloaded replica) that polling calls retry like a lost connection, where Flower's SuperNode
/// would exit. Refusals (PERMISSION_DENIED, UNAUTHENTICATED, INVALID_ARGUMENT, ...) stay final.
fn is_server_failure(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unknown
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// Which failures a call retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Lost connections (UNAVAILABLE), as Flower.
    Connection,
    /// Those and the SuperLink's own failures ([`is_server_failure`]): for joining and the
    /// polling calls, whose failure would otherwise end the node.
    ConnectionAndServer,
}

/// A signed, retrying Fleet client.
#[derive(Clone)]
pub struct Fleet {
    stub: Stub,
    key: Arc<NodeSigningKey>,
    retry: RetryPolicy,
    node_id: Arc<AtomicU64>,
    stop: CancellationToken,
    reuse: Option<SignatureReuse>,
}

/// A signature kept for reuse (see [`Fleet::with_signature_reuse`]).
#[derive(Clone)]
struct SignatureReuse {
    max_age: Duration,
    last: Arc<parking_lot::Mutex<Option<(Instant, node_auth::SignedTimestamp)>>>,
}

impl Fleet {
    /// A client over `channel`, signing with `key`.
    pub fn new(
        channel: Channel,
        key: Arc<NodeSigningKey>,
        retry: RetryPolicy,
        stop: CancellationToken,
    ) -> Self {
        Self {
            stub: Stub::Rere(channel),
            key,
            retry,
            node_id: Arc::new(AtomicU64::new(0)),
            stop,
            reuse: None,
        }
    }

    /// This client on the grpc-adapter transport (`--grpc-adapter`): every call travels as
    /// `GrpcAdapter/SendReceive`, signed as on grpc-rere.
    pub fn via_grpc_adapter(mut self) -> Self {
        if let Stub::Rere(channel) = &self.stub {
            let channel = channel.clone();
            self.stub = Stub::Adapter(flwr_transport::limits!(
                pb::grpc_adapter_client::GrpcAdapterClient::new(channel)
            ));
        }
        self
    }

    /// This client on the REST transport (`--rest`): every call as an HTTP/1.1 POST through
    /// `client`, signed in the same headers as on grpc-rere (a SuperLink started with
    /// `--enable-supernode-auth` checks them; Flower's ignores them).
    pub fn via_rest(mut self, client: flwr_transport::rest::RestClient) -> Self {
        self.stub = Stub::Rest(client);
        self
    }

    /// This client signing once per `max_age` and sending the same signed timestamp until then.
    /// Flower's SuperNode (and ours) signs every call; load generators use this to keep their
    /// own CPU out of the measurement. The SuperLink still verifies every call in full, since
    /// the protocol has no replay protection and so no reason to remember signatures.
    pub fn with_signature_reuse(mut self, max_age: Duration) -> Self {
        self.reuse = Some(SignatureReuse {
            max_age,
            last: Arc::default(),
        });
        self
    }

    fn signature(&self) -> node_auth::SignedTimestamp {
        let Some(reuse) = &self.reuse else {
            return self.key.sign_now();
        };
        let mut last = reuse.last.lock();
        match &*last {
            Some((at, s)) if at.elapsed() < reuse.max_age => s.clone(),
            _ => {
                let s = self.key.sign_now();
                *last = Some((Instant::now(), s.clone()));
                s
            }
        }
    }

    /// This client with another retry policy (sharing the node id).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The node id once activated (0 before).
    pub fn node_id(&self) -> u64 {
        self.node_id.load(Ordering::SeqCst)
    }

    fn node(&self) -> Option<pb::Node> {
        Some(pb::Node {
            node_id: self.node_id(),
        })
    }

    fn signed<T>(&self, body: T) -> Request<T> {
        let s = self.signature();
        let mut r = Request::new(body);
        let md = r.metadata_mut();
        md.insert_bin(
            node_auth::PUBLIC_KEY_HEADER,
            MetadataValue::from_bytes(&s.public_key),
        );
        if let Ok(v) = s.timestamp.parse() {
            md.insert(node_auth::TIMESTAMP_HEADER, v);
        }
        md.insert_bin(
            node_auth::SIGNATURE_HEADER,
            MetadataValue::from_bytes(&s.signature),
        );
        r
    }

    /// One call with the retry policy, retrying lost connections; re-signed per attempt.
    async fn call<T, R>(&self, name: &'static str, body: T) -> Result<R, FleetError>
    where
        T: prost::Message + Clone + 'static,
        R: prost::Message + Default + 'static,
    {
        self.call_retrying(Retry::Connection, name, body).await
    }

    async fn call_retrying<T, R>(
        &self,
        retry: Retry,
        name: &'static str,
        body: T,
    ) -> Result<R, FleetError>
    where
        T: prost::Message + Clone + 'static,
        R: prost::Message + Default + 'static,
    {
        self.call_with_header(retry, name, body, None)
            .await
            .map(|(r, _)| r)
    }

    /// [`Fleet::call_retrying`] with one more request header; also returns the answer's headers
    /// (none on the grpc-adapter and REST transports).
    async fn call_with_header<T, R>(
        &self,
        retry: Retry,
        name: &'static str,
        body: T,
        header: Option<(&'static str, MetadataValue<tonic::metadata::Ascii>)>,
    ) -> Result<(R, tonic::metadata::MetadataMap), FleetError>
    where
        T: prost::Message + Clone + 'static,
        R: prost::Message + Default + 'static,
    {
        let start = Instant::now();
        let mut tries: u32 = 0;
        let mut ceiling = 1.0f64;
        loop {
            tries += 1;
            let attempt = Instant::now();
            let mut request = self.signed(body.clone());
            if let Some((key, value)) = &header {
                request.metadata_mut().insert(*key, value.clone());
            }
            let answer = self.stub.unary(name, request).await;
            record_attempt(name, &answer, attempt.elapsed());
            let status = match answer {
                Ok(r) => return Ok(r),
                Err(Refused::Status(s)) => s,
                Err(Refused::Exit) => {
                    tracing::warn!("{name}: the SuperLink asked this SuperNode to exit");
                    self.stop.cancel();
                    return Err(FleetError::Cancelled);
                }
                Err(Refused::Failed(e)) => return Err(e),
            };
            if let Some(ce) = flwr_transport::grpc::find_connect_error(&status) {
                if ce.is_handshake() {
                    return Err(FleetError::Handshake(ce.to_string()));
                }
            }
            let retried = is_transport_failure(&status)
                || (retry == Retry::ConnectionAndServer && is_server_failure(&status));
            if !retried {
                return Err(match status.code() {
                    Code::PermissionDenied => {
                        FleetError::RunNotRunning(status.message().to_owned())
                    }
                    Code::Unauthenticated if status.message() == "Invalid node ID" => {
                        FleetError::InvalidNodeId
                    }
                    _ => FleetError::Status(status),
                });
            }
            let elapsed = start.elapsed();
            let out_of_tries = self.retry.max_tries.is_some_and(|m| tries >= m);
            let remaining = self
                .retry
                .max_time
                .map(|m| m.saturating_sub(elapsed).as_secs_f64());
            if out_of_tries || remaining.is_some_and(|r| r <= 0.0) {
                let e = FleetError::GaveUp {
                    seconds: elapsed.as_secs_f64(),
                    tries,
                    last: status.message().to_owned(),
                };
                tracing::error!("{e}");
                return Err(e);
            }
            let reason = if is_transport_failure(&status) {
                "connection"
            } else {
                "server"
            };
            metrics::counter!("flwr_fleet_retries_total", "method" => name, "reason" => reason)
                .increment(1);
            let cap = ceiling.min(MAX_BACKOFF).min(remaining.unwrap_or(f64::MAX));
            let wait = rand_unit() * cap;
            ceiling *= 2.0;
            if is_transport_failure(&status) {
                tracing::warn!(
                    "{name}: connection attempt failed ({}), retrying in {wait:.2} seconds",
                    status.message()
                );
            } else {
                tracing::warn!(
                    "{name}: the SuperLink failed ({:?}: {}), retrying in {wait:.2} seconds",
                    status.code(),
                    status.message()
                );
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                () = self.stop.cancelled() => return Err(FleetError::Cancelled),
            }
        }
    }

    /// RegisterNode with this node's key.
    pub async fn register(&self) -> Result<u64, FleetError> {
        let body = pb::RegisterNodeFleetRequest {
            public_key: bytes::Bytes::copy_from_slice(self.key.public_key_pem()),
        };
        let r: pb::RegisterNodeFleetResponse = self
            .call_retrying(Retry::ConnectionAndServer, "RegisterNode", body)
            .await?;
        Ok(r.node_id)
    }

    /// ActivateNode; remembers the node id.
    pub async fn activate(&self, heartbeat_interval: f64) -> Result<u64, FleetError> {
        let body = pb::ActivateNodeRequest {
            public_key: bytes::Bytes::copy_from_slice(self.key.public_key_pem()),
            heartbeat_interval,
        };
        let r: pb::ActivateNodeResponse = self
            .call_retrying(Retry::ConnectionAndServer, "ActivateNode", body)
            .await?;
        self.node_id.store(r.node_id, Ordering::SeqCst);
        Ok(r.node_id)
    }

    /// DeactivateNode.
    pub async fn deactivate(&self) -> Result<(), FleetError> {
        let body = pb::DeactivateNodeRequest {
            node_id: self.node_id(),
        };
        self.call::<_, pb::DeactivateNodeResponse>("DeactivateNode", body)
            .await
            .map(|_| ())
    }

    /// UnregisterNode.
    pub async fn unregister(&self) -> Result<(), FleetError> {
        let body = pb::UnregisterNodeFleetRequest {
            node_id: self.node_id(),
        };
        self.call::<_, pb::UnregisterNodeFleetResponse>("UnregisterNode", body)
            .await
            .map(|_| ())
    }

    /// SendNodeHeartbeat.
    pub async fn heartbeat(&self, interval: f64) -> Result<bool, FleetError> {
        let body = pb::SendNodeHeartbeatRequest {
            node: self.node(),
            heartbeat_interval: interval,
        };
        let r: pb::SendNodeHeartbeatResponse = self
            .call_retrying(Retry::ConnectionAndServer, "SendNodeHeartbeat", body)
            .await?;
        Ok(r.success)
    }

    /// PullMessages: at most one instruction and its tree (or why they cannot be read).
    pub async fn pull_message(&self) -> Result<Option<Pulled>, FleetError> {
        self.pull_message_waiting(None).await.map(|(p, _)| p)
    }

    /// PullMessages, asking the SuperLink to hold the call up to `wait` until an instruction
    /// comes (the long poll of our SuperLinks, [`flwr_transport::grpc::PULL_WAIT_HEADER`]; only
    /// on grpc-rere). Also returns whether the SuperLink says it held it (Flower's never does).
    pub async fn pull_message_waiting(
        &self,
        wait: Option<Duration>,
    ) -> Result<(Option<Pulled>, bool), FleetError> {
        let body = pb::PullMessagesRequest {
            node: self.node(),
            message_ids: Vec::new(),
        };
        let header = match (&self.stub, wait) {
            (Stub::Rere(_), Some(w)) => Some((
                flwr_transport::grpc::PULL_WAIT_HEADER,
                MetadataValue::from(w.as_millis() as u64),
            )),
            _ => None,
        };
        let (r, answer_headers): (pb::PullMessagesResponse, _) = self
            .call_with_header(Retry::ConnectionAndServer, "PullMessages", body, header)
            .await?;
        let held = answer_headers
            .get(flwr_transport::grpc::PULL_WAIT_HEADER)
            .is_some();
        let pulled = match (r.messages_list.first(), r.message_object_trees.first()) {
            (Some(m), Some(t)) => Some(message_from_pb(m).and_then(|m| Ok((m, tree_from_pb(t)?)))),
            _ => None,
        };
        Ok((pulled, held))
    }

    /// GetRun.
    pub async fn get_run(&self, run_id: u64) -> Result<RunInfo, FleetError> {
        let body = pb::GetRunRequest {
            node: self.node(),
            run_id,
        };
        let r: pb::GetRunResponse = self.call("GetRun", body).await?;
        let run = r.run.ok_or(FleetError::NoRun(run_id))?;
        Ok(RunInfo {
            override_config: config_from_pb(&run.override_config),
            encoded: Bytes::from(run.encode_to_vec()),
            fab_hash: run.fab_hash,
            fab_id: run.fab_id,
        })
    }

    /// GetFab.
    pub async fn get_fab(&self, run_id: u64, hash: &str) -> Result<Fab, FleetError> {
        let body = pb::GetFabRequest {
            node: self.node(),
            hash_str: hash.to_owned(),
            run_id,
        };
        let r: pb::GetFabResponse = self.call("GetFab", body).await?;
        let fab = r.fab.ok_or_else(|| FleetError::NoFab(hash.to_owned()))?;
        Ok(Fab {
            content: fab.content,
            verifications: fab.verifications,
        })
    }

    /// PullObject.
    pub async fn pull_object(&self, run_id: u64, object_id: String) -> Result<Lookup, FleetError> {
        let body = pb::PullObjectRequest {
            node: self.node(),
            run_id,
            object_id,
        };
        Ok(lookup_from_pb(self.call("PullObject", body).await?))
    }

    /// ConfirmMessageReceived.
    pub async fn confirm(&self, run_id: u64, message_object_id: String) -> Result<(), FleetError> {
        let body = pb::ConfirmMessageReceivedRequest {
            node: self.node(),
            run_id,
            message_object_id,
        };
        self.call::<_, pb::ConfirmMessageReceivedResponse>("ConfirmMessageReceived", body)
            .await
            .map(|_| ())
    }

    /// PushMessages with one reply.
    pub async fn push_reply(
        &self,
        reply: &MessageMeta,
        tree: &ObjectTree,
        clientapp_runtime: f64,
    ) -> Result<Pushed, FleetError> {
        let body = pb::PushMessagesRequest {
            node: self.node(),
            messages_list: vec![message_to_pb(reply)],
            message_object_trees: vec![tree_to_pb(tree)],
            clientapp_runtime_list: vec![clientapp_runtime],
        };
        let r: pb::PushMessagesResponse = self.call("PushMessages", body).await?;
        Ok(Pushed {
            // The SuperLink answers a refused reply with the id "None".
            accepted: !r.results.contains_key("None"),
            objects_to_push: r.objects_to_push.into_iter().collect(),
        })
    }

    /// PushObject.
    pub async fn push_object(
        &self,
        run_id: u64,
        object_id: String,
        content: bytes::Bytes,
    ) -> Result<bool, FleetError> {
        let body = pb::PushObjectRequest {
            node: self.node(),
            run_id,
            object_id,
            object_content: content,
        };
        let r: pb::PushObjectResponse = self.call("PushObject", body).await?;
        Ok(r.stored)
    }
}

/// The transport under the Fleet calls.
#[derive(Clone)]
enum Stub {
    /// grpc-rere: one gRPC method per Fleet call.
    Rere(Channel),
    /// grpc-adapter: every call packed into `GrpcAdapter/SendReceive`.
    Adapter(pb::grpc_adapter_client::GrpcAdapterClient<Channel>),
    /// REST: `POST /api/v0/fleet/<method>` over HTTP/1.1, signed in the same headers as gRPC.
    Rest(flwr_transport::rest::RestClient),
}

/// Why a call on the [`Stub`] failed.
enum Refused {
    /// The call failed with this status.
    Status(Status),
    /// The SuperLink answered with the adapter's `should-exit` flag.
    Exit,
    /// The call could not be made, or its answer cannot be used.
    Failed(FleetError),
}

/// One attempt of a Fleet call, into the metrics: its duration by method and outcome, and
/// whether the SuperLink was reached.
fn record_attempt<R>(method: &'static str, answer: &Result<R, Refused>, took: Duration) {
    let (code, reached) = match answer {
        Ok(_) => ("OK", true),
        Err(Refused::Status(s)) => (
            flwr_transport::metrics::code_name(s.code()),
            !is_transport_failure(s),
        ),
        Err(Refused::Exit) => ("EXIT", true),
        Err(Refused::Failed(FleetError::Channel(_))) => ("CHANNEL", false),
        Err(Refused::Failed(_)) => ("UNUSABLE", true),
    };
    metrics::histogram!("flwr_fleet_call_duration_seconds", "method" => method, "code" => code)
        .record(took.as_secs_f64());
    metrics::gauge!("flwr_superlink_reachable").set(if reached { 1.0 } else { 0.0 });
}

impl Stub {
    /// Fleet method `method` with `request`.
    async fn unary<T, R>(
        &self,
        method: &'static str,
        request: Request<T>,
    ) -> Result<(R, tonic::metadata::MetadataMap), Refused>
    where
        T: prost::Message + 'static,
        R: prost::Message + Default + 'static,
    {
        match self {
            Stub::Rere(channel) => {
                let mut grpc = flwr_transport::limits!(tonic::client::Grpc::new(channel.clone()));
                grpc.ready()
                    .await
                    .map_err(|e| Refused::Failed(FleetError::Channel(e)))?;
                let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
                    "/flwr.proto.Fleet/{method}"
                ))
                .map_err(|_| Refused::Failed(FleetError::NotCarried(method)))?;
                grpc.unary(request, path, tonic_prost::ProstCodec::default())
                    .await
                    .map(|r| {
                        let (headers, body, _) = r.into_parts();
                        (body, headers)
                    })
                    .map_err(Refused::Status)
            }
            Stub::Adapter(client) => {
                let rpc = adapter::by_method(method)
                    .ok_or(Refused::Failed(FleetError::NotCarried(method)))?;
                let (metadata, extensions, body) = request.into_parts();
                let container =
                    adapter::container(rpc.request, rpc.module, body.encode_to_vec().into());
                let answer = client
                    .clone()
                    .send_receive(Request::from_parts(metadata, extensions, container))
                    .await
                    .map_err(Refused::Status)?
                    .into_inner();
                if answer
                    .metadata
                    .get(adapter::SHOULD_EXIT_KEY)
                    .map(String::as_str)
                    == Some("true")
                {
                    return Err(Refused::Exit);
                }
                if answer.grpc_message_name != rpc.response {
                    return Err(Refused::Failed(FleetError::WrongAnswer {
                        expected: rpc.response,
                        got: answer.grpc_message_name,
                    }));
                }
                R::decode(answer.grpc_message_content)
                    .map(|r| (r, tonic::metadata::MetadataMap::new()))
                    .map_err(|source| {
                        Refused::Failed(FleetError::Undecodable {
                            what: rpc.response,
                            source,
                        })
                    })
            }
            Stub::Rest(client) => {
                let rpc = adapter::by_method(method)
                    .ok_or(Refused::Failed(FleetError::NotCarried(method)))?;
                let (metadata, _, body) = request.into_parts();
                let mut post = http::Request::new(http_body_util::Full::new(Bytes::from(
                    body.encode_to_vec(),
                )));
                *post.method_mut() = http::Method::POST;
                *post.uri_mut() = format!("http://superlink/api/v0/fleet/{}", rpc.rest)
                    .parse()
                    .map_err(|_| Refused::Failed(FleetError::NotCarried(method)))?;
                let headers = post.headers_mut();
                headers.extend(metadata.into_headers());
                let protobuf = http::HeaderValue::from_static(REST_MEDIA_TYPE);
                headers.insert(http::header::CONTENT_TYPE, protobuf.clone());
                headers.insert(http::header::ACCEPT, protobuf);
                let response = client
                    .request(post)
                    .await
                    .map_err(|e| Refused::Status(rest_status::unreachable(e)))?;
                let (parts, body) = response.into_parts();
                let body = http_body_util::BodyExt::collect(body)
                    .await
                    .map_err(|e| Refused::Status(rest_status::unreachable(e)))?
                    .to_bytes();
                if parts.status != http::StatusCode::OK {
                    return Err(Refused::Status(rest_status::refusal(&parts, &body)));
                }
                R::decode(body)
                    .map(|r| (r, tonic::metadata::MetadataMap::new()))
                    .map_err(|source| {
                        Refused::Failed(FleetError::Undecodable {
                            what: rpc.response,
                            source,
                        })
                    })
            }
        }
    }
}

/// The media type of REST bodies.
const REST_MEDIA_TYPE: &str = "application/protobuf";

/// The statuses a REST call fails with: the ones the same call would have failed with on gRPC,
/// rebuilt from the HTTP answer (the only statuses this client makes; tidy.rs knows this module).
mod rest_status {
    use std::sync::Arc;

    use bytes::Bytes;
    use tonic::{Code, Status};

    /// A REST call that reached no answer, as the UNAVAILABLE a gRPC call would fail with; the error
    /// stays its source (so a TLS failure is still found by `find_connect_error`).
    pub(super) fn unreachable<E: std::error::Error + Send + Sync + 'static>(e: E) -> Status {
        let mut status = Status::unavailable(flwr_transport::rest::error_chain(&e));
        status.set_source(Arc::new(e));
        status
    }

    /// A REST answer other than 200, as the status the call would have had on gRPC: the code from
    /// the `grpc-status` header our SuperLink sends, or else the nearest to the HTTP status (Flower's
    /// REST server answers 500 to any failure); the body's text as the message.
    pub(super) fn refusal(parts: &http::response::Parts, body: &Bytes) -> Status {
        let code = parts
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from_i32)
            .unwrap_or(match parts.status.as_u16() {
                400 => Code::InvalidArgument,
                401 => Code::Unauthenticated,
                403 => Code::PermissionDenied,
                404 | 405 => Code::Unimplemented,
                413 | 429 => Code::ResourceExhausted,
                503 => Code::Unavailable,
                504 => Code::DeadlineExceeded,
                500..=599 => Code::Internal,
                _ => Code::Unknown,
            });
        let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
        let message = if text.trim().is_empty() {
            format!("HTTP {}", parts.status)
        } else {
            text.trim().to_owned()
        };
        Status::new(code, message)
    }
}

/// A uniform random number in [0, 1).
pub fn rand_unit() -> f64 {
    use rand_core::RngCore;
    (rand_core::OsRng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}
