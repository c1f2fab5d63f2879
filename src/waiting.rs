//! The waiting acquire: how a request with `wait_ms` is held open until it is
//! granted, its wait runs out, the client goes away, or permitd shuts down.
//!
//! One loop serves both stores, because the store does the deciding (who is
//! next, in FIFO order) and only tells this loop "queued at position N" or a
//! final answer. Between attempts the loop sleeps until the first of:
//! - its permit, handed to it by the store call that freed the units (a
//!   release, an expiry, a limit raise, a waiter ahead leaving): it answers
//!   with it at once, with no attempt of its own;
//! - a wake for its ticket (pushed by the store when units may fit but it
//!   could not hand the permit over);
//! - for the queue's head only, the soonest lease expiry (a holder that
//!   crashed frees units without anyone telling us);
//! - on Redis, the end of the soonest waiter lease (a waiter whose instance
//!   died blocks the queue until then, and nobody else will say it is gone);
//! - the re-check interval, which bounds the damage of a lost notification
//!   and, on Redis, renews this waiter's lease in the queue;
//! - the end of its wait, then one last try-once attempt that also leaves the
//!   queue and reports `Unavailable`;
//! - shutdown, answered with 503 after leaving the queue.
//!
//! A store call that fails transiently while the ticket waits (a stall, a
//! dropped connection) is tried again until the wait is over: the ticket
//! keeps its place meanwhile. If the request is dropped mid-wait (the client
//! disconnected), or a store call fails for good or at the end of the wait
//! (it may have run all the same), a guard hands
//! `leave` to a spawned task, since `Drop` cannot await: the ticket leaves the
//! queue and, if it had just been granted, its permit is released.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::semaphore::{AcquireOutcome, AcquireRequest, Permit, PermitId, SemaphoreName};
use crate::store::{Attempt, Handoff, SemaphoreStore, StoreError, Woken};

/// How waiting behaves, from settings, plus the shutdown signal.
#[derive(Debug, Clone)]
pub struct WaitSettings {
    /// Longest sleep between two attempts of one waiter.
    pub recheck: Duration,
    /// Cancelled when permitd begins to shut down.
    pub shutdown: CancellationToken,
    /// The most acquires that may wait at once in this process
    /// (`--max-waiters`).
    pub places: Arc<WaitPlaces>,
}

/// Places for waiting acquires. Each waiter holds a connection, so one
/// descriptor, for its whole wait: bounded, so that waiters can never take
/// the last descriptors and lock out the release that would serve them.
#[derive(Debug)]
pub struct WaitPlaces {
    max: usize,
    taken: AtomicUsize,
}

impl WaitPlaces {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            taken: AtomicUsize::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place, held until the guard drops; `None` when all are taken.
    fn take(self: &Arc<Self>) -> Option<Place> {
        if self.taken.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.taken.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Place(self.clone()))
    }
}

struct Place(Arc<WaitPlaces>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Withdraws a ticket if the waiting future is dropped before it finished.
struct LeaveGuard {
    store: Arc<dyn SemaphoreStore>,
    name: SemaphoreName,
    ticket: PermitId,
    armed: bool,
}

impl Drop for LeaveGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, name, ticket) = (self.store.clone(), self.name.clone(), self.ticket);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.leave(&name, ticket).await {
                    // On Redis the waiter's lease ends soon anyway.
                    tracing::debug!(error = %e, "could not withdraw an abandoned waiter");
                }
            });
        }
    }
}

/// Why a waiting acquire ended without an answer.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// permitd began to shut down while the request waited; its place in
    /// the queue was given up.
    #[error("permitd is shutting down")]
    ShuttingDown,
    /// As many acquires as `--max-waiters` already wait in this process, and
    /// this one, tried once, did not fit.
    #[error("too many waiting acquires")]
    TooManyWaiters { max: usize },
}

