//! Traffic and ClientApp runtime, counted in memory and added to the run rows about once a
//! second.
//!
//! Every Fleet call adds its bytes to its run. Written through at once, all the calls of a run
//! would queue on that one row's lock and its durable commit (the benchmark measured about 1,200
//! commits a second for 25 messages a second). A replica shows its own counts at once (they are
//! added to the runs it reads); the other replicas see them after the next flush. A replica that
//! is killed loses at most the counts of the last second; one that shuts down writes them first.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use crate::{Run, RunId};

/// How often the counts are written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Runs with counts held before they are written at once (a bound on memory).
pub(crate) const RUN_LIMIT: usize = 10_000;

/// Counts added to one run since the last flush.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    pub sent: u64,
    pub recv: u64,
    pub runtime: f64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.sent = self.sent.saturating_add(other.sent);
        self.recv = self.recv.saturating_add(other.recv);
        self.runtime += other.runtime;
    }

    fn is_empty(&self) -> bool {
        self.sent == 0 && self.recv == 0 && self.runtime == 0.0
    }
}

/// The counts not yet written, by run.
#[derive(Default)]
pub(crate) struct PendingUsage {
    by_run: Mutex<HashMap<RunId, Usage>>,
}

impl PendingUsage {
    /// Adds to a run's counts; true when so many runs have counts that they should be written now.
    pub(crate) fn add(&self, run_id: RunId, usage: Usage) -> bool {
        if usage.is_empty() {
            return false;
        }
        let mut by_run = self.by_run.lock();
        by_run.entry(run_id).or_default().add(usage);
        by_run.len() >= RUN_LIMIT
    }

    /// Takes every count, to be written.
    pub(crate) fn take(&self) -> HashMap<RunId, Usage> {
        std::mem::take(&mut *self.by_run.lock())
    }

    /// Puts back counts that could not be written.
    pub(crate) fn restore(&self, taken: HashMap<RunId, Usage>) {
        let mut by_run = self.by_run.lock();
        for (run_id, usage) in taken {
            by_run.entry(run_id).or_default().add(usage);
        }
    }

    /// Adds the counts held here to a run read from the database.
    pub(crate) fn apply(&self, run: &mut Run) {
        if let Some(u) = self.by_run.lock().get(&run.run_id) {
            run.bytes_sent = run.bytes_sent.saturating_add(u.sent);
            run.bytes_recv = run.bytes_recv.saturating_add(u.recv);
            run.clientapp_runtime += u.runtime;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(sent: u64, recv: u64, runtime: f64) -> Usage {
        Usage {
            sent,
            recv,
            runtime,
        }
    }

    #[test]
    fn counts_add_up_and_survive_a_failed_write() {
        let p = PendingUsage::default();
        assert!(!p.add(1, usage(0, 0, 0.0)));
        assert!(p.take().is_empty(), "nothing to write for nothing");
        p.add(1, usage(10, 20, 1.5));
        p.add(1, usage(1, 2, 0.5));
        p.add(2, usage(5, 0, 0.0));
        let taken = p.take();
        assert_eq!(taken[&1], usage(11, 22, 2.0));
        assert!(p.take().is_empty());
        // The write failed; meanwhile more came.
        p.add(1, usage(1, 1, 0.0));
        p.restore(taken);
        let again = p.take();
        assert_eq!(again[&1], usage(12, 23, 2.0));
        assert_eq!(again[&2], usage(5, 0, 0.0));
    }

    #[test]
    fn many_runs_ask_for_a_write() {
        let p = PendingUsage::default();
        let full = (0..RUN_LIMIT as u64)
            .map(|r| p.add(r, usage(1, 0, 0.0)))
            .last();
        assert_eq!(full, Some(true));
    }
}
