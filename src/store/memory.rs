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
//!
//! Idle semaphores are forgotten as on Redis: one found idle past its idle
//! TTL is treated as absent and removed wherever it is met, and every call
//! also looks at the next few names after where the last one looked (the
//! map is ordered), so idle ones are removed even if nobody asks for them,
//! at a small bounded cost per call.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{
    Attempt, Handoff, Lifecycle, ListCursor, ListError, SemaphoreStore, StoreError, Wakeups,
};
use crate::semaphore::{
    AcquireOutcome, AcquireRequest, HolderInfo, IdleTtl, Limit, MAX_LISTED_HOLDERS, Millis, Permit,
    PermitId, ReleaseOutcome, SemaphoreName, SemaphorePage, SemaphoreStatus, SemaphoreSummary,
    SetLimitOutcome, Ttl,
};

/// How many names each call looks at for idle semaphores (see module docs).
const IDLE_SWEEP_STEP: usize = 4;

pub struct MemoryStore {
    state: Mutex<Semaphores>,
    lifecycle: Lifecycle,
    wakeups: Arc<Wakeups>,
}

/// Every semaphore, by name (ordered: the listing pages through it), and
/// where the idle sweep looked last.
#[derive(Default)]
struct Semaphores {
    map: BTreeMap<SemaphoreName, SemaphoreState>,
    swept_to: Option<SemaphoreName>,
}

impl Semaphores {
    /// The semaphore, unless it is absent or was idle long enough to be
    /// forgotten (then it is removed).
    fn live(&mut self, name: &SemaphoreName, now: Millis) -> Option<&mut SemaphoreState> {
        if self.map.get(name)?.forgotten(now) {
            self.map.remove(name);
            return None;
        }
        self.map.get_mut(name)
    }

    /// Looks at the next few names after the last look and removes those
    /// idle long enough (see module docs).
    fn sweep_idle(&mut self, now: Millis) {
        // Only the names to remove, and the last one looked at, are cloned:
        // this runs on every call.
        let from = self
            .swept_to
            .as_ref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        let mut forgotten = Vec::new();
        let mut last = None;
        for (name, state) in self
            .map
            .range::<SemaphoreName, _>((from, Bound::Unbounded))
            .take(IDLE_SWEEP_STEP)
        {
            if state.forgotten(now) {
                forgotten.push(name.clone());
            }
            last = Some(name);
        }
        self.swept_to = last.cloned();
        for name in forgotten {
            self.map.remove(&name);
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_lifecycle(Lifecycle::default())
    }
}

/// What an Idempotency-Key names in a semaphore.
enum KeyUse {
    /// A live permit.
    Live(PermitId),
    /// Its first request waits in the queue with this ticket and fingerprint.
    Waiting(PermitId, String),
    /// Its permit ended; remembered until `forget_at` with its fingerprint.
    Ended {
        fingerprint: String,
        forget_at: Millis,
    },
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

/// What a permit is made from: an acquire's request, kept with a queued
/// ticket that waits in this process so that the change that frees its
/// units can grant it (direct handoff, see `wake_heads`).
struct Asked {
    count: u32,
    ttl_ms: u64,
    holder: Option<String>,
    /// The Idempotency-Key and request fingerprint.
    idempotency: Option<(String, String)>,
}

impl Asked {
    fn new(request: &AcquireRequest) -> Self {
        Self {
            count: request.count.get(),
            ttl_ms: request.ttl.as_millis(),
            holder: request.holder.as_ref().map(|h| h.as_str().to_owned()),
            idempotency: request
                .idempotency_key
                .as_ref()
                .map(|k| (k.as_str().to_owned(), request.fingerprint())),
        }
    }
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
    idempotency: HashMap<String, KeyUse>,
    /// The Idempotency-Key of each queued ticket that came with one, so that
    /// its waiting mark goes when the ticket leaves the queue.
    waiting_keys: HashMap<PermitId, String>,
    /// Ended keys by when they are forgotten, so forgetting touches only
    /// those due.
    ended_keys: BTreeSet<(Millis, String)>,
    /// How long ended keys are remembered.
    retention: Duration,
    /// Forgotten after this long with no holders and no waiters (`None`:
    /// never), counted from `busy_until`.
    idle_ttl: Option<Duration>,
    /// The latest moment anything made it busy: a call, a lease end, a
    /// remembered key.
    busy_until: Millis,
    /// Waiting tickets and their counts, in arrival order.
    queue: Queue,
    /// The requests of the queued tickets that may be handed their permit.
    asked: HashMap<PermitId, Asked>,
    /// The head of the queue left since the last wake: the new head must be
    /// told it is head (see `wake_heads`).
    head_left: bool,
}

impl SemaphoreState {
    fn new(limit: u32, lifecycle: &Lifecycle, now: Millis) -> Self {
        Self {
            limit,
            held: 0,
            fence: now_micros(),
            permits: HashMap::new(),
            expiries: BTreeSet::new(),
            idempotency: HashMap::new(),
            waiting_keys: HashMap::new(),
            ended_keys: BTreeSet::new(),
            retention: lifecycle.idempotency_retention,
            idle_ttl: lifecycle.idle_ttl,
            busy_until: now,
            queue: Queue::default(),
            asked: HashMap::new(),
            head_left: false,
        }
    }