/// Acquires, waiting up to `request.wait` for capacity in FIFO order.
///
/// # Errors
/// Store failures, and `ShuttingDown` when permitd shuts down while the
/// request waits.
pub async fn acquire(
    store: &Arc<dyn SemaphoreStore>,
    request: &AcquireRequest,
    settings: &WaitSettings,
) -> Result<AcquireOutcome, WaitError> {
    let ticket = PermitId::random();
    // Armed until a final answer is in hand: a store call that failed or timed
    // out may still have run, so even a try-once acquire withdraws its ticket.
    let mut guard = LeaveGuard {
        store: store.clone(),
        name: request.name.clone(),
        ticket,
        armed: true,
    };
    if request.wait.as_millis() == 0 {
        return match store.attempt(request, ticket, false).await? {
            Attempt::Done { outcome, .. } => {
                guard.armed = false;
                Ok(outcome)
            }
            Attempt::Queued { .. } => Err(queued_without_asking().into()),
        };
    }

    // No place left to wait in: tried once, so a unit that is free is still
    // granted; otherwise answered at once, so the connection (a descriptor)
    // is given back instead of held for the whole wait.
    let Some(_place) = settings.places.take() else {
        return match store.attempt(request, ticket, false).await? {
            Attempt::Done {
                outcome: AcquireOutcome::Unavailable { .. },
                ..
            } => {
                guard.armed = false;
                Err(WaitError::TooManyWaiters {
                    max: settings.places.max(),
                })
            }
            Attempt::Done { outcome, .. } => {
                guard.armed = false;
                Ok(outcome)
            }
            Attempt::Queued { .. } => Err(queued_without_asking().into()),
        };
    };
    let started = Instant::now();
    let deadline = started + request.wait.as_duration();
    let wake = store.wakeups().register(ticket);
    let mut last_try = false;
    // Between failed attempts: short at first, so a waiter is back as soon
    // as the store is (a failover takes a second or two), never longer than
    // a re-check.
    let mut retry_in = RETRY_FIRST.min(settings.recheck);
    loop {
        let attempt = match store.attempt(request, ticket, !last_try).await {
            // The store stalled or dropped a connection while this ticket
            // waits: the ticket keeps its place (its waiter lease outlasts a
            // stall within the store's timeout), so try again rather than
            // giving up a place in the queue, until the wait is over.
            Err(e) if e.is_transient() && !last_try && Instant::now() < deadline => {
                tracing::debug!(error = %e, "store call failed while waiting; trying again");
                let until = deadline.min(Instant::now() + retry_in);
                retry_in = (retry_in * 2).min(settings.recheck);
                tokio::select! {
                    // A wake means the store answers again. What it was for
                    // is read (and so cleared) here: the attempt that follows
                    // answers it, and it must not pass for a later wake's.
                    () = wake.notified() => {
                        if let Woken::Granted(handoff) = wake.woken() {
                            guard.armed = false;
                            return Ok(handed(request, ticket, handoff, started));
                        }
                    }
                    () = tokio::time::sleep_until(until.into()) => {}
                    () = settings.shutdown.cancelled() => {
                        return Err(leave_for_shutdown(store, request, &mut guard).await);
                    }
                }
                last_try = Instant::now() >= deadline;
                continue;
            }
            attempt => attempt?,
        };
        retry_in = RETRY_FIRST.min(settings.recheck);
        match attempt {
            Attempt::Done { outcome, clock_us } => {
                guard.armed = false;
                if let AcquireOutcome::Granted(_) = &outcome {
                    let handoff_us = wake
                        .take_woken_at_us()
                        .map(|cause_us| clock_us.saturating_sub(cause_us));
                    record_grant(started, handoff_us);
                }
                return Ok(outcome);
            }
            Attempt::Queued { .. } if last_try => return Err(queued_without_asking().into()),
            Attempt::Queued {
                position,
                soonest_expiry,
                soonest_waiter_lease,
            } => {
                let now = Instant::now();
                let mut until = deadline.min(now + settings.recheck);
                // A millisecond late, so the lease has surely ended on the
                // store's clock when we look.
                let late = Duration::from_millis(1);
                if position == 0
                    && let Some(expiry) = soonest_expiry
                {
                    until = until.min(now + expiry + late);
                }
                if let Some(lease) = soonest_waiter_lease {
                    until = until.min(now + lease + late);
                }
                loop {
                    tokio::select! {
                        () = wake.notified() => {
                            match wake.woken() {
                                Woken::Granted(handoff) => {
                                    guard.armed = false;
                                    return Ok(handed(request, ticket, handoff, started));
                                }
                                // Told it is head and does not fit: nothing
                                // to attempt before the soonest lease ends.
                                Woken::Head { soonest_expiry } => {
                                    if let Some(expiry) = soonest_expiry {
                                        until = until.min(Instant::now() + expiry + late);
                                    }
                                    continue;
                                }
                                Woken::Attempt => {}
                            }
                        }
                        () = tokio::time::sleep_until(until.into()) => {}
                        () = settings.shutdown.cancelled() => {
                            return Err(leave_for_shutdown(store, request, &mut guard).await);
                        }
                    }
                    break;
                }
                last_try = Instant::now() >= deadline;
            }
        }
    }
}

