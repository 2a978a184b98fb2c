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

pub mod adapter;
pub mod convert;
