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
    EnvFilter::new(env_directive())
}

/// The filter directive the environment asks for (said once when it is not valid).
fn env_directive() -> String {
    if let Ok(spec) = std::env::var("RUST_LOG") {
        if EnvFilter::try_new(&spec).is_ok() {
            return spec;
        }
        eprintln!("RUST_LOG={spec:?} is not a valid filter; using `info`");
    } else if let Ok(level) = std::env::var("FLWR_LOG_LEVEL") {
        match flwr_level_directive(&level) {
            Some(d) => return d.to_owned(),
            None => eprintln!(
                "FLWR_LOG_LEVEL={level:?} is not a log level (DEBUG, INFO, WARNING, ERROR); using INFO"
            ),
        }
    }
    "info".to_owned()
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

/// Each output has a filter of its own: the log lines the level the environment asks for, the
/// OTLP export the daemons' own spans and events at `info` whatever that level.
type BoxedLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

fn layer<W>(format: LogFormat, writer: W, ansi: bool, directive: &str) -> BoxedLayer
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false);
    let filter = EnvFilter::new(directive);
    match format {
        LogFormat::Text => fmt.with_ansi(ansi).with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    }
}

/// Where logs and spans go, from the flags.
#[derive(Debug, Default)]
pub struct LogOptions {
    /// `--log-format`.
    pub format: LogFormat,
    /// `--log-file` and its rotation: also write there.
    pub file: Option<crate::logfile::Rotation>,
    /// `--otlp-endpoint` (`http://HOST:PORT`, OTLP over gRPC): also export the spans there, as
    /// the service `service`.
    pub otlp: Option<(String, &'static str)>,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `--log-file` cannot be opened.
    #[error("cannot open `--log-file` '{}': {source}. Choose a writable path (the Docker images run as UID 49999).", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--otlp-endpoint` cannot be used.
    #[error("`--otlp-endpoint` '{endpoint}': {why}. Give the address of an OpenTelemetry collector's OTLP/gRPC receiver, e.g. http://127.0.0.1:4317.")]
    Otlp {
        /// The flag's value.
        endpoint: String,
        /// Why.
        why: String,
    },
}

/// The installed logging; [`Logging::shutdown`] sends the spans not exported yet.
#[must_use = "shut it down at exit, so that the last spans are exported"]
pub struct Logging {
    otlp: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Logging {
    /// Exports what is left (waits at most a few seconds).
    pub fn shutdown(self) {
        if let Some(provider) = self.otlp {
            if let Err(e) = provider.shutdown() {
                tracing::warn!("the last spans could not be exported over OTLP: {e}");
            }
        }
    }
}

/// Installs the global subscriber (once; later calls change nothing): standard error, and the
/// file and the OTLP exporter that `options` name. Call it inside the Tokio runtime (the OTLP
/// exporter's connection lives there).
pub fn init(options: LogOptions) -> Result<Logging, LogError> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let directive = env_directive();
    let mut layers = vec![layer(
        options.format,
        std::io::stderr,
        std::io::stderr().is_terminal(),
        &directive,
    )];
    if let Some(rotation) = options.file {
        let path = rotation.path.clone();
        let file = crate::logfile::RotatingFile::open(rotation)
            .map_err(|source| LogError::File { path, source })?;
        layers.push(layer(options.format, file, false, &directive));
    }
    let provider = match options.otlp {
        Some((endpoint, service)) => {
            let provider = otlp_provider(&endpoint, service)?;
            use opentelemetry::trace::TracerProvider as _;
            let tracer = provider.tracer(service);
            // Ours only (never the HTTP/2 stack's, the exporter's own connection among them).
            let ours = tracing_subscriber::filter::filter_fn(|m| {
                m.target().starts_with("flwr_") && *m.level() <= tracing::Level::INFO
            });
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(ours)
                    .boxed(),
            );
            Some(provider)
        }
        None => None,
    };
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(Logging { otlp: provider })
}

/// A daemon's `main`: sets up logging from `options`, runs `daemon`, exports the last spans, and
/// gives the exit status (1 when logging cannot be set up, or the daemon fails: its error is
/// logged with its causes).
pub async fn run_logged<E: std::fmt::Display>(
    options: LogOptions,
    daemon: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    let logging = match init(options) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let status = match daemon.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    logging.shutdown();
    status
}

/// Spans in batches to an OTLP/gRPC receiver at `endpoint` (plaintext `http://` only: a
/// collector on the host or the pod).
fn otlp_provider(
    endpoint: &str,
    service: &'static str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, LogError> {
    use opentelemetry_otlp::WithExportConfig;
    let refused = |why: String| LogError::Otlp {
        endpoint: endpoint.to_owned(),
        why,
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| refused(format!("not a URL ({e})")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(refused(
            "only http://HOST:PORT is supported (plaintext, to a collector nearby)".into(),
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| refused(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
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