/// The permit the store handed this ticket (its id), from the request.
fn handed(
    request: &AcquireRequest,
    ticket: PermitId,
    handoff: Handoff,
    started: Instant,
) -> AcquireOutcome {
    // Granted in the very call that freed the units: no time passed between
    // the two on the store's clock.
    record_grant(started, Some(0));
    AcquireOutcome::Granted(Permit {
        id: ticket,
        semaphore: request.name.clone(),
        count: request.count.get(),
        fencing_token: handoff.fencing_token,
        acquired_at: handoff.acquired_at,
        expires_at: handoff.expires_at,
        holder: request.holder.as_ref().map(|h| h.as_str().to_owned()),
    })
}

/// The wait and, when a change that freed units led to the grant, the
/// handoff: the store-clock µs from that change to the grant.
fn record_grant(started: Instant, handoff_us: Option<u64>) {
    metrics::histogram!(crate::telemetry::ACQUIRE_WAIT).record(started.elapsed().as_secs_f64());
    if let Some(us) = handoff_us {
        metrics::histogram!(crate::telemetry::HANDOFF).record(us as f64 / 1e6);
    }
}

/// Withdraws the ticket before answering a shutdown, awaited: the process
/// exits soon after the answer, and a withdrawal left to the guard's spawned
/// task might never run, leaving the ticket queued (or its fresh permit held)
/// until its lease ends. The guard is disarmed only once the store has the
/// ticket out; otherwise it tries again as it drops.
async fn leave_for_shutdown(
    store: &Arc<dyn SemaphoreStore>,
    request: &AcquireRequest,
    guard: &mut LeaveGuard,
) -> WaitError {
    if store.leave(&request.name, guard.ticket).await.is_ok() {
        guard.armed = false;
    }
    WaitError::ShuttingDown
}

/// The first wait before trying again after a failed attempt; it doubles up
/// to the re-check interval.
const RETRY_FIRST: Duration = Duration::from_millis(50);

