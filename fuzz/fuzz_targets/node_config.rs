//! `--node-config` values (key=value pairs with TOML literals).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A value ending in `.toml` names a file to read: not what this target is about.
    if text.trim().ends_with(".toml") {
        return;
    }
    let _ = flwr_supernode::node_config::parse(text);
});
