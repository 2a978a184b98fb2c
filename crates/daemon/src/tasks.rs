//! The daemons' panic policy: a task that panics, or ends while the daemon is not stopping, stops
//! the whole daemon with a message that names it, instead of leaving it half alive (a server gone
//! while the process still answers its health checks).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The first failure of a daemon's tasks; recording one also cancels `stop`.
#[derive(Clone, Debug)]
pub struct Failure {
    first: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
}

impl Failure {
    /// Failures that cancel `stop`.
    pub fn new(stop: CancellationToken) -> Self {
        Self {
            first: Arc::default(),
            stop,
        }
    }

    /// Records `message` (the first one wins) and cancels the stop token.
    pub fn record(&self, message: String) {
        if let Ok(mut f) = self.first.lock() {
            f.get_or_insert(message);
        }
        self.stop.cancel();
    }

    /// The token a failure cancels.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// The first failure recorded, if any.
    pub fn first(&self) -> Option<String> {
        self.first.lock().ok().and_then(|f| f.clone())
    }

    /// Runs `task` on `tracker`; if it panics, or ends before the stop token is cancelled, the
    /// failure is recorded as "`name` panicked: ..." or "`name` stopped by itself".
    pub fn watch(
        &self,
        tracker: &TaskTracker,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let this = self.clone();
        let inner = tracker.spawn(task);
        tracker.spawn(async move {
            match inner.await {
                Err(e) if e.is_panic() => this.record(format!("{name} panicked: {e}")),
                _ if !this.stop.is_cancelled() => this.record(format!("{name} stopped by itself")),
                _ => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_or_an_early_end_stops_the_daemon_and_says_which_task() {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let failure = Failure::new(stop.clone());
        failure.watch(&tracker, "Fleet API", async {
            panic!("boom");
        });
        stop.cancelled().await;
        let first = failure.first().unwrap();
        assert!(
            first.starts_with("Fleet API panicked") && first.contains("boom"),
            "{first}"
        );

        let stop = CancellationToken::new();
        let failure = Failure::new(stop.clone());
        failure.watch(&tracker, "Health service", async {});
        stop.cancelled().await;
        assert_eq!(failure.first().unwrap(), "Health service stopped by itself");
    }

    #[tokio::test]
    async fn a_task_that_ends_on_stop_is_no_failure() {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let failure = Failure::new(stop.clone());
        let s = stop.clone();
        failure.watch(&tracker, "server", async move { s.cancelled().await });
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(failure.first(), None);
    }
}
