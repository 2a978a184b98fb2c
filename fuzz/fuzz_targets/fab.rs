//! FABs as the `flwr` CLI uploads them: the zip archive and its `pyproject.toml`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = flwr_fab::inspect(data) {
        let keys: Vec<String> = info.config_keys.iter().take(4).cloned().collect();
        let _ = flwr_fab::check_overrides(&info, keys.iter().map(String::as_str));
    }
});
