//! Every flag that `flower-superlink` 1.28.0 lists in its `--help` exists here too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::process::Command;

use flwr_testkit::process::run;
use flwr_testkit::{flags_in_help, python};

#[test]
fn every_flower_superlink_flag_is_accepted() {
    let (status, flower_help) = run(Command::new(python::tool("flower-superlink")).arg("--help"));
    assert!(status.success(), "{flower_help}");
    let (status, ours) = run(Command::new(env!("CARGO_BIN_EXE_superlink")).arg("--help"));
    assert!(status.success(), "{ours}");
    let flower = flags_in_help(&flower_help);
    assert!(
        flower.len() > 20,
        "parsed too few flags from Flower's help: {flower:?}"
    );
    let ours = flags_in_help(&ours);
    let missing: Vec<_> = flower.difference(&ours).collect();
    assert!(
        missing.is_empty(),
        "flags of flower-superlink missing here: {missing:?}"
    );
}
