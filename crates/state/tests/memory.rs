//! The conformance suite on the in-memory engine.

flwr_state::conformance_tests!(|clock| async move { flwr_state::in_memory(clock) });
