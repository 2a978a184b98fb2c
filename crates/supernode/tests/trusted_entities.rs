//! `--trusted-entities`: a run's FAB must come with a license and a signature by a trusted key.
//! Unsigned, signed by another key, or tampered: the node answers the message at once with an
//! INVALID_FAB error reply naming the reason (Flower's SuperNode drops its refusal, and the
//! ServerApp waits for its timeout). Signed by a trusted key: the run goes on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::time::Duration;

use aws_lc_rs::signature::Ed25519KeyPair;
use bytes::Bytes;
use flwr_objects::message::error_code;
use flwr_testkit::process::Signal;

mod common;
use common::{
    signature, ssh_public, supernode_with, until_while_alive, FakeSuperLink, OneInstruction,
    SUPERNODE,
};

const RUN: u64 = 9;

/// What the node does with one message whose FAB is `content` with `verifications`: the error
/// reply's reason, or `None` when it went on to the message's objects.
async fn outcome(
    trusted: &std::path::Path,
    content: Bytes,
    verifications: HashMap<String, String>,
) -> Option<String> {
    let fake = OneInstruction {
        verifications,
        ..OneInstruction::new(RUN, content)
    };
    let (instruction, seen) = (fake.instruction.clone(), fake.seen.clone());
    let superlink = FakeSuperLink::start(fake).await;
    let (mut node, _) = supernode_with(
        &superlink.address,
        &["--trusted-entities", trusted.to_str().unwrap()],
    );
    until_while_alive(
        &mut node,
        "a reply or an object pull",
        Duration::from_secs(60),
        || {
            let s = seen.lock().unwrap();
            !s.replies.is_empty() || s.object_pulls > 0
        },
    )
    .await;
    node.signal(Signal::SIGTERM);
    let out = node.wait(Duration::from_secs(30)).1;
    superlink.stop().await;
    let seen = seen.lock().unwrap();
    match seen.replies.first() {
        Some(reply) => {
            assert_eq!(seen.confirmed, vec![instruction.message_id.clone()]);
            assert_eq!(reply.reply_to_message_id, instruction.message_id);
            let error = reply.error.clone().expect("an error reply");
            assert_eq!(error.code, error_code::INVALID_FAB, "{out}");
            Some(error.reason)
        }
        None => {
            assert!(
                out.contains("the FAB is signed by a trusted entity"),
                "{out}"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_fabs_signed_by_a_trusted_entity_run() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = Ed25519KeyPair::generate().unwrap();
    let stranger = Ed25519KeyPair::generate().unwrap();
    let trusted = dir.path().join("trusted-entities.yaml");
    std::fs::write(
        &trusted,
        format!("fpk_publisher: '{}'\n", ssh_public(&publisher)),
    )
    .unwrap();
    let content = Bytes::from(flwr_testkit::fab::zip(flwr_testkit::fab::PYPROJECT));
    let licensed = |id: &str, sig: String| {
        HashMap::from([
            ("valid_license".to_owned(), "valid".to_owned()),
            (id.to_owned(), sig),
        ])
    };

    // Signed by the trusted publisher: the node goes on to the message.
    let signed = licensed("fpk_publisher", signature(&publisher, &content));
    assert_eq!(
        outcome(&trusted, content.clone(), signed.clone()).await,
        None
    );

    // No license (a SuperLink that does not verify apps).
    let mut unlicensed = signed.clone();
    unlicensed.remove("valid_license");
    let reason = outcome(&trusted, content.clone(), unlicensed)
        .await
        .unwrap();
    assert!(reason.contains("carries no license"), "{reason}");

    // Signed by someone else, under the trusted id and under an id of its own.
    for verifications in [
        licensed("fpk_publisher", signature(&stranger, &content)),
        licensed("fpk_stranger", signature(&stranger, &content)),
    ] {
        let reason = outcome(&trusted, content.clone(), verifications)
            .await
            .unwrap();
        assert!(
            reason.contains("not signed by a trusted entity"),
            "{reason}"
        );
    }

    // Tampered: other bytes (with a matching run hash) under the publisher's signature.
    let mut tampered = content.to_vec();
    tampered.extend_from_slice(b"\n");
    let reason = outcome(&trusted, Bytes::from(tampered), signed)
        .await
        .unwrap();
    assert!(reason.contains("does not verify"), "{reason}");
}

/// A file it cannot use stops the node at start with the reason.
#[test]
fn an_unusable_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("trusted.yaml");
    std::fs::write(&bad, "fpk_a: 'ssh-rsa AAAAB3NzaC1yc2E'\n").unwrap();
    for (path, expected) in [
        (dir.path().join("missing.yaml"), "cannot read it"),
        (bad, "trusted entity fpk_a is not Ed25519"),
    ] {
        let (status, out) = flwr_testkit::process::run(
            std::process::Command::new(SUPERNODE)
                .args(["--insecure", "--trusted-entities"])
                .arg(&path),
        );
        assert_eq!(status.code(), Some(1), "{out}");
        assert!(
            out.contains("`--trusted-entities`") && out.contains(expected),
            "{out}"
        );
    }
}
