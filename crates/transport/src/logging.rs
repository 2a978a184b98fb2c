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

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line (for log shippers): time, level, fields, message, and the spans
    /// the event happened in (`rpc` with api, method, peer, node_id, run_id).
    Json,
}

/// The subscriber the output layers sit on: the registry behind the level filter.
type Filtered = tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>;
type BoxedLayer = Box<dyn tracing_subscriber::Layer<Filtered> + Send + Sync>;

fn layer<W>(format: LogFormat, writer: W, ansi: bool) -> BoxedLayer
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false);
    match format {
        LogFormat::Text => fmt.with_ansi(ansi).boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

/// Installs the global subscriber (once; later calls do nothing), writing to standard error.
pub fn init(format: LogFormat) {
    install(format, None);
}

/// Installs the global subscriber writing to standard error and to a rotated log file.
pub fn init_with_file(
    rotation: crate::logfile::Rotation,
    format: LogFormat,
) -> std::io::Result<()> {
    let file = crate::logfile::RotatingFile::open(rotation)?;
    install(format, Some(file));
    Ok(())
}

fn install(format: LogFormat, file: Option<crate::logfile::RotatingFile>) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let mut layers = vec![layer(
        format,
        std::io::stderr,
        std::io::stderr().is_terminal(),
    )];
    if let Some(file) = file {
        layers.push(layer(format, file, false));
    }
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(layers)
        .try_init();
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
