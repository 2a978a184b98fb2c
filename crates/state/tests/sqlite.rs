//! The conformance suite on the SQLite engine (`:memory:` databases).

flwr_state::conformance_tests!(|clock| async move {
    flwr_state::sqlite::open(std::path::Path::new(":memory:"), clock).unwrap()
});
