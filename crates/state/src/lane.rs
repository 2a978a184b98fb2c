//! A lane: one dedicated thread that runs blocking jobs (SQLite calls) one after another, in the
//! order they were sent.
//!
//! A SQLite connection serves one caller at a time anyway. Sending its calls to the blocking pool
//! makes every busy moment a crowd of pool threads queueing on the connection's mutex (futex
//! storms, spinning, a thread switch per hand-over); a lane queues the calls instead, and its one
//! thread drains the queue without sleeping while there is work.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// The lane's thread is gone (it could not be started, or a job panicked and took it down).
#[derive(Debug, thiserror::Error)]
#[error("the {0} thread is not running")]
pub struct LaneClosed(pub &'static str);

/// A thread with a queue. Dropping the lane closes the queue; the thread finishes the jobs
/// already sent, then exits and is joined.
pub struct Lane {
    name: &'static str,
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Lane {
    /// Starts the lane's thread.
    pub fn start(name: &'static str) -> std::io::Result<Lane> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A panicking job drops its reply sender (its caller gets an error); the
                    // lane keeps serving the others.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                }
            })?;
        Ok(Lane {
            name,
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the lane's thread and waits for its result without blocking the caller's
    /// thread.
    pub async fn run<R, F>(&self, f: F) -> Result<R, LaneClosed>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(f());
        });
        self.tx
            .as_ref()
            .ok_or(LaneClosed(self.name))?
            .send(job)
            .map_err(|_| LaneClosed(self.name))?;
        answer.await.map_err(|_| LaneClosed(self.name))
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn runs_jobs_in_order_and_survives_a_panic() {
        let lane = Lane::start("test-lane").unwrap();
        let (a, b) = tokio::join!(lane.run(|| 1), lane.run(|| 2));
        assert_eq!((a.unwrap(), b.unwrap()), (1, 2));
        let order = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for i in 0..50 {
            let order = order.clone();
            waits.push(lane.run(move || order.lock().push(i)));
        }
        for w in waits {
            w.await.unwrap();
        }
        assert_eq!(*order.lock(), (0..50).collect::<Vec<_>>());
        #[allow(clippy::panic)]
        let panicked = lane.run(|| -> u32 { panic!("boom") }).await;
        assert!(panicked.is_err());
        assert_eq!(lane.run(|| 3).await.unwrap(), 3, "the lane still serves");
    }
}
