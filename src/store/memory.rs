//! The embedded store: every semaphore in this process's memory.
//!
//! It keeps the same semantics as the Redis store (see `store/mod.rs`) so that
//! `cargo run` works with nothing else installed and the contract suite can run
//! against both. It is not shared between permitd instances, which is why the
//! application warns when it starts on it.
//!
//! One `std::sync::Mutex` guards the whole map: every operation is a short,
//! non-async critical section (no `.await` while locked), which is both the
//! atomicity the contract asks for and cheaper than an async lock. Waiters are
//! woken through `Wakeups` from inside that section (its own lock is only ever
//! taken after ours, never the other way round).
//!
//! Waiters here cannot outlive the process, so unlike Redis waiters they need
//! no lease: a waiter that goes away leaves through `leave`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{Attempt, SemaphoreStore, StoreError, Wakeups};
use crate::semaphore::{
    AcquireOutcome, AcquireRequest, HolderInfo, Limit, MAX_LISTED_HOLDERS, Millis, Permit,
    PermitId, ReleaseOutcome, SemaphoreName, SemaphoreStatus, SetLimitOutcome, Ttl,
};

pub struct MemoryStore {
    semaphores: Mutex<HashMap<SemaphoreName, SemaphoreState>>,
    wakeups: Arc<Wakeups>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            semaphores: Mutex::default(),
            wakeups: Wakeups::new(),
        }
    }
}

struct PermitRecord {
    count: u32,
    fencing_token: u64,
    acquired_at: Millis,
    expires_at: Millis,
    holder: Option<String>,
    /// The idempotency key and request fingerprint this permit was made for.
    idempotency: Option<(String, String)>,
    /// An idempotent retry (another ticket) was handed this permit: the
    /// ticket that made it may no longer release it by withdrawing.
    claimed: bool,
}

struct SemaphoreState {
    limit: u32,
    /// Sum of `count` over `permits`, kept in step inside every critical section.
    held: u32,
    /// The last fencing token handed out.
    fence: u64,
    permits: HashMap<PermitId, PermitRecord>,
    /// Leases ordered by end, so expiry only touches what has expired.
    expiries: BTreeSet<(Millis, PermitId)>,
    idempotency: HashMap<String, PermitId>,
    /// Waiting tickets and their counts, in arrival order.
    queue: Queue,
    /// The head of the queue left since the last wake: the new head must be
    /// told it is head (see `wake_heads`).
    head_left: bool,
}

impl SemaphoreState {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            held: 0,
            fence: now_micros(),
            permits: HashMap::new(),
            expiries: BTreeSet::new(),
            idempotency: HashMap::new(),
            queue: Queue::default(),
            head_left: false,
        }
    }

    /// Drops every permit whose lease ended at or before `now`, counting them
    /// as lease expiries (as the Redis scripts do); returns whether any did.
    fn expire(&mut self, now: Millis) -> bool {
        let mut swept = 0;
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            self.remove(id);
            swept += 1;
        }
        if swept > 0 {
            metrics::counter!(crate::telemetry::LEASE_EXPIRIES).increment(swept);
        }
        swept > 0
    }

    fn dequeue(&mut self, ticket: PermitId) -> bool {
        match self.queue.remove(ticket) {
            Some(was_head) => {
                self.head_left |= was_head;
                true
            }
            None => false,
        }
    }

    /// Whether `count` units for `ticket` fit after every waiter ahead of it
    /// (all of the queue when the ticket is not in it).
    fn fits(&self, ticket: PermitId, count: u32) -> bool {
        let Some(free) = self.limit.checked_sub(self.held) else {
            return false;
        };
        let mut needed = u64::from(count);
        for (waiter, waiter_count) in self.queue.iter() {
            if waiter == ticket || needed > u64::from(free) {
                break;
            }
            needed += u64::from(waiter_count);
        }
        needed <= u64::from(free)
    }

    /// Wakes the waiters at the head of the queue whose counts fit now, in
    /// order; the first that does not fit blocks the rest (strict FIFO). When
    /// the old head left, a new head that does not fit is woken all the same,
    /// so it learns it is head and aims its timer at the next lease end.
    fn wake_heads(&mut self, wakeups: &Wakeups) {
        let head_left = std::mem::take(&mut self.head_left);
        let mut free = self.limit.saturating_sub(self.held);
        let cause = now_micros();
        for (n, (ticket, count)) in self.queue.iter().enumerate() {
            if count > free {
                if n == 0 && head_left {
                    wakeups.wake(ticket, Some(cause));
                }
                break;
            }
            free -= count;
            wakeups.wake(ticket, Some(cause));
        }
    }

    /// After a grant that freed nothing: every waiter that fits was woken by
    /// the change that freed its units, so only a new head that does not
    /// fit is told (to aim its timer); waking the rest again made a limit
    /// raise with n waiters cost n^2/2 wakes.
    fn tell_blocked_head(&mut self, wakeups: &Wakeups) {
        if !std::mem::take(&mut self.head_left) {
            return;
        }
        let free = self.limit.saturating_sub(self.held);
        if let Some((ticket, count)) = self.queue.front()
            && count > free
        {
            wakeups.wake(ticket, Some(now_micros()));
        }
    }

    fn remove(&mut self, id: PermitId) -> Option<PermitRecord> {
        let record = self.permits.remove(&id)?;
        self.expiries.remove(&(record.expires_at, id));
        self.held -= record.count;
        if let Some((key, _)) = &record.idempotency {
            self.idempotency.remove(key);
        }
        Some(record)
    }

    fn soonest_expiry(&self) -> Option<Millis> {
        self.expiries.first().map(|&(at, _)| at)
    }
}

