//! Public keys as SuperNodes send them (PEM) and private key files (OpenSSH).
#![no_main]

use flwr_transport::node_auth::{NodePublicKey, NodeSigningKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = NodePublicKey::from_pem(data) {
        assert!(!key.verify(b"2026-01-01T00:00:00.000000+00:00", data));
    }
    if let Ok(key) = NodeSigningKey::from_openssh(data, "fuzz input") {
        let signature = key.sign(b"message");
        let public = NodePublicKey::from_pem(key.public_key_pem()).expect("own key parses");
        assert!(public.verify(b"message", &signature));
    }
});
