//! Doorbells: how a SuperNode's held Fleet pull learns that an instruction for its node was
//! stored, through this process or (PostgreSQL) another replica, without looking at the state
//! meanwhile (bells keyed by node), and that an object it waits for was stored here (keyed by
//! object id).
//!
//! A waiter takes its node's [`Doorbell`], arms it ([`Doorbell::rung`] with `enable`) *before* it
//! looks for an instruction, and awaits it when it found none: a ring between the look and the
//! wait is not lost. Whoever stores an instruction rings its node; an engine that cannot tell
//! what it missed (a lost notification connection) rings every bell, so that waiters look again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::NodeId;

/// The bells of the keys (nodes, objects) that have a waiter here.
pub struct Doorbells<K = NodeId> {
    bells: Mutex<HashMap<K, Arc<Notify>>>,
}

impl<K: Hash + Eq + Copy> Doorbells<K> {
    /// No bell yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            bells: Mutex::new(HashMap::new()),
        })
    }

    /// `key`'s bell, for as long as the returned handle lives.
    pub fn bell(self: &Arc<Self>, key: K) -> Doorbell<K> {
        let notify = self.bells.lock().entry(key).or_default().clone();
        Doorbell {
            bells: self.clone(),
            key,
            notify,
        }
    }

    /// What `key` waits for happened (an instruction for the node, the object stored): its
    /// waiters look again.
    pub fn ring(&self, key: K) {
        if let Some(n) = self.bells.lock().get(&key) {
            n.notify_waiters();
        }
    }

    /// Something may have been missed: every waiter looks again.
    pub fn ring_all(&self) {
        for n in self.bells.lock().values() {
            n.notify_waiters();
        }
    }

    /// Keys with a bell (waiters) now.
    pub fn len(&self) -> usize {
        self.bells.lock().len()
    }

    /// No key has a bell.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One waiter's hold on its key's bell; the bell goes when its last holder does.
pub struct Doorbell<K: Hash + Eq + Copy = NodeId> {
    bells: Arc<Doorbells<K>>,
    key: K,
    notify: Arc<Notify>,
}

impl<K: Hash + Eq + Copy> Doorbell<K> {
    /// Resolves at the next ring after it was enabled (`Notified::enable`) or first polled.
    pub fn rung(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl<K: Hash + Eq + Copy> Drop for Doorbell<K> {
    fn drop(&mut self) {
        let mut bells = self.bells.bells.lock();
        // The map's reference and ours: nobody else waits on this key.
        if Arc::strong_count(&self.notify) == 2 {
            bells.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_ring_after_arming_is_not_lost_and_bells_go_with_their_waiters() {
        let bells = Doorbells::<NodeId>::new();
        let bell = bells.bell(7);
        let other = bells.bell(7);
        assert_eq!(bells.len(), 1);
        {
            let rung = bell.rung();
            tokio::pin!(rung);
            rung.as_mut().enable();
            // Rung between the look and the wait: the armed waiter still sees it.
            bells.ring(8);
            bells.ring(7);
            tokio::time::timeout(Duration::from_secs(1), rung)
                .await
                .expect("the ring reached the armed waiter");
            // A ring for another node does not wake this one.
            let rung = bell.rung();
            tokio::pin!(rung);
            rung.as_mut().enable();
            bells.ring(8);
            assert!(
                tokio::time::timeout(Duration::from_millis(50), rung.as_mut())
                    .await
                    .is_err()
            );
            bells.ring_all();
            tokio::time::timeout(Duration::from_secs(1), rung)
                .await
                .expect("ring_all wakes every waiter");
        }
        let bell2 = bells.bell(9);
        drop(bell2);
        assert_eq!(bells.len(), 1, "a bell without waiters goes");
        drop(bell);
        assert_eq!(bells.len(), 1, "one waiter left");
        drop(other);
        assert!(bells.is_empty());
    }
}
