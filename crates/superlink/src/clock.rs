//! Time as the state sees it: Unix seconds as `f64`, like Flower's timestamps. Tests use a
//! manual clock to cross heartbeat and token deadlines without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now".
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Unix time in seconds.
    fn now(&self) -> f64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicU64,
}

impl ManualClock {
    /// Starts at the current system time.
    pub fn new() -> Self {
        Self {
            micros: AtomicU64::new((SystemClock.now() * 1e6) as u64),
        }
    }

    /// Moves time forward.
    pub fn advance(&self, seconds: f64) {
        self.micros
            .fetch_add((seconds * 1e6) as u64, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        self.micros.load(Ordering::SeqCst) as f64 / 1e6
    }
}

/// Formats Unix seconds as Python's `datetime.isoformat()` writes an aware UTC time
/// (`2026-11-26T08:30:43.561965+00:00`; no fraction when it is zero).
pub fn isoformat(unix_seconds: f64) -> String {
    let micros = (unix_seconds * 1e6).round() as i64;
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros).unwrap_or_default();
    flwr_transport::node_auth::format_timestamp(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isoformat_is_pythons() {
        assert_eq!(isoformat(0.0), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            isoformat(1_764_145_843.561_965),
            "2025-11-26T08:30:43.561965+00:00"
        );
    }

    #[test]
    fn manual_clock_advances() {
        let c = ManualClock::new();
        let t = c.now();
        c.advance(60.5);
        assert!((c.now() - t - 60.5).abs() < 1e-6);
    }
}