    /// Something used it until `until` (a call now, a lease end).
    fn busy(&mut self, until: Millis) {
        self.busy_until = self.busy_until.max(until);
    }

    /// Whether it has been idle for its idle TTL: no live holders, nobody
    /// waiting, nothing busy for that long.
    ///
    /// It only looks: sweeping here would take the expiries away from the
    /// call that then meets the semaphore, which must wake who they let in.
    fn forgotten(&self, now: Millis) -> bool {
        let Some(ttl) = self.idle_ttl else {
            return false;
        };
        let leased = self.expiries.last().is_some_and(|&(end, _)| end > now);
        !leased
            && self.queue.len() == 0
            && now.0 >= self.busy_until.0.saturating_add(ttl.as_millis() as u64)
    }

    /// Forgets the ended keys whose retention is over.
    fn forget_ended(&mut self, now: Millis) {
        while let Some((at, _)) = self.ended_keys.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.ended_keys.pop_first() else {
                break;
            };
            if matches!(self.idempotency.get(&key), Some(KeyUse::Ended { forget_at, .. }) if *forget_at <= now)
            {
                self.idempotency.remove(&key);
            }
        }
    }

    /// Drops every permit whose lease ended at or before `now`, counting them
    /// as lease expiries (as the Redis scripts do); returns whether any did.
    fn expire(&mut self, now: Millis) -> bool {
        self.forget_ended(now);
        let mut swept = 0;
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            self.remove(id, now, true);
            swept += 1;
        }
        if swept > 0 {
            metrics::counter!(crate::telemetry::LEASE_EXPIRIES).increment(swept);
        }
        swept > 0
    }

