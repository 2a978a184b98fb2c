//! Benchmarks for Flower 1.28 daemons, ours and Flower's own.
//!
//! * [`payload`]: messages deflated into objects as Flower's Python does.
//! * [`sim`]: simulated SuperNodes ([`sim::SimNode`]) and a simulated ServerApp ([`sim::Driver`]).
//! * [`workload`]: workloads built from them (fan-out rounds, idle fleets).
//! * [`daemon`]: the daemons under test as sampled child processes.
//! * [`ha`]: our SuperLink as replicas on PostgreSQL behind HAProxy.
//! * [`echo`]: the bare tonic + rustls service that gives the ceiling.
//! * [`compare`]: the side-by-side comparison and its table.

pub mod compare;
pub mod daemon;
pub mod echo;
pub mod ha;
pub mod payload;
pub mod sim;
pub mod workload;