/// The waiting tickets in arrival order, with an index, so that a ticket
/// leaves in O(log n) wherever it stands.
#[derive(Default)]
struct Queue {
    by_arrival: BTreeMap<u64, (PermitId, u32)>,
    arrival: HashMap<PermitId, u64>,
    next: u64,
}

impl Queue {
    /// Appends a ticket; returns its position.
    fn push(&mut self, ticket: PermitId, count: u32) -> usize {
        self.next += 1;
        self.by_arrival.insert(self.next, (ticket, count));
        self.arrival.insert(ticket, self.next);
        self.by_arrival.len() - 1
    }

    /// Takes a ticket out; `Some(whether it was the head)` if it was in.
    fn remove(&mut self, ticket: PermitId) -> Option<bool> {
        let arrival = self.arrival.remove(&ticket)?;
        let was_head = self.by_arrival.first_key_value().map(|(&a, _)| a) == Some(arrival);
        self.by_arrival.remove(&arrival);
        Some(was_head)
    }

    /// How many wait ahead of the ticket: O(1) for the head, else the
    /// length of the walk to it (only a queued answer asks).
    fn position(&self, ticket: PermitId) -> Option<usize> {
        let arrival = *self.arrival.get(&ticket)?;
        Some(self.by_arrival.range(..arrival).count())
    }

    fn front(&self) -> Option<(PermitId, u32)> {
        self.by_arrival.first_key_value().map(|(_, &entry)| entry)
    }

