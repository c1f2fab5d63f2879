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
//!
//! A store may also tell a ticket that it became the head of the queue but
//! does not fit, and when the soonest lease ends: the waiter then aims its
//! timer there instead of attempting (see [`Woken`]). Or it hands the ticket
//! its permit: the change that freed the units granted it (direct handoff),
//! and the waiter answers from the grant with no attempt of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::semaphore::{Millis, PermitId};

/// A permit granted to a waiting ticket by the change that freed its units:
/// what the waiter needs, with its own request, to answer with the permit
/// (its id is the ticket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    pub fencing_token: u64,
    pub acquired_at: Millis,
    pub expires_at: Millis,
}

struct Slot {
    notify: Notify,
    /// Store-clock µs of the latest wake's cause; 0 when none.
    woken_at_us: AtomicU64,
    /// The cause of the last wake: another wake with the same one is a copy
    /// (a cluster relays each wake to every node, and this process listens
    /// on all). Not "no later than": after a failover the new master's clock
    /// may be a little behind the old one's.
    latest_cause_us: AtomicU64,
    /// A wake asked for an attempt since the waiter last looked.
    attempt: AtomicBool,
    /// The latest head notice: ms until the soonest lease ends, -1 for no
    /// lease, `NO_NOTICE` when none came.
    head_notice_ms: AtomicI64,
    /// The permit the store granted this ticket, once it did (once only: a
    /// ticket is one permit).
    grant: OnceLock<Handoff>,
}

const NO_NOTICE: i64 = i64::MIN;

impl Default for Slot {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            woken_at_us: AtomicU64::new(0),
            latest_cause_us: AtomicU64::new(0),
            attempt: AtomicBool::new(false),
            head_notice_ms: AtomicI64::new(NO_NOTICE),
            grant: OnceLock::new(),
        }
    }
}

impl Slot {
    /// Whether a message with this cause is a copy of the last one.
    fn is_copy(&self, cause_us: Option<u64>) -> bool {
        cause_us.is_some_and(|us| self.latest_cause_us.swap(us, Ordering::Relaxed) == us)
    }
}

