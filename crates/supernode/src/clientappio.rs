//! The ClientAppIo API (plaintext) that `flwr-clientapp` processes, and `flower-superexec` in
//! `--isolation process`, talk to. Tokens travel in request bodies.

use bytes::Bytes;
use flwr_objects::content::{self, VerifyError};
use flwr_objects::ObjectId;
use flwr_proto::convert::{
    message_from_pb, message_to_pb, pull_object_response, tree_from_pb, tree_to_pb,
};
use flwr_proto::proto as pb;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::state::{AppError, NodeState};

/// The ClientAppIo service.
#[derive(Clone)]
pub struct ClientAppIoService {
    state: NodeState,
}

impl ClientAppIoService {
    /// A service over the node's state.
    pub fn new(state: NodeState) -> Self {
        Self { state }
    }
}

/// Why a ClientAppIo call is refused. [`to_status`] is the one place that picks the gRPC code
/// (those Flower's ClientApps expect).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// About the token, the run or the messages of the caller.
    #[error(transparent)]
    App(#[from] AppError),
    /// What Flower answers with UNKNOWN: an uncaught exception there (a malformed request).
    #[error("Exception calling application: {0}")]
    Exception(String),
    /// An object whose content does not check out (other than by its hash).
    #[error(transparent)]
    BadObject(VerifyError),
    /// The node's object store failed.
    #[error(transparent)]
    Store(#[from] flwr_objects::store::StoreError),
    /// A protobuf blob the node keeps does not decode.
    #[error("the cached {what} is corrupt: {source}")]
    Corrupt {
        /// What it is.
        what: &'static str,
        /// The decoder's complaint.
        source: prost::DecodeError,
    },
}

fn to_status(r: Refusal) -> Status {
    let text = r.to_string();
    match r {
        Refusal::App(AppError::InvalidToken) => Status::permission_denied(text),
        Refusal::App(AppError::NoFab) => Status::not_found(text),
        Refusal::App(AppError::NoMessage | AppError::UnknownInstruction) => {
            Status::unknown(format!("Exception calling application: {text}"))
        }
        Refusal::Exception(_) => Status::unknown(text),
        // As the SuperLink does: an interrupted check is the node's failure, not the object's.
        Refusal::BadObject(VerifyError::Interrupted) => Status::internal(text),
        Refusal::BadObject(_) => Status::failed_precondition(text),
        Refusal::Store(_) | Refusal::Corrupt { .. } => Status::internal(text),
    }
}

/// `?`-friendly conversion for the handlers.
trait OrStatus<T> {
    fn or_status(self) -> Result<T, Status>;
}

impl<T, E: Into<Refusal>> OrStatus<T> for Result<T, E> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(|e| to_status(e.into()))
    }
}

/// A decoder error about `what`, as a refusal.
fn corrupt(what: &'static str) -> impl Fn(prost::DecodeError) -> Refusal {
    move |source| Refusal::Corrupt { what, source }
}

#[tonic::async_trait]
impl pb::client_app_io_server::ClientAppIo for ClientAppIoService {
    async fn list_apps_to_launch(
        &self,
        _request: Request<pb::ListAppsToLaunchRequest>,
    ) -> Result<Response<pb::ListAppsToLaunchResponse>, Status> {
        Ok(Response::new(pb::ListAppsToLaunchResponse {
            run_ids: self.state.runs_to_launch(),
        }))
    }

    async fn request_token(
        &self,
        request: Request<pb::RequestTokenRequest>,
    ) -> Result<Response<pb::RequestTokenResponse>, Status> {
        let token = self
            .state
            .create_token(request.get_ref().run_id)
            .unwrap_or_default();
        Ok(Response::new(pb::RequestTokenResponse { token }))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let run = match self.state.run(request.get_ref().run_id) {
            Some(e) => Some(
                pb::Run::decode(e.run.as_ref())
                    .map_err(corrupt("run"))
                    .or_status()?,
            ),
            None => None,
        };
        Ok(Response::new(pb::GetRunResponse { run }))
    }

    async fn send_app_heartbeat(
        &self,
        request: Request<pb::SendAppHeartbeatRequest>,
    ) -> Result<Response<pb::SendAppHeartbeatResponse>, Status> {
        Ok(Response::new(pb::SendAppHeartbeatResponse {
            success: self.state.app_heartbeat(&request.get_ref().token),
        }))
    }

