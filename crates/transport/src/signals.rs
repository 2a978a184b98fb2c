//! The signals that end a daemon gracefully.

/// Resolves at the first SIGINT, SIGTERM or SIGQUIT, with the signal's name.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn next(s: &mut Option<Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let mut term = signal(SignalKind::terminate()).ok();
    let mut quit = signal(SignalKind::quit()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        () = next(&mut int) => "SIGINT",
        () = next(&mut term) => "SIGTERM",
        () = next(&mut quit) => "SIGQUIT",
    }
}
