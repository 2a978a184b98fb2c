//! The Flower 1.28.0 wire schema (package `flwr.proto`), generated at build time from
//! `proto/flwr/proto/*.proto`.
//!
//! Only the service layer of each daemon may depend on this crate: domain code works on its
//! own types and converts at the edge, with [`convert`] for what both daemons share.

/// Everything in protobuf package `flwr.proto`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod flwr {
    pub mod proto {
        tonic::include_proto!("flwr.proto");
    }
}

pub use flwr::proto;

include!(concat!(env!("OUT_DIR"), "/rpc_paths.rs"));

/// True when `path` names an RPC of the schema.
pub fn is_rpc_path(path: &str) -> bool {
    RPC_PATHS.binary_search(&path).is_ok()
}

pub mod adapter;
pub mod convert;

#[cfg(test)]
mod tests {
    #[test]
    fn rpc_paths_are_the_schemas() {
        assert!(super::is_rpc_path("/flwr.proto.Fleet/PullMessages"));
        assert!(super::is_rpc_path("/flwr.proto.ServerAppIo/PushMessages"));
        assert!(super::is_rpc_path("/flwr.proto.GrpcAdapter/SendReceive"));
        assert!(!super::is_rpc_path("/flwr.proto.Fleet/Invented"));
        assert!(!super::is_rpc_path("/flwr.proto.Fleet/"));
    }
}
