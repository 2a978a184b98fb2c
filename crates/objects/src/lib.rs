//! Flower's content-addressed object model, shared by the SuperLink and the SuperNode.
//!
//! Message payloads never travel inline: a `Message` is a tree of objects (Message → RecordDict →
//! records → Arrays → ArrayChunks), each serialized as `<Type> <child ids> <body length>\0<body>`
//! and named by the SHA-256 of those bytes. This crate parses and checks such objects
//! ([`content`]), names them ([`ObjectId`]), describes their trees ([`ObjectTree`]), makes the
//! messages a daemon must author itself ([`message`]), and keeps them with Flower's reference
//! counting ([`store`]). It knows nothing of protobuf or gRPC.

pub mod config;
pub mod content;
pub mod id;
pub mod message;
pub mod store;
pub mod tree;

pub use config::ConfigValue;
pub use content::{ObjectType, StructureError};
pub use id::{InvalidObjectId, ObjectId};
pub use tree::ObjectTree;