fn queued_without_asking() -> StoreError {
    StoreError::Internal("store queued a try-once acquire".into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::semaphore::{
        Count, IdleTtl, Limit, Permit, ReleaseOutcome, SemaphorePage, SemaphoreStatus,
        SetLimitOutcome, Ttl, WaitTime,
    };
    use crate::store::memory::MemoryStore;
    use crate::store::{ListError, Wakeups};

    /// The memory store, except that its second attempt fails as a Redis
    /// call that timed out would, at the moment shutdown begins.
    struct FailsAtShutdown {
        inner: MemoryStore,
        attempts: AtomicUsize,
        shutdown: CancellationToken,
    }

    #[async_trait]
    impl SemaphoreStore for FailsAtShutdown {
        fn kind(&self) -> &'static str {
            "memory"
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn set_limit(
            &self,
            name: &SemaphoreName,
            limit: Limit,
            idle_ttl: IdleTtl,
        ) -> Result<SetLimitOutcome, StoreError> {
            self.inner.set_limit(name, limit, idle_ttl).await
        }
        async fn list(
            &self,
            prefix: &str,
            cursor: Option<&str>,
            limit: usize,
        ) -> Result<SemaphorePage, ListError> {
            self.inner.list(prefix, cursor, limit).await
        }
        async fn status(
            &self,
            name: &SemaphoreName,
        ) -> Result<Option<SemaphoreStatus>, StoreError> {
            self.inner.status(name).await
        }
        async fn delete(&self, name: &SemaphoreName) -> Result<bool, StoreError> {
            self.inner.delete(name).await
        }
        async fn attempt(
            &self,
            request: &AcquireRequest,
            ticket: PermitId,
            queue: bool,
        ) -> Result<Attempt, StoreError> {
            if self.attempts.fetch_add(1, Ordering::Relaxed) == 1 {
                self.shutdown.cancel();
                return Err(StoreError::Unavailable("timed out".into()));
            }
            self.inner.attempt(request, ticket, queue).await
        }
        async fn leave(&self, name: &SemaphoreName, ticket: PermitId) -> Result<(), StoreError> {
            self.inner.leave(name, ticket).await
        }
        fn wakeups(&self) -> &Arc<Wakeups> {
            self.inner.wakeups()
        }
        async fn permit(
            &self,
            name: &SemaphoreName,
            id: PermitId,
        ) -> Result<Option<Permit>, StoreError> {
            self.inner.permit(name, id).await
        }
        async fn refresh(
            &self,
            name: &SemaphoreName,
            id: PermitId,
            ttl: Ttl,
        ) -> Result<Option<Permit>, StoreError> {
            self.inner.refresh(name, id, ttl).await
        }
        async fn release(
            &self,
            name: &SemaphoreName,
            id: PermitId,
        ) -> Result<ReleaseOutcome, StoreError> {
            self.inner.release(name, id).await
        }
    }

    /// Shutdown met while a failed call waits to be tried again: the ticket
    /// is out of the queue when the answer is given, not only once the
    /// guard's spawned task gets to run (the process may exit first). On one
    /// thread, so nothing spawned runs before the check.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn shutdown_while_a_failed_call_waits_withdraws_before_answering() {
        let shutdown = CancellationToken::new();
        let flaky = Arc::new(FailsAtShutdown {
            inner: MemoryStore::new(),
            attempts: AtomicUsize::new(0),
            shutdown: shutdown.clone(),
        });
        let store: Arc<dyn SemaphoreStore> = flaky.clone();
        let name = SemaphoreName::parse("busy").unwrap();
        let request = AcquireRequest {
            name: name.clone(),
            limit: Some(Limit::new(1).unwrap()),
            count: Count::ONE,
            ttl: Ttl::new(60_000, 3_600_000).unwrap(),
            wait: WaitTime::NONE,
            holder: None,
            idempotency_key: None,
        };
        // The one unit is held, so the waiter queues.
        let held = flaky
            .inner
            .attempt(&request, PermitId::random(), false)
            .await;
        assert!(matches!(held, Ok(Attempt::Done { .. })), "{held:?}");
        let waiting = AcquireRequest {
            wait: WaitTime::new(30_000, 60_000).unwrap(),
            ..request
        };
        let settings = WaitSettings {
            recheck: Duration::from_millis(20),
            shutdown,
            places: WaitPlaces::new(10),
        };
        let answer = acquire(&store, &waiting, &settings).await;
        assert!(matches!(answer, Err(WaitError::ShuttingDown)), "{answer:?}");
        let status = flaky.inner.status(&name).await.unwrap().unwrap();
        assert_eq!(status.waiting, 0, "the ticket is still queued");
    }
}