    async fn pull_app_inputs(
        &self,
        request: Request<pb::PullAppInputsRequest>,
    ) -> Result<Response<pb::PullAppInputsResponse>, Status> {
        let (_, entry) = self
            .state
            .app_inputs(&request.get_ref().token)
            .or_status()?;
        Ok(Response::new(pb::PullAppInputsResponse {
            context: Some(
                pb::Context::decode(entry.context.as_ref())
                    .map_err(corrupt("context"))
                    .or_status()?,
            ),
            run: Some(
                pb::Run::decode(entry.run.as_ref())
                    .map_err(corrupt("run"))
                    .or_status()?,
            ),
            fab: Some(pb::Fab {
                hash_str: entry.fab_hash,
                content: entry.fab,
                verifications: Default::default(),
            }),
            federation_config: None,
        }))
    }

    async fn push_app_outputs(
        &self,
        request: Request<pb::PushAppOutputsRequest>,
    ) -> Result<Response<pb::PushAppOutputsResponse>, Status> {
        let body = request.into_inner();
        let context = Bytes::from(body.context.unwrap_or_default().encode_to_vec());
        self.state
            .put_outputs(&body.token, body.run_id, context)
            .or_status()?;
        Ok(Response::new(pb::PushAppOutputsResponse {}))
    }

    async fn push_object(
        &self,
        request: Request<pb::PushObjectRequest>,
    ) -> Result<Response<pb::PushObjectResponse>, Status> {
        let body = request.into_inner();
        let content = body.object_content;
        let admitted = content::admit(&body.object_id, &content)
            .await
            .map_err(|e| to_status(Refusal::BadObject(e)))?;
        let stored = match admitted {
            Some(id) => self.state.objects().put(&id, content).or_status()?,
            None => false,
        };
        Ok(Response::new(pb::PushObjectResponse { stored }))
    }

    async fn pull_object(
        &self,
        request: Request<pb::PullObjectRequest>,
    ) -> Result<Response<pb::PullObjectResponse>, Status> {
        let lookup = match ObjectId::parse(&request.get_ref().object_id) {
            Ok(id) => self.state.objects().get(&id).or_status()?,
            Err(_) => flwr_objects::store::Lookup::Unknown,
        };
        Ok(Response::new(pull_object_response(lookup)))
    }

    async fn confirm_message_received(
        &self,
        request: Request<pb::ConfirmMessageReceivedRequest>,
    ) -> Result<Response<pb::ConfirmMessageReceivedResponse>, Status> {
        if let Ok(id) = ObjectId::parse(&request.get_ref().message_object_id) {
            self.state.objects().delete(&id).or_status()?;
        }
        Ok(Response::new(pb::ConfirmMessageReceivedResponse {}))
    }

    async fn push_message(
        &self,
        request: Request<pb::PushAppMessagesRequest>,
    ) -> Result<Response<pb::PushAppMessagesResponse>, Status> {
        let body = request.into_inner();
        // The token first, as Flower does: a caller without one learns nothing about the body.
        self.state.run_of_token(&body.token).or_status()?;
        let (Some(m), Some(t)) = (
            body.messages_list.first(),
            body.message_object_trees.first(),
        ) else {
            return Err(to_status(Refusal::Exception(
                "list index out of range".into(),
            )));
        };
        let reply = message_from_pb(m).map_err(Refusal::Exception).or_status()?;
        let tree = tree_from_pb(t).map_err(Refusal::Exception).or_status()?;
        let run_id = reply.run_id;
        let to_push = self
            .state
            .objects()
            .preregister(run_id, &tree)
            .or_status()?;
        self.state.put_reply(&body.token, reply, tree).or_status()?;
        Ok(Response::new(pb::PushAppMessagesResponse {
            message_ids: Vec::new(),
            objects_to_push: to_push.iter().map(|id| id.to_hex()).collect(),
        }))
    }

    async fn pull_message(
        &self,
        request: Request<pb::PullAppMessagesRequest>,
    ) -> Result<Response<pb::PullAppMessagesResponse>, Status> {
        let (meta, tree) = self
            .state
            .take_instruction(&request.get_ref().token)
            .or_status()?;
        Ok(Response::new(pb::PullAppMessagesResponse {
            messages_list: vec![message_to_pb(&meta)],
            message_object_trees: vec![tree_to_pb(&tree)],
        }))
    }
}