/// What a waiter was woken for.
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// Attempt again: units may fit now, or the store wants a re-check.
    Attempt,
    /// It is the head of the queue and does not fit: nothing to attempt until
    /// the soonest lease ends (`None`: no lease is held), or another wake.
    Head { soonest_expiry: Option<Duration> },
    /// The store granted it its permit: answer with it, attempt nothing.
    Granted(Handoff),
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
        if let Some(slot) = self.fresh(ticket, cause_us) {
            if let Some(us) = cause_us {
                slot.woken_at_us.store(us, Ordering::Relaxed);
            }
            slot.attempt.store(true, Ordering::Release);
            slot.notify.notify_one();
        }
    }

    /// Hands one ticket its permit, if it waits in this process; returns
    /// whether it does. A grant outranks every other wake (see
    /// `WakeHandle::woken`), and is never a copy to drop: there is one per
    /// ticket.
    pub fn grant(&self, ticket: PermitId, cause_us: Option<u64>, handoff: Handoff) -> bool {
        let Some(slot) = self.slots().get(&ticket).cloned() else {
            return false;
        };
        if let Some(us) = cause_us {
            slot.woken_at_us.store(us, Ordering::Relaxed);
        }
        let _ = slot.grant.set(handoff);
        slot.notify.notify_one();
        true
    }

    /// Whether this ticket waits in this process (then a store may hand it
    /// its permit).
    pub fn waits(&self, ticket: PermitId) -> bool {
        self.slots().contains_key(&ticket)
    }

    /// Tells one ticket, if it waits in this process, that it is the head of
    /// the queue and does not fit; `soonest_expiry_ms` is when the soonest
    /// lease ends (negative: none). Not a cause for the handoff measure.
    pub fn tell_head(&self, ticket: PermitId, cause_us: Option<u64>, soonest_expiry_ms: i64) {
        if let Some(slot) = self.fresh(ticket, cause_us) {
            slot.head_notice_ms
                .store(soonest_expiry_ms.max(-1), Ordering::Release);
            slot.notify.notify_one();
        }
    }

    /// The slot of a ticket waiting here, unless this message is a copy of
    /// the last one it got.
    fn fresh(&self, ticket: PermitId, cause_us: Option<u64>) -> Option<Arc<Slot>> {
        let slot = self.slots().get(&ticket).cloned()?;
        (!slot.is_copy(cause_us)).then_some(slot)
    }

    /// Wakes every waiting ticket: after notifications may have been lost
    /// (the subscriber connection dropped), each waiter re-checks.
    pub fn wake_all(&self) {
        for slot in self.slots().values() {
            slot.attempt.store(true, Ordering::Release);
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

    /// What the wake that completed `notified` was for: its permit, once the
    /// store granted it; else an attempt, unless only head notices came
    /// since the waiter last looked.
    pub fn woken(&self) -> Woken {
        if let Some(&handoff) = self.slot.grant.get() {
            return Woken::Granted(handoff);
        }
        // An attempt supersedes any notice: its answer says all a notice
        // would.
        let notice = self.slot.head_notice_ms.swap(NO_NOTICE, Ordering::Acquire);
        if self.slot.attempt.swap(false, Ordering::Acquire) || notice == NO_NOTICE {
            return Woken::Attempt;
        }
        Woken::Head {
            soonest_expiry: u64::try_from(notice).ok().map(Duration::from_millis),
        }
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

    #[tokio::test]
    async fn a_head_notice_is_no_attempt_unless_a_wake_came_too() {
        let head = |ms: Option<u64>| Woken::Head {
            soonest_expiry: ms.map(Duration::from_millis),
        };
        let wakeups = Wakeups::new();
        let ticket = PermitId::random();
        let handle = wakeups.register(ticket);
        wakeups.tell_head(ticket, Some(1), 250);
        handle.notified().await;
        assert_eq!(handle.woken(), head(Some(250)));
        wakeups.tell_head(ticket, Some(2), -1);
        handle.notified().await;
        assert_eq!(handle.woken(), head(None));
        // A notice, then a wake, before the waiter looks: it attempts.
        wakeups.tell_head(ticket, Some(3), 250);
        wakeups.wake(ticket, Some(4));
        handle.notified().await;
        assert_eq!(handle.woken(), Woken::Attempt);
        assert_eq!(handle.take_woken_at_us(), Some(4));
        // A copy of the last message (a cluster relays each) is dropped.
        wakeups.tell_head(ticket, Some(4), 10);
        let pending = tokio::time::timeout(Duration::from_millis(20), handle.notified());
        assert!(pending.await.is_err(), "a copy wakes nobody");
        wakeups.tell_head(ticket, Some(5), 10);
        handle.notified().await;
        assert_eq!(handle.woken(), head(Some(10)));
        assert_eq!(handle.take_woken_at_us(), None);
    }

    #[tokio::test]
    async fn a_grant_ends_the_wait_and_outranks_every_other_wake() {
        let wakeups = Wakeups::new();
        let ticket = PermitId::random();
        let handoff = Handoff {
            fencing_token: 7,
            acquired_at: Millis(1_000),
            expires_at: Millis(31_000),
        };
        assert!(!wakeups.grant(ticket, Some(1), handoff), "nobody waits yet");
        let handle = wakeups.register(ticket);
        assert!(wakeups.waits(ticket));
        wakeups.tell_head(ticket, Some(2), 250);
        assert!(wakeups.grant(ticket, Some(3), handoff));
        wakeups.wake(ticket, Some(4));
        handle.notified().await;
        assert_eq!(handle.woken(), Woken::Granted(handoff));
        // Read again (a second look after a failed call): still the grant.
        assert_eq!(handle.woken(), Woken::Granted(handoff));
        drop(handle);
        assert!(!wakeups.waits(ticket));
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
