//! ARCHITECTURE.md's "errors become gRPC codes in one place", checked: no source file of the
//! SuperLink but `service/status.rs` builds a `tonic::Status`; everything else raises an
//! `Error` and lets that module choose the code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use flwr_testkit::tidy::status_constructors_under;

#[test]
fn only_the_status_module_builds_grpc_statuses() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let offenders = status_constructors_under(&src, |file, text| {
        (!file.ends_with("service/status.rs")).then_some(text)
    });
    assert!(
        offenders.is_empty(),
        "gRPC statuses built outside service/status.rs (raise an `Error` instead):\n{}",
        offenders.join("\n")
    );
}

/// ARCHITECTURE.md's "only the service layers know protobuf types", checked for the SuperLink's
/// domain (`core`, the launcher): they name no generated type, no prost and no tonic.
#[test]
fn the_domain_names_no_protobuf_type() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in ["core.rs", "launcher.rs"] {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        for wire in ["flwr_proto::proto", "pb::", "prost::", "tonic::"] {
            assert!(
                !text.contains(wire),
                "src/{file} names `{wire}`: convert in the service layer instead"
            );
        }
    }
}