    fn iter(&self) -> impl Iterator<Item = (PermitId, u32)> + '_ {
        self.by_arrival.values().copied()
    }

    fn len(&self) -> usize {
        self.by_arrival.len()
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn to_permit(name: &SemaphoreName, id: PermitId, record: &PermitRecord) -> Permit {
    Permit {
        id,
        semaphore: name.clone(),
        count: record.count,
        fencing_token: record.fencing_token,
        acquired_at: record.acquired_at,
        expires_at: record.expires_at,
        holder: record.holder.clone(),
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The attempt's decision, under the lock.
    fn decide(&self, request: &AcquireRequest, ticket: PermitId, queue: bool) -> Attempt {
        let mut map = self.lock();
        // Read under the lock, so the order of `acquired_at` is the order of
        // the fencing tokens.
        let now = Millis::now();
        let done = |outcome| Attempt::Done {
            outcome,
            clock_us: now_micros(),
        };
        let state = match (map.get_mut(&request.name), request.limit) {
            (None, None) => return done(AcquireOutcome::NotFound),
            (Some(state), Some(limit)) if state.limit != limit.get() => {
                // It may have been the head holding others back (the limit was
                // changed while it waited): as in acquire.lua, wake who fits.
                if state.dequeue(ticket) {
                    state.wake_heads(&self.wakeups);
                }
                return done(AcquireOutcome::LimitConflict {
                    current: state.limit,
                });
            }
            (Some(state), _) => state,
            (None, Some(limit)) => map
                .entry(request.name.clone())
                .or_insert_with(|| SemaphoreState::new(limit.get())),
        };
        let expired = state.expire(now);

        if let Some(key) = &request.idempotency_key
            && let Some(&id) = state.idempotency.get(key.as_str())
        {
            let left = state.dequeue(ticket);
            let record = state
                .permits
                .get_mut(&id)
                .expect("an idempotency key names a live permit");
            let same = record
                .idempotency
                .as_ref()
                .is_some_and(|(_, fp)| *fp == request.fingerprint());
            let outcome = if same {
                // Handed to a retry: withdrawing the ticket that made it must
                // not release it now.
                record.claimed |= id != ticket;
                AcquireOutcome::Replayed(to_permit(&request.name, id, record))
            } else {
                AcquireOutcome::IdempotencyMismatch
            };
            if left || expired {
                state.wake_heads(&self.wakeups);
            }
            return done(outcome);
        }

        let count = request.count.get();
        if count > state.limit {
            if state.dequeue(ticket) || expired {
                state.wake_heads(&self.wakeups);
            }
            return done(AcquireOutcome::CountExceedsLimit { limit: state.limit });
        }
        if !state.fits(ticket, count) {
            let soonest = state.soonest_expiry();
            if queue {
                let position = match state.queue.position(ticket) {
                    Some(at) => at,
                    None => state.queue.push(ticket, count),
                };
                if expired {
                    state.wake_heads(&self.wakeups);
                }
                return Attempt::Queued {
                    position: position as u32,
                    soonest_expiry: soonest.map(|at| Duration::from_millis(at.0 - now.0)),
                    soonest_waiter_lease: None,
                };
            }
            if state.dequeue(ticket) || expired {
                state.wake_heads(&self.wakeups);
            }
            return done(AcquireOutcome::Unavailable {
                limit: state.limit,
                held: state.held,
                retry_after_ms: soonest.map(|at| at.0.saturating_sub(now.0)),
            });
        }

        state.dequeue(ticket);
        // Never below the clock, as in the Redis scripts (see `store`).
        state.fence = (state.fence + 1).max(now_micros());
        let record = PermitRecord {
            count,
            fencing_token: state.fence,
            acquired_at: now,
            expires_at: Millis(now.0 + request.ttl.as_millis()),
            holder: request.holder.as_ref().map(|h| h.as_str().to_owned()),
            idempotency: request
                .idempotency_key
                .as_ref()
                .map(|k| (k.as_str().to_owned(), request.fingerprint())),
            claimed: false,
        };
        if let Some((key, _)) = &record.idempotency {
            state.idempotency.insert(key.clone(), ticket);
        }
        state.expiries.insert((record.expires_at, ticket));
        state.held += count;
        let permit = to_permit(&request.name, ticket, &record);
        state.permits.insert(ticket, record);
        // Units this call freed (an expiry) may let the next waiters in.
        if expired {
            state.wake_heads(&self.wakeups);
        } else {
            state.tell_blocked_head(&self.wakeups);
        }
        done(AcquireOutcome::Granted(permit))
    }

    /// Runs `f` on the semaphore's state, after sweeping its expired leases
    /// (and waking who that lets in), with the clock read under the lock;
    /// `None` when the semaphore does not exist.
    fn with_swept<T>(
        &self,
        name: &SemaphoreName,
        f: impl FnOnce(&mut SemaphoreState, Millis) -> T,
    ) -> Option<T> {
        let mut map = self.lock();
        let state = map.get_mut(name)?;
        let now = Millis::now();
        if state.expire(now) {
            state.wake_heads(&self.wakeups);
        }
        Some(f(state, now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SemaphoreName, SemaphoreState>> {
        // A panic while locked cannot leave a half-applied change (every
        // mutation is a few infallible statements), so a poisoned lock is safe
        // to keep using.
        self.semaphores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl SemaphoreStore for MemoryStore {
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
    ) -> Result<SetLimitOutcome, StoreError> {
        let mut map = self.lock();
        match map.get_mut(name) {
            None => {
                map.insert(name.clone(), SemaphoreState::new(limit.get()));
                Ok(SetLimitOutcome::Created)
            }
            Some(state) if state.limit == limit.get() => Ok(SetLimitOutcome::Unchanged),
            Some(state) => {
                let previous = std::mem::replace(&mut state.limit, limit.get());
                // The head is told even if it no longer fits: it re-aims.
                state.head_left = true;
                // Swept first, as set_limit.lua does: an expired permit must
                // not hold back the waiters a raise lets in.
                state.expire(Millis::now());
                state.wake_heads(&self.wakeups);
                Ok(SetLimitOutcome::Changed { previous })
            }
        }
    }

    async fn status(&self, name: &SemaphoreName) -> Result<Option<SemaphoreStatus>, StoreError> {
        Ok(self.with_swept(name, |state, _| {
            let holders = state
                .expiries
                .iter()
                .take(MAX_LISTED_HOLDERS)
                .map(|(_, id)| {
                    let r = &state.permits[id];
                    HolderInfo {
                        holder: r.holder.clone(),
                        count: r.count,
                        fencing_token: r.fencing_token,
                        acquired_at: r.acquired_at,
                        expires_at: r.expires_at,
                    }
                })
                .collect();
            SemaphoreStatus {
                name: name.clone(),
                limit: state.limit,
                held: state.held,
                waiting: state.queue.len() as u32,
                holders,
            }
        }))
    }

    async fn delete(&self, name: &SemaphoreName) -> Result<bool, StoreError> {
        let Some(state) = self.lock().remove(name) else {
            return Ok(false);
        };
        // Waiters learn the news on their next attempt, not after their wait.
        for (ticket, _) in state.queue.iter() {
            self.wakeups.wake(ticket, None);
        }
        Ok(true)
    }

    async fn attempt(
        &self,
        request: &AcquireRequest,
        ticket: PermitId,
        queue: bool,
    ) -> Result<Attempt, StoreError> {
        Ok(self.decide(request, ticket, queue))
    }

    async fn leave(&self, name: &SemaphoreName, ticket: PermitId) -> Result<(), StoreError> {
        let mut map = self.lock();
        if let Some(state) = map.get_mut(name) {
            let expired = state.expire(Millis::now());
            let left = state.dequeue(ticket);
            let claimed = state.permits.get(&ticket).is_some_and(|r| r.claimed);
            let released = !claimed && state.remove(ticket).is_some();
            if expired || left || released {
                state.wake_heads(&self.wakeups);
            }
        }
        Ok(())
    }

    fn wakeups(&self) -> &Arc<Wakeups> {
        &self.wakeups
    }

    async fn permit(
        &self,
        name: &SemaphoreName,
        id: PermitId,
    ) -> Result<Option<Permit>, StoreError> {
        Ok(self
            .with_swept(name, |state, _| {
                state.permits.get(&id).map(|r| to_permit(name, id, r))
            })
            .flatten())
    }

    async fn refresh(
        &self,
        name: &SemaphoreName,
        id: PermitId,
        ttl: Ttl,
    ) -> Result<Option<Permit>, StoreError> {
        let refreshed = self.with_swept(name, |state, now| {
            let soonest_before = state.soonest_expiry();
            let record = state.permits.get_mut(&id)?;
            state.expiries.remove(&(record.expires_at, id));
            record.expires_at = Millis(now.0 + ttl.as_millis());
            state.expiries.insert((record.expires_at, id));
            let permit = to_permit(name, id, record);
            // The head waiter's timer aims at the soonest expiry: if that
            // moved earlier, wake the head so it aims again.
            if state.soonest_expiry() < soonest_before
                && let Some((head, _)) = state.queue.front()
            {
                self.wakeups.wake(head, None);
            }
            Some(permit)
        });
        Ok(refreshed.flatten())
    }

    async fn release(
        &self,
        name: &SemaphoreName,
        id: PermitId,
    ) -> Result<ReleaseOutcome, StoreError> {
        let now = Millis::now();
        let mut map = self.lock();
        let Some(state) = map.get_mut(name) else {
            return Ok(ReleaseOutcome::NoSemaphore);
        };
        state.expire(now);
        let released = state.remove(id).is_some();
        state.wake_heads(&self.wakeups);
        Ok(if released {
            ReleaseOutcome::Released
        } else {
            ReleaseOutcome::NoPermit
        })
    }
}
