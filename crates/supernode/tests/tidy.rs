//! ARCHITECTURE.md's "codes decided in one place", checked for the SuperNode: the only
//! `tonic::Status` it builds for its own API are in `clientappio::to_status`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use flwr_testkit::tidy::status_constructors_under;

#[test]
fn only_clientappio_to_status_builds_grpc_statuses() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let offenders = status_constructors_under(&src, |file, mut text| {
        // Blank out the mapping itself (keeping the line numbers of the rest), and the REST
        // client's rebuilding of the statuses the SuperLink answered (not codes of our own API).
        let allowed = if file.ends_with("clientappio.rs") {
            Some((
                "\nfn to_status(",
                "clientappio keeps its mapping in `fn to_status`",
            ))
        } else if file.ends_with("fleet.rs") {
            Some((
                "\nmod rest_status {",
                "fleet keeps the REST statuses in `mod rest_status`",
            ))
        } else {
            None
        };
        if let Some((opening, expect)) = allowed {
            let start = text.find(opening).expect(expect);
            let end = start + text[start..].find("\n}\n").unwrap();
            let blank: String = text[start..end]
                .chars()
                .map(|c| if c == '\n' { c } else { ' ' })
                .collect();
            text.replace_range(start..end, &blank);
        }
        Some(text)
    });
    assert!(
        offenders.is_empty(),
        "gRPC statuses built outside clientappio::to_status (raise a `Refusal` instead):\n{}",
        offenders.join("\n")
    );
}

/// ARCHITECTURE.md's "only the service layers know protobuf types", checked for the SuperNode's
/// decisions (`node`): the Fleet client (`fleet`) and ClientAppIo (`clientappio`) convert.
#[test]
fn the_node_names_no_protobuf_type() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/node.rs")).unwrap();
    for wire in ["flwr_proto::proto", "pb::", "prost::", "tonic::"] {
        assert!(
            !text.contains(wire),
            "src/node.rs names `{wire}`: convert in `fleet` instead"
        );
    }
}
