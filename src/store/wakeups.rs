//! Wakeups: how a store tells a waiting acquire in this process "try again now".
//!
//! Every waiting acquire registers its ticket here and sleeps on its own
//! `Notify`. The memory store wakes tickets directly when units free up; the
//! Redis store's subscriber task wakes them when a script publishes to this
//! instance's channel. `Notify` keeps one pending wake when nobody is awaiting
//! yet, so a wake that lands between "attempt" and "sleep" is never lost.
//!
//! A wake carries the store-clock time (µs) of the change that caused it, so
//! the waiter can measure the handoff: release of a unit -> grant to the next.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::semaphore::PermitId;

#[derive(Default)]
struct Slot {
    notify: Notify,
    /// Store-clock µs of the latest wake's cause; 0 when none.
    woken_at_us: AtomicU64,
    /// The cause of the last wake: another wake with the same one is a copy
    /// (a cluster relays each wake to every node, and this process listens
    /// on all). Not "no later than": after a failover the new master's clock
    /// may be a little behind the old one's.
    latest_cause_us: AtomicU64,
}

/// The waiting tickets of this process.
#[derive(Default)]
pub struct Wakeups {
    slots: Mutex<HashMap<PermitId, Arc<Slot>>>,
}

impl Wakeups {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<PermitId, Arc<Slot>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a waiting ticket; it is removed when the handle drops. The
    /// `permitd_waiters` gauge follows registrations, so it is exact at any
    /// moment without being recomputed at each scrape.
    pub fn register(self: &Arc<Self>, ticket: PermitId) -> WakeHandle {
        let slot = Arc::new(Slot::default());
        self.slots().insert(ticket, slot.clone());
        metrics::gauge!(crate::telemetry::WAITERS).increment(1.0);
        WakeHandle {
            registry: self.clone(),
            ticket,
            slot,
        }
    }

    /// Wakes one ticket, if it waits in this process. `cause_us` is the store
    /// clock of the change that freed capacity.
    pub fn wake(&self, ticket: PermitId, cause_us: Option<u64>) {
        let slot = self.slots().get(&ticket).cloned();
        if let Some(slot) = slot {
            if let Some(us) = cause_us {
                if slot.latest_cause_us.swap(us, Ordering::Relaxed) == us {
                    return;
                }
                slot.woken_at_us.store(us, Ordering::Relaxed);
            }
            slot.notify.notify_one();
        }
    }

    /// Wakes every waiting ticket: after notifications may have been lost
    /// (the subscriber connection dropped), each waiter re-checks.
    pub fn wake_all(&self) {
        for slot in self.slots().values() {
            slot.notify.notify_one();
        }
    }

    /// How many acquires wait in this process.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One waiting ticket's registration.
pub struct WakeHandle {
    registry: Arc<Wakeups>,
    ticket: PermitId,
    slot: Arc<Slot>,
}

impl WakeHandle {
    /// Completes at the next wake (or at once if one is pending).
    pub async fn notified(&self) {
        self.slot.notify.notified().await;
    }

    /// Takes the store-clock µs of the latest wake's cause, if any.
    pub fn take_woken_at_us(&self) -> Option<u64> {
        match self.slot.woken_at_us.swap(0, Ordering::Relaxed) {
            0 => None,
            us => Some(us),
        }
    }
}

impl Drop for WakeHandle {
    fn drop(&mut self) {
        self.registry.slots().remove(&self.ticket);
        metrics::gauge!(crate::telemetry::WAITERS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost() {
        let wakeups = Wakeups::new();
        let ticket = PermitId::random();
        let handle = wakeups.register(ticket);
        wakeups.wake(ticket, Some(42));
        tokio::time::timeout(std::time::Duration::from_secs(1), handle.notified())
            .await
            .expect("the pending wake completes the wait");
        assert_eq!(handle.take_woken_at_us(), Some(42));
        assert_eq!(handle.take_woken_at_us(), None);
    }

    #[test]
    fn dropping_the_handle_unregisters_the_ticket() {
        let wakeups = Wakeups::new();
        let handle = wakeups.register(PermitId::random());
        assert_eq!(wakeups.len(), 1);
        drop(handle);
        assert!(wakeups.is_empty());
    }

    #[tokio::test]
    async fn a_copy_of_a_wake_already_seen_wakes_nobody() {
        let wakeups = Wakeups::new();
        let ticket = PermitId::random();
        let handle = wakeups.register(ticket);
        wakeups.wake(ticket, Some(42));
        handle.notified().await;
        // The same wake relayed by two other cluster nodes.
        wakeups.wake(ticket, Some(42));
        wakeups.wake(ticket, Some(42));
        let copy = tokio::time::timeout(std::time::Duration::from_millis(50), handle.notified());
        assert!(copy.await.is_err(), "a copy woke the waiter");
        // A new change, even with an earlier clock (a failed-over master's).
        wakeups.wake(ticket, Some(41));
        tokio::time::timeout(std::time::Duration::from_secs(1), handle.notified())
            .await
            .expect("a newer wake wakes");
    }
}
