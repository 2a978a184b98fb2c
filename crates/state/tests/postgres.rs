//! The conformance suite on the PostgreSQL engine: a throwaway cluster for this test process,
//! a fresh database per test.

flwr_state::conformance_tests!(|clock| async move {
    let url = flwr_testkit::postgres::shared().create_database();
    let target = flwr_state::postgres::PgTarget::parse(&url).unwrap();
    flwr_state::postgres::connect(flwr_state::postgres::PgOptions::new(target), clock)
        .await
        .unwrap()
});
