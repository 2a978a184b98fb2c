//! A load generator for Flower SuperLinks (ours or Flower's), speaking the real protocol.
//!
//! * [`payload`]: messages deflated into objects as Flower's Python does.
//! * [`sim`]: simulated SuperNodes ([`sim::SimNode`]) and a simulated ServerApp ([`sim::Driver`]).
//! * [`workload`]: workloads built from them (fan-out rounds).

pub mod payload;
pub mod sim;
pub mod workload;
