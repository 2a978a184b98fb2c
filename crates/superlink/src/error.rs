//! The SuperLink's domain errors, each named for what went wrong. A variant's text is what
//! Flower's clients see (Flower's own words where Flower has them); which gRPC code it becomes is
//! decided in one `match`, in `service::status`, and nowhere else.

use flwr_fab::FabError;
use flwr_objects::content::VerifyError;
use flwr_objects::store::StoreError;
use flwr_state::{NodeId, RunId, StateError};

/// An error answer of the SuperLink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ------------------------------------------------------------------ runs
    /// A gated call on a run that is not running; the text is the run's status ("Run is
    /// pending." ...).
    #[error("{0}")]
    NotRunning(String),
    /// A gated call on a run that does not exist (Flower raises on it: the text is the id).
    #[error("Exception calling application: {0}")]
    UnknownRun(RunId),
    /// A SuperNode asked for a run that does not exist.
    #[error("Run ID not found: {0}")]
    NoSuchRunForNode(RunId),
    /// The CLI named a run that does not exist.
    #[error("Run ID not found")]
    NoSuchRun,
    /// A ServerApp pushed logs for a run that does not exist.
    #[error("Exception calling application: Run {0} not found")]
    LogsForUnknownRun(RunId),
    /// A run cannot move to `running` (it vanished, has no context or FAB, or left `starting`).
    #[error("Failed to start run {0}")]
    RunNotStarted(RunId),
    /// The CLI stopped a run that had finished.
    #[error("Run ID {0} is already finished")]
    RunAlreadyFinished(RunId),
    /// A run that no account owns (made by another kind of SuperLink).
    #[error("⛔️ Run is not associated with a `flwr_aid`.")]
    RunWithoutOwner,
    /// A run of another account.
    #[error("⛔️ Run ID does not belong to the account")]
    RunOfAnotherAccount,

    // ------------------------------------------------------------------ apps and FABs
    /// The token is not (or no longer) a run's.
    #[error("Invalid token.")]
    InvalidToken,
    /// No stored FAB has this hash.
    #[error("Found no FAB with hash: {0}")]
    NoSuchFab(String),
    /// The uploaded FAB is not a zip archive (Flower raises on it).
    #[error("Exception calling application: File is not a zip file")]
    FabNotZip,
    /// The FAB, or an override of its config, is unusable.
    #[error("{0}")]
    UnusableFab(#[source] FabError),
    /// A Flower Hub app could not be fetched.
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    /// A Flower Hub run on a SuperLink whose Fleet API is on the grpc-adapter transport.
    #[error(
        "The selected SuperLink transport type is not supported for connecting to Flower Hub."
    )]
    HubOverAdapter,

    // ------------------------------------------------------------------ nodes
    /// A heartbeat interval outside the accepted range.
    #[error("Invalid heartbeat interval")]
    InvalidHeartbeatInterval,
    /// With `--enable-supernode-auth`, nodes are registered through the CLI only.
    #[error("SuperNode authentication is enabled. All SuperNodes must be registered via the CLI.")]
    RegisterThroughCli,
    /// With `--enable-supernode-auth`, nodes are unregistered through the CLI only.
    #[error(
        "SuperNode authentication is enabled. All SuperNodes must be unregistered via the CLI."
    )]
    UnregisterThroughCli,
    /// The key in a RegisterNode request is not the key that signed it.
    #[error("The public key in the request is not the key that signed it.")]
    KeyNotSigner,
    /// No usable node has this key.
    #[error("No SuperNode found with the given public key.")]
    NoNodeForKey,
    /// The node is online already.
    #[error("SuperNode with node ID {0} could not be activated.")]
    NodeAlreadyOnline(NodeId),
    /// The node is not online.
    #[error("SuperNode with node ID {0} could not be deactivated.")]
    NodeNotOnline(NodeId),
    /// The node is gone, unknown or someone else's (Fleet).
    #[error("Node ID {0} already unregistered, not found or the request was unauthorized.")]
    NodeNotUnregistered(NodeId),
    /// The node is gone, unknown or someone else's (Control).
    #[error("Node ID not found for account")]
    NodeNotOwned,
    /// The CLI registered something that is not a public key.
    #[error("The provided public key is not valid")]
    InvalidPublicKey,
    /// The key is registered already (keys are unique forever).
    #[error("Public key already in use")]
    PublicKeyInUse,
    /// A Fleet caller that did not prove who it is; the text says how.
    #[error("{0}")]
    NotAuthenticated(String),
    /// A Fleet caller whose key belongs to no node, or to another node than the one it names.
    #[error("Invalid node ID")]
    InvalidNodeId,
    /// A ServerAppIo caller that named a node other than the SuperLink's own.
    #[error("Unexpected node ID.")]
    NotTheSuperLinkNode,

    // ------------------------------------------------------------------ federations
    /// A federation call without a federation name.
    #[error("No federation specified. You must specify a federation to perform this action.")]
    NoFederationGiven,
    /// A membership change in a federation other than the default one.
    #[error("Federation '{0}' does not exist")]
    NoSuchFederation(String),
    /// A federation that does not exist, asked for by ShowFederation (Flower raises on it).
    #[error("Exception calling application: Federation '{0}' does not exist.")]
    ShowUnknownFederation(String),
    /// A federation that does not exist or the caller cannot act on.
    #[error("Federation not found, archived, or you cannot perform this action.")]
    FederationNotFound,
    /// A membership change for a node the caller does not own.
    #[error("Node {0} not found or you are not its owner.")]
    NodeNotInFederation(NodeId),

    // ------------------------------------------------------------------ calls not offered
    /// Federation management (create, archive, members, invitations).
    #[error("SuperLink does not support federation management.")]
    NoFederationManagement,
    /// Artifacts.
    #[error("ControlServicer initialized without artifact provider")]
    NoArtifacts,
    /// Auth tokens, which the NoOp account plugin does not give (Flower raises on it).
    #[error("Exception calling application: NoOp plugin does not support getting auth tokens.")]
    NoAuthTokens,
    /// StreamRunEvents (Flower raises on it).
    #[error("Exception calling application: StreamRunEvents is not implemented")]
    NoRunEvents,
    /// GetFederationOptions, which Flower keeps as a stub that raises.
    #[error("Exception calling application: To be removed")]
    NoFederationOptions,

    // ------------------------------------------------------------------ malformed requests
    /// A request Flower's code fails on (a missing field, a bad id, mismatched lists): Flower
    /// answers such requests with its exception's text.
    #[error("Exception calling application: {0}")]
    Malformed(String),
    /// An object whose content is not a valid object.
    #[error("{0}")]
    BadObject(#[source] VerifyError),
    /// A request body over the bound of its method.
    #[error("{method}: the request is larger than the {limit} bytes this call may carry")]
    RequestTooLarge {
        /// The gRPC method.
        method: &'static str,
        /// Its bound in bytes.
        limit: usize,
    },

    // ------------------------------------------------------------------ the SuperLink itself
    /// The state database cannot be reached now; clients retry.
    #[error("{0}")]
    Unavailable(#[source] flwr_state::DriverError),
    /// The state engine failed.
    #[error("SuperLink {0}")]
    State(#[source] StateError),
    /// The object store failed.
    #[error("SuperLink {0}")]
    Objects(#[source] StoreError),
    /// A worker task of this call ended before its work did (a panic, a shutdown).
    #[error("{what} did not finish: {source}")]
    TaskLost {
        /// The work.
        what: &'static str,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// Something this SuperLink stored cannot be read back.
    #[error("stored {what} is corrupt: {source}")]
    Corrupt {
        /// What was read.
        what: &'static str,
        /// The decoder's complaint.
        #[source]
        source: prost::DecodeError,
    },
}

impl From<StateError> for Error {
    fn from(e: StateError) -> Self {
        match e {
            StateError::RunNotFound(id) => Error::UnknownRun(id),
            StateError::PublicKeyInUse => Error::PublicKeyInUse,
            e if e.is_unavailable() => Error::Unavailable(Box::new(e)),
            e => Error::State(e),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            e @ StoreError::Unavailable(_) => Error::Unavailable(Box::new(e)),
            other => Error::Objects(other),
        }
    }
}

impl From<FabError> for Error {
    fn from(e: FabError) -> Self {
        match e {
            FabError::NotZip => Error::FabNotZip,
            other => Error::UnusableFab(other),
        }
    }
}

/// A `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
