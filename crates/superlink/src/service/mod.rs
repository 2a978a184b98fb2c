//! The gRPC edge: the only code that knows protobuf types. Each service converts requests to
//! domain calls on [`crate::core::Core`] and the results back; errors become statuses in
//! [`status`].

pub mod control;
pub mod convert;
pub mod fleet;
pub mod fleet_dispatch;
pub mod fleet_guard;
pub mod grpc_adapter;
pub mod rest;
pub mod serverappio;
pub mod status;