    fn dequeue(&mut self, ticket: PermitId) -> bool {
        self.asked.remove(&ticket);
        // A key that only marked this waiter is free again (a retry with it
        // is a new request, not one still running).
        if let Some(key) = self.waiting_keys.remove(&ticket)
            && matches!(self.idempotency.get(&key), Some(KeyUse::Waiting(t, _)) if *t == ticket)
        {
            self.idempotency.remove(&key);
        }
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

    /// Units not held (none while a lowered limit is still over-held).
    fn free(&self) -> u32 {
        self.limit.saturating_sub(self.held)
    }

    /// Serves the waiters at the head of the queue whose counts fit now, in
    /// order: each that waits in this process is granted its permit here and
    /// handed it (`Wakeups::grant`), any other is woken to attempt. The first
    /// that does not fit blocks the rest (strict FIFO). When the old head
    /// left and every waiter before it was handed its permit, that one is
    /// the new head and is told so (`tell_head`), to aim its timer at the
    /// next lease end.
    fn wake_heads(&mut self, wakeups: &Wakeups) {
        let mut free = self.free();
        let cause = now_micros();
        let mut fitting = Vec::new();
        let mut blocked = None;
        for (ticket, count) in self.queue.iter() {
            if count > free {
                blocked = Some(ticket);
                break;
            }
            free -= count;
            fitting.push(ticket);
        }
        let now = Millis::now();
        let mut all_handed = true;
        for ticket in fitting {
            let asked = wakeups
                .waits(ticket)
                .then(|| self.asked.remove(&ticket))
                .flatten();
            if let Some(asked) = asked {
                self.dequeue(ticket);
                let record = self.grant(ticket, asked, now);
                let handoff = Handoff {
                    fencing_token: record.fencing_token,
                    acquired_at: record.acquired_at,
                    expires_at: record.expires_at,
                };
                wakeups.grant(ticket, Some(cause), handoff);
            } else {
                all_handed = false;
                wakeups.wake(ticket, Some(cause));
            }
        }
        let head_left = std::mem::take(&mut self.head_left);
        if let Some(ticket) = blocked
            && all_handed
            && head_left
        {
            self.tell_head(wakeups, ticket, cause);
        }
    }

    /// Grants `ticket` the permit `asked` for (the caller checked it fits
    /// and took it out of the queue).
    fn grant(&mut self, ticket: PermitId, asked: Asked, now: Millis) -> &PermitRecord {
        // Never below the clock, as in the Redis scripts (see `store`).
        self.fence = (self.fence + 1).max(now_micros());
        let record = PermitRecord {
            count: asked.count,
            fencing_token: self.fence,
            acquired_at: now,
            expires_at: Millis(now.0 + asked.ttl_ms),
            holder: asked.holder,
            idempotency: asked.idempotency,
            claimed: false,
        };
        if let Some((key, _)) = &record.idempotency {
            self.idempotency.insert(key.clone(), KeyUse::Live(ticket));
        }
        self.expiries.insert((record.expires_at, ticket));
        self.busy(record.expires_at);
        self.held += asked.count;
        self.permits.insert(ticket, record);
        &self.permits[&ticket]
    }

    /// After a grant that freed nothing: every waiter that fits was woken by
    /// the change that freed its units, so only a new head that does not
    /// fit is told (to aim its timer); waking the rest again made a limit
    /// raise with n waiters cost n^2/2 wakes.
    fn tell_blocked_head(&mut self, wakeups: &Wakeups) {
        if !std::mem::take(&mut self.head_left) {
            return;
        }
        if let Some((ticket, count)) = self.queue.front()
            && count > self.free()
        {
            self.tell_head(wakeups, ticket, now_micros());
        }
    }

    /// Wakes the head if it fits now, or tells it when the soonest lease ends
    /// (prelude.lua's `wake_first`): after a change that may bring the next
    /// lease end earlier without freeing units.
    fn wake_first(&self, wakeups: &Wakeups) {
        if let Some((head, count)) = self.queue.front() {
            if count > self.free() {
                self.tell_head(wakeups, head, now_micros());
            } else {
                wakeups.wake(head, None);
            }
        }
    }

    /// Tells a head that does not fit when the soonest lease ends, so it aims
    /// its timer there without an attempt (see `Wakeups::tell_head`).
    fn tell_head(&self, wakeups: &Wakeups, ticket: PermitId, cause: u64) {
        let soonest_ms = self.soonest_expiry().map_or(-1, |at| {
            i64::try_from(at.0.saturating_sub(Millis::now().0)).unwrap_or(i64::MAX)
        });
        wakeups.tell_head(ticket, Some(cause), soonest_ms);
    }

    /// Takes a permit out and gives its units back. Its Idempotency-Key is
    /// remembered as ended for the retention (a retry hears so instead of
    /// taking a second permit), unless the permit was never `delivered` (its
    /// request went away before hearing of it): then a retry is a new request.
    fn remove(&mut self, id: PermitId, now: Millis, delivered: bool) -> Option<PermitRecord> {
        let record = self.permits.remove(&id)?;
        self.expiries.remove(&(record.expires_at, id));
        self.held -= record.count;
        if let Some((key, fingerprint)) = &record.idempotency {
            if self.retention.is_zero() || !delivered {
                self.idempotency.remove(key);
            } else {
                let forget_at = Millis(now.0.saturating_add(self.retention.as_millis() as u64));
                self.idempotency.insert(
                    key.clone(),
                    KeyUse::Ended {
                        fingerprint: fingerprint.clone(),
                        forget_at,
                    },
                );
                self.ended_keys.insert((forget_at, key.clone()));
                self.busy(forget_at);
            }
        }
        if self.held == 0 && self.queue.len() == 0 {
            // Emptied: its idle time counts from now (and past any key it
            // remembers), not from the end of a lease released early.
            let remembered = self.ended_keys.last().map(|(at, _)| *at);
            self.busy_until = remembered.map_or(now, |at| at.max(now));
        }
        Some(record)
    }

    /// Units held by live permits: `held` less the leases that ended and
    /// are not swept yet (a read leaves them in place).
    fn live_held(&self, now: Millis) -> u32 {
        let ended: u32 = self
            .expiries
            .iter()
            .take_while(|&&(at, _)| at <= now)
            .map(|(_, id)| self.permits[id].count)
            .sum();
        self.held - ended
    }

    /// The live leases, soonest end first.
    fn live_expiries(&self, now: Millis) -> impl Iterator<Item = &(Millis, PermitId)> {
        self.expiries.iter().skip_while(move |&&(at, _)| at <= now)
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

    pub fn with_lifecycle(lifecycle: Lifecycle) -> Self {
        Self {
            state: Mutex::default(),
            lifecycle,
            wakeups: Wakeups::new(),
        }
    }

    /// The attempt's decision, under the lock.
    fn decide(&self, request: &AcquireRequest, ticket: PermitId, queue: bool) -> Attempt {
        let mut semaphores = self.lock();
        // Read under the lock, so the order of `acquired_at` is the order of
        // the fencing tokens.
        let now = Millis::now();
        let done = |outcome| Attempt::Done {
            outcome,
            clock_us: now_micros(),
        };
        let exists = semaphores.live(&request.name, now).is_some();
        let state = match (exists, request.limit) {
            (false, None) => return done(AcquireOutcome::NotFound),
            (false, Some(limit)) => semaphores
                .map
                .entry(request.name.clone())
                .or_insert_with(|| SemaphoreState::new(limit.get(), &self.lifecycle, now)),
            (true, _) => semaphores
                .map
                .get_mut(&request.name)
                .expect("a live semaphore"),
        };
        state.busy(now);
        let expired = state.expire(now);

        // The same ticket again (a retry of a call whose answer was lost,
        // as acquire.lua): the permit it holds, whatever changed since.
        if let Some(record) = state.permits.get(&ticket) {
            let permit = to_permit(&request.name, ticket, record);
            if expired {
                state.wake_heads(&self.wakeups);
            }
            return done(AcquireOutcome::Granted(permit));
        }

        if let Some(key) = &request.idempotency_key {
            let fingerprint = request.fingerprint();
            let refusal = match state.idempotency.get(key.as_str()) {
                Some(&KeyUse::Live(id)) => {
                    let left = state.dequeue(ticket);
                    let record = state
                        .permits
                        .get_mut(&id)
                        .expect("an idempotency key names a live permit");
                    let same = record
                        .idempotency
                        .as_ref()
                        .is_some_and(|(_, fp)| *fp == fingerprint);
                    let outcome = if same {
                        // Handed to a retry: withdrawing the ticket that made
                        // it must not release it now.
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
                Some(KeyUse::Waiting(first, fp))
                    if *first != ticket && state.queue.position(*first).is_some() =>
                {
                    Some(if *fp == fingerprint {
                        AcquireOutcome::IdempotencyInFlight
                    } else {
                        AcquireOutcome::IdempotencyMismatch
                    })
                }
                Some(KeyUse::Ended {
                    fingerprint: fp, ..
                }) => Some(if *fp == fingerprint {
                    AcquireOutcome::PermitEnded
                } else {
                    AcquireOutcome::IdempotencyMismatch
                }),
                // This request itself, or one that left without a permit.
                Some(KeyUse::Waiting(..)) | None => None,
            };
            if let Some(outcome) = refusal {
                if state.dequeue(ticket) || expired {
                    state.wake_heads(&self.wakeups);
                }
                return done(outcome);
            }
        }

        // After the key, as in acquire.lua: a known key replays whatever
        // the limit is now.
        if let Some(limit) = request.limit
            && state.limit != limit.get()
        {
            // It may have been the head holding others back (the limit was
            // changed while it waited): wake who fits.
            if state.dequeue(ticket) || expired {
                state.wake_heads(&self.wakeups);
            }
            return done(AcquireOutcome::LimitConflict {
                current: state.limit,
            });
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
                    None => {
                        if let Some(key) = &request.idempotency_key {
                            // A retry while this waits is told so (409).
                            state.idempotency.insert(
                                key.as_str().to_owned(),
                                KeyUse::Waiting(ticket, request.fingerprint()),
                            );
                            state.waiting_keys.insert(ticket, key.as_str().to_owned());
                        }
                        if self.wakeups.waits(ticket) {
                            state.asked.insert(ticket, Asked::new(request));
                        }
                        state.queue.push(ticket, count)
                    }
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
        let permit = to_permit(
            &request.name,
            ticket,
            state.grant(ticket, Asked::new(request), now),
        );
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
    /// `None` when the semaphore does not exist. A write: it keeps the
    /// semaphore from being forgotten as idle.
    fn with_swept<T>(
        &self,
        name: &SemaphoreName,
        f: impl FnOnce(&mut SemaphoreState, Millis) -> T,
    ) -> Option<T> {
        let mut semaphores = self.lock();
        let now = Millis::now();
        let state = semaphores.live(name, now)?;
        state.busy(now);
        if state.expire(now) {
            state.wake_heads(&self.wakeups);
        }
        Some(f(state, now))
    }

    /// Runs `f` on the semaphore's state as it is, with the clock read
    /// under the lock: for the reads, which leave ended leases in place (as
    /// the Redis store's read-only scripts do) and must look past them.
    fn with_read<T>(
        &self,
        name: &SemaphoreName,
        f: impl FnOnce(&SemaphoreState, Millis) -> T,
    ) -> Option<T> {
        let mut semaphores = self.lock();
        let now = Millis::now();
        semaphores.live(name, now).map(|state| f(state, now))
    }

    /// The map, locked, after a step of the idle sweep (see module docs).
    fn lock(&self) -> std::sync::MutexGuard<'_, Semaphores> {
        // A panic while locked cannot leave a half-applied change (every
        // mutation is a few infallible statements), so a poisoned lock is safe
        // to keep using.
        let mut semaphores = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        semaphores.sweep_idle(Millis::now());
        semaphores
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
        idle_ttl: IdleTtl,
    ) -> Result<SetLimitOutcome, StoreError> {
        let mut semaphores = self.lock();
        let now = Millis::now();
        let set_idle = |state: &mut SemaphoreState| match idle_ttl {
            IdleTtl::Keep => {}
            IdleTtl::Never => state.idle_ttl = None,
            IdleTtl::After(ttl) => state.idle_ttl = Some(ttl),
        };
        let Some(state) = semaphores.live(name, now) else {
            let mut state = SemaphoreState::new(limit.get(), &self.lifecycle, now);
            set_idle(&mut state);
            semaphores.map.insert(name.clone(), state);
            return Ok(SetLimitOutcome::Created);
        };
        state.busy(now);
        set_idle(state);
        if state.limit == limit.get() {
            return Ok(SetLimitOutcome::Unchanged);
        }
        let previous = std::mem::replace(&mut state.limit, limit.get());
        // The head is told even if it no longer fits: it re-aims.
        state.head_left = true;
        // Swept first, as set_limit.lua does: an expired permit must not
        // hold back the waiters a raise lets in.
        state.expire(now);
        state.wake_heads(&self.wakeups);
        Ok(SetLimitOutcome::Changed { previous })
    }

    async fn status(&self, name: &SemaphoreName) -> Result<Option<SemaphoreStatus>, StoreError> {
        Ok(self.with_read(name, |state, now| {
            let holders = state
                .live_expiries(now)
                .take(MAX_LISTED_HOLDERS)
                .map(|(_, id)| {
                    let r = &state.permits[id];
                    HolderInfo {
                        id: *id,
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
                held: state.live_held(now),
                waiting: state.queue.len() as u32,
                idle_ttl: state.idle_ttl,
                holders,
            }
        }))
    }

    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SemaphorePage, ListError> {
        // Of the cursor (see `ListCursor`) only the last name listed matters.
        let after = match cursor {
            Some(text) => ListCursor::parse(text).ok_or(ListError::BadCursor)?.after,
            None => None,
        };
        let after = after
            .map(|name| SemaphoreName::parse(&name).map_err(|_| ListError::BadCursor))
            .transpose()?;
        // From the later of the cursor and the prefix: the names before it
        // are not walked under the lock.
        let from = match (after, SemaphoreName::parse(prefix).ok()) {
            (Some(after), Some(prefix)) if prefix > after => Bound::Included(prefix),
            (Some(after), _) => Bound::Excluded(after),
            (None, Some(prefix)) => Bound::Included(prefix),
            (None, None) => Bound::Unbounded,
        };
        let mut semaphores = self.lock();
        let now = Millis::now();
        let names: Vec<SemaphoreName> = semaphores
            .map
            .range((from, Bound::Unbounded))
            .map(|(name, _)| name)
            .take_while(|name| name.as_str().starts_with(prefix))
            .take(limit + 1)
            .cloned()
            .collect();
        let more = names.len() > limit;
        // After the last name looked at, listed or found forgotten.
        let next_cursor = more.then(|| {
            ListCursor {
                after: Some(names[limit - 1].as_str().to_owned()),
                ..ListCursor::default()
            }
            .render()
        });
        let mut page = Vec::with_capacity(limit);
        for name in names.into_iter().take(limit) {
            if let Some(state) = semaphores.live(&name, now) {
                page.push(SemaphoreSummary {
                    held: state.live_held(now),
                    name,
                    limit: state.limit,
                    waiting: state.queue.len() as u32,
                });
            }
        }
        Ok(SemaphorePage {
            next_cursor,
            semaphores: page,
        })
    }

    async fn delete(&self, name: &SemaphoreName) -> Result<bool, StoreError> {
        let mut semaphores = self.lock();
        if semaphores.live(name, Millis::now()).is_none() {
            return Ok(false);
        }
        let Some(state) = semaphores.map.remove(name) else {
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
        let mut semaphores = self.lock();
        let now = Millis::now();
        let Some(state) = semaphores.live(name, now) else {
            return Ok(());
        };
        state.busy(now);
        let left = state.dequeue(ticket);
        // Before the sweep, as leave.lua: a permit never delivered frees its
        // Idempotency-Key, also when its lease has ended meanwhile.
        let claimed = state.permits.get(&ticket).is_some_and(|r| r.claimed);
        let released = !claimed && state.remove(ticket, now, false).is_some();
        let expired = state.expire(now);
        if left || released || expired {
            state.wake_heads(&self.wakeups);
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
            .with_read(name, |state, now| {
                state
                    .permits
                    .get(&id)
                    .filter(|r| r.expires_at > now)
                    .map(|r| to_permit(name, id, r))
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
            let expires_at = record.expires_at;
            state.expiries.insert((expires_at, id));
            let permit = to_permit(name, id, record);
            state.busy(expires_at);
            // The head waiter's timer aims at the soonest expiry: if that
            // moved earlier, tell the head so it aims again (or wake it, if
            // it fits).
            if state.soonest_expiry() < soonest_before {
                state.wake_first(&self.wakeups);
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
        let released = self.with_swept(name, |state, now| {
            let released = state.remove(id, now, true).is_some();
            state.wake_heads(&self.wakeups);
            released
        });
        Ok(match released {
            None => ReleaseOutcome::NoSemaphore,
            Some(true) => ReleaseOutcome::Released,
            Some(false) => ReleaseOutcome::NoPermit,
        })
    }
}
