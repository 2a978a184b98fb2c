//! The signals a daemon acts on: those that end it gracefully, and SIGHUP, which loads its TLS
//! files again.

/// The signals that end a daemon gracefully: SIGINT, SIGTERM and SIGQUIT.
///
/// Install them before anything is served: a signal that comes before its handler exists takes
/// the default action and kills the process (a supervisor that sees the daemon serving may send
/// SIGTERM at once). SIGHUP is taken over at the same moment, so that one sent before the TLS
/// reloader ([`reload_on_hangup`]) runs is ignored instead of killing the daemon.
pub struct ShutdownSignals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    quit: Option<tokio::signal::unix::Signal>,
    _hangup: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Installs the handlers now; must run inside a Tokio runtime.
    pub fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            quit: signal(SignalKind::quit()).ok(),
            _hangup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Resolves at the first of the three signals received since [`ShutdownSignals::install`],
    /// with the signal's name.
    pub async fn recv(&mut self) -> &'static str {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(&mut self.int) => "SIGINT",
            () = next(&mut self.term) => "SIGTERM",
            () = next(&mut self.quit) => "SIGQUIT",
        }
    }
}

/// How often TLS files are checked for changes.
pub const TLS_POLL: std::time::Duration = std::time::Duration::from_secs(5);
/// How often TLS files are read again even when unchanged, so that the warning about a
/// certificate that expires soon repeats every day while the daemon runs.
pub const TLS_DAILY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Loads `target` again on SIGHUP, when its files change (checked every [`TLS_POLL`]) and once a
/// day ([`TLS_DAILY`]): new connections use what loaded, open ones keep theirs. What does not load
/// is logged with the reason and what is in use stays. Without a target (plaintext), SIGHUP is
/// logged and ignored. Runs until `stop`.
pub async fn reload_on_hangup(
    target: Option<std::sync::Arc<dyn crate::tls::Reloadable>>,
    stop: tokio_util::sync::CancellationToken,
) {
    reload_every(target, TLS_POLL, TLS_DAILY, stop).await;
}

async fn reload_every(
    target: Option<std::sync::Arc<dyn crate::tls::Reloadable>>,
    poll_every: std::time::Duration,
    daily: std::time::Duration,
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
    let mut poll = tokio::time::interval(poll_every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read = tokio::time::Instant::now();
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
        let changed = target.changed_on_disk();
        let due = last_read.elapsed() >= daily;
        if !asked && !changed && !due {
            continue;
        }
        last_read = tokio::time::Instant::now();
        let why = if asked {
            "SIGHUP"
        } else if changed {
            "the files changed"
        } else {
            "daily check"
        };
        let what = target.what();
        let reloading = target.clone();
        match tokio::task::spawn_blocking(move || reloading.reload()).await {
            // The daily read only repeats the warnings (logged by the reload itself).
            Ok(Ok(())) if !asked && !changed => tracing::debug!("{what} read again ({why})"),
            Ok(Ok(())) => tracing::info!("{what} loaded again ({why}): new connections use it"),
            Ok(Err(e)) => {
                tracing::error!("{what} not loaded again ({why}); what is in use stays: {e}")
            }
            Err(e) => tracing::error!("loading the {what} again failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::tls::{Reloadable, TlsError};

    #[derive(Debug, Default)]
    struct Counting {
        reloads: AtomicUsize,
        changed: AtomicBool,
        /// When each read began.
        began: parking_lot::Mutex<Vec<Instant>>,
    }

    impl Reloadable for Counting {
        fn reload(&self) -> Result<(), TlsError> {
            self.began.lock().push(Instant::now());
            self.changed.store(false, Ordering::SeqCst);
            self.reloads.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn changed_on_disk(&self) -> bool {
            self.changed.load(Ordering::SeqCst)
        }
        fn what(&self) -> String {
            "test files".into()
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Read again when the files change, and once a "day" (here 3 s) even when they do not:
    /// that repeats the expiry warnings. Nothing in between (the files are looked at every 10 ms).
    #[tokio::test]
    async fn files_are_read_again_on_change_and_daily() {
        let target = Arc::new(Counting::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let day = Duration::from_secs(3);
        let task = tokio::spawn(reload_every(
            Some(target.clone() as Arc<dyn Reloadable>),
            Duration::from_millis(10),
            day,
            stop.clone(),
        ));
        target.changed.store(true, Ordering::SeqCst);
        until("a read after a change", || {
            target.reloads.load(Ordering::SeqCst) == 1
        })
        .await;
        until("a daily read", || {
            target.reloads.load(Ordering::SeqCst) == 2
        })
        .await;
        // Between the two reads' beginnings: a day, less however late the first read began
        // after it was decided (a blocking task on a busy machine); a read without the day's
        // wait would come at the next 10 ms look.
        let began = target.began.lock().clone();
        let gap = began[1] - began[0];
        assert!(
            gap >= day / 2,
            "the daily read came {gap:?} after the last one"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
