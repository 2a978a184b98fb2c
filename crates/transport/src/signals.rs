//! The signals a daemon acts on: those that end it gracefully, and SIGHUP, which loads its TLS
//! files again.

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

/// How often TLS files are checked for changes.
pub const TLS_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// Loads `target` again on SIGHUP and when its files change (checked every [`TLS_POLL`]): new
/// connections use what loaded, open ones keep theirs. What does not load is logged with the
/// reason and what is in use stays. Without a target (plaintext), SIGHUP is logged and ignored.
/// Runs until `stop`.
pub async fn reload_on_hangup(
    target: Option<std::sync::Arc<dyn crate::tls::Reloadable>>,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "cannot listen for SIGHUP (TLS files are still checked for changes): {e}"
            );
            None
        }
    };
    let mut poll = tokio::time::interval(TLS_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let asked = tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = async { hangups.as_mut()?.recv().await } => true,
            _ = poll.tick() => false,
        };
        let Some(target) = &target else {
            if asked {
                tracing::info!("SIGHUP: no TLS files to load again (--insecure)");
            }
            continue;
        };
        if !asked && !target.changed_on_disk() {
            continue;
        }
        let why = if asked { "SIGHUP" } else { "the files changed" };
        let what = target.what();
        let reloading = target.clone();
        match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(Ok(())) => tracing::info!("{what} loaded again ({why}): new connections use it"),
            Ok(Err(e)) => {
                tracing::error!("{what} not loaded again ({why}); what is in use stays: {e}")
            }
            Err(e) => tracing::error!("loading the {what} again failed: {e}"),
        }
    }
}
