//! Logging through `tracing`, filtered like Flower operators expect.
//!
//! `RUST_LOG` (for example `info,flwr_superlink=debug`) takes precedence. Otherwise Flower's
//! `FLWR_LOG_LEVEL` (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`) sets the level. The default
//! is `info`. Logs go to standard error.

use tracing_subscriber::EnvFilter;

/// The filter directive for a Flower log level name, if it is one.
pub fn flwr_level_directive(level: &str) -> Option<&'static str> {
    match level.trim().to_ascii_uppercase().as_str() {
        "DEBUG" | "NOTSET" => Some("debug"),
        "INFO" => Some("info"),
        "WARN" | "WARNING" => Some("warn"),
        "ERROR" | "CRITICAL" | "FATAL" => Some("error"),
        _ => None,
    }
}

/// The filter the environment asks for.
pub fn env_filter() -> EnvFilter {
    if let Ok(spec) = std::env::var("RUST_LOG") {
        if let Ok(filter) = EnvFilter::try_new(&spec) {
            return filter;
        }
        eprintln!("RUST_LOG={spec:?} is not a valid filter; using `info`");
    } else if let Ok(level) = std::env::var("FLWR_LOG_LEVEL") {
        match flwr_level_directive(&level) {
            Some(d) => return EnvFilter::new(d),
            None => eprintln!(
                "FLWR_LOG_LEVEL={level:?} is not a log level (DEBUG, INFO, WARNING, ERROR); using INFO"
            ),
        }
    }
    EnvFilter::new("info")
}

/// Installs the global subscriber (once; later calls do nothing).
pub fn init() {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Installs the global subscriber writing to standard error and to a rotated log file.
pub fn init_with_file(rotation: crate::logfile::Rotation) -> std::io::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let file = crate::logfile::RotatingFile::open(rotation)?;
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false);
    let to_file = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(file)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(stderr)
        .with(to_file)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_flower_levels() {
        assert_eq!(flwr_level_directive("DEBUG"), Some("debug"));
        assert_eq!(flwr_level_directive("info"), Some("info"));
        assert_eq!(flwr_level_directive("WARNING"), Some("warn"));
        assert_eq!(flwr_level_directive("CRITICAL"), Some("error"));
        assert_eq!(flwr_level_directive("LOUD"), None);
    }
}
