//! The store checked against a reference model: random sequences of steps
//! (try-once, waiting and idempotent acquires, retries of the same ticket,
//! withdrawals, releases, refreshes, limit changes, deletes, lease ends),
//! some with their reply dropped after the store ran them (the caller saw a
//! transient failure and may retry), run at the `SemaphoreStore` trait on the
//! memory store and on a real redis-server. After every step each answer and
//! the semaphore's status are compared with what a small model of the
//! contract (`store/mod.rs`) says:
//! - `held` is the sum of the live permits' counts, and a grant never takes
//!   it above the limit;
//! - a retry of a ticket gets the permit that ticket already holds, or is
//!   decided as a new attempt;
//! - an Idempotency-Key replays, or is 409/410/422, as its history says,
//!   whatever the limit is now;
//! - fencing tokens strictly increase per semaphore; no step is an error.
//!
//! Time is the real clock, which is also the store's (the Redis of the test
//! runs on this machine, and its `TIME` reads the same clock). A lease is
//! short (ended by an `Advance` step, which sleeps past every short lease)
//! or long (never ends within a case). The model knows each lease end to
//! within the time the call that set it took; a step whose own time window
//! overlaps a lease end it cannot place is inconclusive, and the rest of that
//! case goes unchecked (counted, and bounded below: it needs a case to run
//! for a whole short lease between two `Advance` steps).
//!
//! `PERMITD_MODEL_CASES` sets the cases per store (default 400), e.g.
//! `PERMITD_MODEL_CASES=2000 cargo test --test api store_model` for a
//! longer run. A failure prints the shrunk sequence of steps and what
//! differed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use permitd::semaphore::{
    AcquireOutcome, AcquireRequest, Count, IdempotencyKey, IdleTtl, Limit, Permit, PermitId,
    ReleaseOutcome, SemaphoreName, SetLimitOutcome, Ttl, WaitTime,
};
use permitd::store::{Attempt, SemaphoreStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::helpers::{Harness, Store};

#[test]
fn memory() {
    run_model(Store::Memory);
}

#[test]
fn redis() {
    run_model(Store::Redis);
}

/// A short lease: every `Advance` outlasts it. A long one outlasts a case.
const SHORT_MS: u64 = 200;
const LONG_MS: u64 = 600_000;

/// What an acquire asks, from small ranges so that keys and bodies repeat.
#[derive(Debug, Clone, Copy)]
struct Body {
    limit: Option<u32>,
    count: u32,
    short: bool,
    key: Option<u8>,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    SetLimit(u32),
    /// A new ticket; `queue`: a waiting acquire (it stays queued if the units
    /// do not fit), else try-once.
    Acquire {
        body: Body,
        queue: bool,
        dropped: bool,
    },
    /// The same ticket and request again, as the waiting loop sends it after
    /// a wake or a failed call (only for a ticket queued or unanswered).
    Retry {
        ticket: usize,
        queue: bool,
        dropped: bool,
    },
    /// The ticket withdrawn, as when its request goes away (only for a
    /// ticket queued or unanswered).
    Leave {
        ticket: usize,
        dropped: bool,
    },
    /// A permit the caller heard of.
    Release {
        permit: usize,
        dropped: bool,
    },
    Refresh {
        permit: usize,
        short: bool,
        dropped: bool,
    },
    Delete,
    /// Sleeps past every short lease.
    Advance,
}

fn body() -> impl Strategy<Value = Body> {
    (
        prop_oneof![3 => Just(None), 1 => (1u32..=3).prop_map(Some)],
        prop_oneof![4 => 1u32..=2, 1 => Just(3)],
        any::<bool>(),
        prop_oneof![1 => Just(None), 1 => (0u8..2).prop_map(Some)],
    )
        .prop_map(|(limit, count, short, key)| Body {
            limit,
            count,
            short,
            key,
        })
}

fn dropped() -> impl Strategy<Value = bool> {
    prop_oneof![3 => Just(false), 1 => Just(true)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (1u32..=3).prop_map(Step::SetLimit),
        8 => (body(), any::<bool>(), dropped())
            .prop_map(|(body, queue, dropped)| Step::Acquire { body, queue, dropped }),
        4 => (0usize..8, prop_oneof![3 => Just(true), 1 => Just(false)], dropped())
            .prop_map(|(ticket, queue, dropped)| Step::Retry { ticket, queue, dropped }),
        2 => (0usize..8, dropped()).prop_map(|(ticket, dropped)| Step::Leave { ticket, dropped }),
        4 => (0usize..8, dropped()).prop_map(|(permit, dropped)| Step::Release { permit, dropped }),
        2 => (0usize..8, any::<bool>(), dropped())
            .prop_map(|(permit, short, dropped)| Step::Refresh { permit, short, dropped }),
        1 => Just(Step::Delete),
        1 => Just(Step::Advance),
    ]
}

fn cases() -> u32 {
    std::env::var("PERMITD_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

/// Cases that went unchecked from some step on (see the module docs).
static INCONCLUSIVE: AtomicU64 = AtomicU64::new(0);

fn run_model(store: Store) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    // Waiters are renewed only by the steps that retry them: a lease longer
    // than any case keeps them queued until a step takes them out.
    let harness = Harness::new(store).configure(|s| s.wait_recheck_ms = 60_000);
    let semaphores = harness.semaphore_store();
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let numbered = AtomicU64::new(0);
    let result = runner.run(&prop::collection::vec(step(), 1..40), |steps| {
        // Every case (and every shrinking try) on a semaphore of its own.
        let n = numbered.fetch_add(1, Ordering::Relaxed);
        let name = SemaphoreName::parse(&format!("model-{n}")).unwrap();
        runtime
            .block_on(Case::new(&semaphores, name).run(&steps))
            .map_err(TestCaseError::fail)
    });
    if let Err(failure) = result {
        panic!("{store:?} store differs from the model: {failure}");
    }
    let inconclusive = INCONCLUSIVE.load(Ordering::Relaxed);
    println!("{store:?}: {cases} cases, {inconclusive} inconclusive from some step on");
    assert!(
        inconclusive * 4 <= u64::from(cases),
        "too many inconclusive cases: {inconclusive} of {cases}"
    );
}

/// Wall-clock ms, the store's clock too (see the module docs).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// When a step ran: from just before the call to just after its answer.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: u64,
    to: u64,
}

/// The model cannot tell whether a lease had ended when a step ran.
struct Inconclusive;

#[derive(Debug, Clone)]
struct ModelPermit {
    count: u32,
    /// The lease end, known to within the call that set it: `[lo, hi]` ms.
    ends: (u64, u64),
    /// Idempotency-Key and the request's fingerprint.
    key: Option<(String, String)>,
    /// An idempotent retry with another ticket was handed it.
    claimed: bool,
    /// Its fencing token, once an answer told it.
    fence: Option<u64>,
}

impl ModelPermit {
    fn live_during(&self, window: Window) -> Result<bool, Inconclusive> {
        if window.to < self.ends.0 {
            Ok(true)
        } else if window.from >= self.ends.1 {
            Ok(false)
        } else {
            Err(Inconclusive)
        }
    }
}

#[derive(Debug, Clone)]
enum KeyUse {
    Live(PermitId),
    Waiting(PermitId, String),
    Ended(String),
}

/// What the model expects of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Granted(PermitId),
    Replayed(PermitId),
    Queued(u32),
    Unavailable { limit: u32, held: u32 },
    NotFound,
    Conflict(u32),
    TooLarge(u32),
    Mismatch,
    InFlight,
    Ended,
}

/// One semaphore as the contract says it must be.
#[derive(Debug, Default)]
struct Model {
    /// `None` while the semaphore does not exist.
    limit: Option<u32>,
    permits: BTreeMap<PermitId, ModelPermit>,
    queue: Vec<(PermitId, u32)>,
    keys: HashMap<String, KeyUse>,
}

impl Model {
    /// Removes the permits whose lease has ended, as every store call that
    /// writes does first; their keys are remembered as ended.
    fn sweep(&mut self, window: Window) -> Result<(), Inconclusive> {
        let mut ended = Vec::new();
        for (id, permit) in &self.permits {
            if !permit.live_during(window)? {
                ended.push(*id);
            }
        }
        for id in ended {
            self.remove(id, true);
        }
        Ok(())
    }

    /// Takes a permit out; its key is remembered as ended if the permit was
    /// delivered, and freed if not (its request went away before hearing).
    fn remove(&mut self, id: PermitId, delivered: bool) -> Option<ModelPermit> {
        let permit = self.permits.remove(&id)?;
        if let Some((key, fingerprint)) = &permit.key {
            if delivered {
                self.keys
                    .insert(key.clone(), KeyUse::Ended(fingerprint.clone()));
            } else {
                self.keys.remove(key);
            }
        }
        Some(permit)
    }

    fn held(&self) -> u32 {
        self.permits.values().map(|p| p.count).sum()
    }

    fn dequeue(&mut self, ticket: PermitId) {
        self.queue.retain(|(t, _)| *t != ticket);
        let marked: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, use_)| matches!(use_, KeyUse::Waiting(t, _) if *t == ticket))
            .map(|(key, _)| key.clone())
            .collect();
        for key in marked {
            self.keys.remove(&key);
        }
    }

    fn fits(&self, ticket: PermitId, count: u32, limit: u32) -> bool {
        let Some(free) = limit.checked_sub(self.held()) else {
            return false;
        };
        let mut needed = count;
        for (waiting, ahead) in &self.queue {
            if *waiting == ticket {
                break;
            }
            needed += ahead;
        }
        needed <= free
    }

    fn set_limit(&mut self, limit: u32, window: Window) -> Result<SetLimitOutcome, Inconclusive> {
        match self.limit {
            None => {
                self.limit = Some(limit);
                Ok(SetLimitOutcome::Created)
            }
            Some(current) if current == limit => Ok(SetLimitOutcome::Unchanged),
            Some(previous) => {
                self.limit = Some(limit);
                self.sweep(window)?;
                Ok(SetLimitOutcome::Changed { previous })
            }
        }
    }

    fn attempt(
        &mut self,
        ticket: PermitId,
        request: &AcquireRequest,
        queue: bool,
        window: Window,
    ) -> Result<Expect, Inconclusive> {
        let limit = match (self.limit, request.limit) {
            (Some(limit), _) => limit,
            (None, None) => return Ok(Expect::NotFound),
            (None, Some(limit)) => {
                self.limit = Some(limit.get());
                limit.get()
            }
        };
        self.sweep(window)?;
        // The same ticket again: the permit it holds, whatever else changed.
        if self.permits.contains_key(&ticket) {
            return Ok(Expect::Granted(ticket));
        }
        let fingerprint = request.fingerprint();
        if let Some(key) = &request.idempotency_key {
            let refusal = match self.keys.get(key.as_str()) {
                Some(KeyUse::Live(id)) => {
                    let id = *id;
                    self.dequeue(ticket);
                    let permit = self.permits.get_mut(&id).expect("a live key's permit");
                    if permit
                        .key
                        .as_ref()
                        .is_some_and(|(_, fp)| *fp == fingerprint)
                    {
                        permit.claimed |= id != ticket;
                        return Ok(Expect::Replayed(id));
                    }
                    return Ok(Expect::Mismatch);
                }
                Some(KeyUse::Waiting(first, fp))
                    if *first != ticket && self.queue.iter().any(|(t, _)| t == first) =>
                {
                    Some(if *fp == fingerprint {
                        Expect::InFlight
                    } else {
                        Expect::Mismatch
                    })
                }
                Some(KeyUse::Ended(fp)) => Some(if *fp == fingerprint {
                    Expect::Ended
                } else {
                    Expect::Mismatch
                }),
                _ => None,
            };
            if let Some(refusal) = refusal {
                self.dequeue(ticket);
                return Ok(refusal);
            }
        }
        if let Some(asked) = request.limit
            && asked.get() != limit
        {
            self.dequeue(ticket);
            return Ok(Expect::Conflict(limit));
        }
        let count = request.count.get();
        if count > limit {
            self.dequeue(ticket);
            return Ok(Expect::TooLarge(limit));
        }
        if self.fits(ticket, count, limit) {
            self.dequeue(ticket);
            let ttl = request.ttl.as_millis();
            self.permits.insert(
                ticket,
                ModelPermit {
                    count,
                    ends: (window.from + ttl, window.to + ttl + 1),
                    key: request
                        .idempotency_key
                        .as_ref()
                        .map(|k| (k.as_str().to_owned(), fingerprint.clone())),
                    claimed: false,
                    fence: None,
                },
            );
            if let Some(key) = &request.idempotency_key {
                self.keys
                    .insert(key.as_str().to_owned(), KeyUse::Live(ticket));
            }
            return Ok(Expect::Granted(ticket));
        }
        if !queue {
            self.dequeue(ticket);
            return Ok(Expect::Unavailable {
                limit,
                held: self.held(),
            });
        }
        if let Some(at) = self.queue.iter().position(|(t, _)| *t == ticket) {
            return Ok(Expect::Queued(at as u32));
        }
        self.queue.push((ticket, count));
        if let Some(key) = &request.idempotency_key {
            self.keys.insert(
                key.as_str().to_owned(),
                KeyUse::Waiting(ticket, fingerprint),
            );
        }
        Ok(Expect::Queued(self.queue.len() as u32 - 1))
    }

    fn leave(&mut self, ticket: PermitId, window: Window) -> Result<(), Inconclusive> {
        if self.limit.is_none() {
            return Ok(());
        }
        self.dequeue(ticket);
        // Before the sweep: a permit never delivered frees its key, also
        // when its lease has ended meanwhile.
        if self.permits.get(&ticket).is_some_and(|p| !p.claimed) {
            self.remove(ticket, false);
        }
        self.sweep(window)
    }

    fn release(&mut self, id: PermitId, window: Window) -> Result<ReleaseOutcome, Inconclusive> {
        if self.limit.is_none() {
            return Ok(ReleaseOutcome::NoSemaphore);
        }
        self.sweep(window)?;
        Ok(match self.remove(id, true) {
            Some(_) => ReleaseOutcome::Released,
            None => ReleaseOutcome::NoPermit,
        })
    }

    /// Whether the permit is live to be refreshed; the new lease end is set
    /// by the caller, from the answer or the window.
    fn refresh(&mut self, id: PermitId, window: Window) -> Result<bool, Inconclusive> {
        if self.limit.is_none() {
            return Ok(false);
        }
        self.sweep(window)?;
        Ok(self.permits.contains_key(&id))
    }

    fn delete(&mut self) -> bool {
        let existed = self.limit.is_some();
        *self = Model::default();
        existed
    }
}

/// A ticket the case made, and where its caller stands with it.
struct Ticket {
    id: PermitId,
    request: AcquireRequest,
    /// Queued, or its last answer was dropped: its caller would try again
    /// or withdraw it. Otherwise it heard a final answer, or left.
    open: bool,
}

/// One run of a sequence of steps against a store and the model.
struct Case<'a> {
    store: &'a Arc<dyn SemaphoreStore>,
    name: SemaphoreName,
    model: Model,
    tickets: Vec<Ticket>,
    /// Permits the caller heard of, for releases and refreshes.
    heard: Vec<PermitId>,
    /// The highest fencing token seen, and the tokens of every permit seen.
    top_fence: u64,
    fences: HashMap<PermitId, u64>,
    log: Vec<String>,
}

impl<'a> Case<'a> {
    fn new(store: &'a Arc<dyn SemaphoreStore>, name: SemaphoreName) -> Self {
        Self {
            store,
            name,
            model: Model::default(),
            tickets: Vec::new(),
            heard: Vec::new(),
            top_fence: 0,
            fences: HashMap::new(),
            log: Vec::new(),
        }
    }

    async fn run(mut self, steps: &[Step]) -> Result<(), String> {
        for (n, step) in steps.iter().enumerate() {
            let checked = match self.step(*step).await {
                Ok(()) => self.check_status().await,
                Err(e) => Err(e),
            };
            match checked {
                Ok(()) => {}
                Err(Failure::Inconclusive) => {
                    INCONCLUSIVE.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(Failure::Differs(what)) => {
                    return Err(format!(
                        "step {n} ({step:?}): {what}\nsteps run: {:#?}",
                        self.log
                    ));
                }
            }
        }
        Ok(())
    }

    fn request(&self, body: Body) -> AcquireRequest {
        let ttl = if body.short { SHORT_MS } else { LONG_MS };
        AcquireRequest {
            name: self.name.clone(),
            limit: body.limit.map(|l| Limit::new(l.into()).unwrap()),
            count: Count::new(body.count.into()).unwrap(),
            ttl: Ttl::new(ttl, LONG_MS).unwrap(),
            wait: WaitTime::NONE,
            holder: None,
            idempotency_key: body
                .key
                .map(|k| IdempotencyKey::parse(&format!("key-{k}")).unwrap()),
        }
    }

    /// The `n`th open ticket (modulo), if any.
    fn open_ticket(&self, n: usize) -> Option<usize> {
        let open: Vec<usize> = (0..self.tickets.len())
            .filter(|&i| self.tickets[i].open)
            .collect();
        (!open.is_empty()).then(|| open[n % open.len()])
    }

    fn heard_permit(&self, n: usize) -> Option<PermitId> {
        (!self.heard.is_empty()).then(|| self.heard[n % self.heard.len()])
    }

    async fn step(&mut self, step: Step) -> Result<(), Failure> {
        match step {
            Step::SetLimit(limit) => {
                self.log.push(format!("set_limit {limit}"));
                let from = now_ms();
                let answer = self
                    .store
                    .set_limit(&self.name, Limit::new(limit.into()).unwrap(), IdleTtl::Keep)
                    .await;
                let window = Window { from, to: now_ms() };
                let expected = self.model.set_limit(limit, window)?;
                same("set_limit", answer.map_err(|e| e.to_string()), Ok(expected))
            }
            Step::Acquire {
                body,
                queue,
                dropped,
            } => {
                let request = self.request(body);
                self.tickets.push(Ticket {
                    id: PermitId::random(),
                    request,
                    open: false,
                });
                let at = self.tickets.len() - 1;
                self.log.push(format!(
                    "acquire t{at} {body:?} queue={queue} dropped={dropped}"
                ));
                self.attempt(at, queue, dropped).await
            }
            Step::Retry {
                ticket,
                queue,
                dropped,
            } => {
                let Some(at) = self.open_ticket(ticket) else {
                    return Ok(());
                };
                self.log
                    .push(format!("retry t{at} queue={queue} dropped={dropped}"));
                self.attempt(at, queue, dropped).await
            }
            Step::Leave { ticket, dropped } => {
                let Some(at) = self.open_ticket(ticket) else {
                    return Ok(());
                };
                self.log.push(format!("leave t{at} dropped={dropped}"));
                let id = self.tickets[at].id;
                self.tickets[at].open = false;
                let from = now_ms();
                let answer = self.store.leave(&self.name, id).await;
                let window = Window { from, to: now_ms() };
                self.model.leave(id, window)?;
                if dropped {
                    return Ok(());
                }
                same("leave", answer.map_err(|e| e.to_string()), Ok(()))
            }
            Step::Release { permit, dropped } => {
                let Some(id) = self.heard_permit(permit) else {
                    return Ok(());
                };
                self.log.push(format!("release {id} dropped={dropped}"));
                let from = now_ms();
                let answer = self.store.release(&self.name, id).await;
                let window = Window { from, to: now_ms() };
                let expected = self.model.release(id, window)?;
                if dropped {
                    return Ok(());
                }
                same("release", answer.map_err(|e| e.to_string()), Ok(expected))
            }
            Step::Refresh {
                permit,
                short,
                dropped,
            } => {
                let Some(id) = self.heard_permit(permit) else {
                    return Ok(());
                };
                self.log
                    .push(format!("refresh {id} short={short} dropped={dropped}"));
                let ttl = if short { SHORT_MS } else { LONG_MS };
                let from = now_ms();
                let answer = self
                    .store
                    .refresh(&self.name, id, Ttl::new(ttl, LONG_MS).unwrap())
                    .await;
                let window = Window { from, to: now_ms() };
                let live = self.model.refresh(id, window)?;
                let answer = answer.map_err(|e| Failure::Differs(format!("refresh: {e}")))?;
                if live && let Some(permit) = self.model.permits.get_mut(&id) {
                    permit.ends = match (&answer, dropped) {
                        (Some(p), false) => (p.expires_at.0, p.expires_at.0),
                        _ => (window.from + ttl, window.to + ttl + 1),
                    };
                }
                if dropped {
                    return Ok(());
                }
                same("refresh", answer.map(|p| p.id), live.then_some(id))
            }
            Step::Delete => {
                self.log.push("delete".into());
                let answer = self.store.delete(&self.name).await;
                // Its permits end with it. A retry of a ticket that held one
                // (its answer was lost) is a new acquire, granted under the
                // same id with a new token: the id is free again.
                for id in self.model.permits.keys() {
                    self.fences.remove(id);
                }
                let expected = self.model.delete();
                // Waiters of a deleted semaphore hear so on their next
                // attempt (not found), so their tickets stay open.
                same("delete", answer.map_err(|e| e.to_string()), Ok(expected))
            }
            Step::Advance => {
                self.log.push("advance".into());
                let until = self
                    .model
                    .permits
                    .values()
                    .map(|p| p.ends.1)
                    .filter(|&end| end < now_ms() + 2 * SHORT_MS)
                    .max();
                if let Some(until) = until {
                    let wait = (until + 2).saturating_sub(now_ms());
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Ok(())
            }
        }
    }

    /// One attempt of ticket `at`, checked against the model unless its
    /// answer is dropped.
    async fn attempt(&mut self, at: usize, queue: bool, dropped: bool) -> Result<(), Failure> {
        let (id, request) = (self.tickets[at].id, self.tickets[at].request.clone());
        // Whether a grant now would be a new permit (a new token), or the
        // one this ticket already holds.
        let fresh = !self.model.permits.contains_key(&id);
        let from = now_ms();
        let answer = self.store.attempt(&request, id, queue).await;
        let window = Window { from, to: now_ms() };
        let expected = self.model.attempt(id, &request, queue, window)?;
        let answer = answer.map_err(|e| Failure::Differs(format!("attempt: {e}")))?;
        let ticket = &mut self.tickets[at];
        ticket.open = dropped || matches!(expected, Expect::Queued(_));
        if dropped {
            return Ok(());
        }
        let (got, permit) = observed(answer);
        same("attempt", got, expected.clone())?;
        if let Some(permit) = permit {
            self.permit_heard(&permit, fresh && matches!(expected, Expect::Granted(_)))?;
        }
        Ok(())
    }

    /// Checks a permit an answer carried against what is known of it, and
    /// learns its lease end and token.
    fn permit_heard(&mut self, permit: &Permit, granted: bool) -> Result<(), Failure> {
        let model = self
            .model
            .permits
            .get_mut(&permit.id)
            .expect("the model has the permit it expected");
        if permit.count != model.count {
            return Err(Failure::Differs(format!(
                "permit {} counts {}, the model {}",
                permit.id, permit.count, model.count
            )));
        }
        let end = permit.expires_at.0;
        if end < model.ends.0 || end > model.ends.1 {
            return Err(Failure::Differs(format!(
                "permit {} ends at {end}, the model between {:?}",
                permit.id, model.ends
            )));
        }
        model.ends = (end, end);
        match self.fences.get(&permit.id) {
            Some(&fence) if fence != permit.fencing_token => {
                return Err(Failure::Differs(format!(
                    "permit {} came back with token {}, first {fence}",
                    permit.id, permit.fencing_token
                )));
            }
            Some(_) => {}
            None => {
                if granted && permit.fencing_token <= self.top_fence {
                    return Err(Failure::Differs(format!(
                        "new token {} not above {}",
                        permit.fencing_token, self.top_fence
                    )));
                }
                self.fences.insert(permit.id, permit.fencing_token);
            }
        }
        model.fence = Some(permit.fencing_token);
        self.top_fence = self.top_fence.max(permit.fencing_token);
        if !self.heard.contains(&permit.id) {
            self.heard.push(permit.id);
        }
        Ok(())
    }

    /// The semaphore's status against the model: existence, limit, held,
    /// waiting, and the holders with their counts.
    async fn check_status(&mut self) -> Result<(), Failure> {
        let from = now_ms();
        let status = self
            .store
            .status(&self.name)
            .await
            .map_err(|e| Failure::Differs(format!("status: {e}")))?;
        let window = Window { from, to: now_ms() };
        let Some(limit) = self.model.limit else {
            return match status {
                None => Ok(()),
                Some(s) => Err(Failure::Differs(format!(
                    "status of a semaphore the model has not: {s:?}"
                ))),
            };
        };
        let Some(status) = status else {
            return Err(Failure::Differs("status: none, the model has one".into()));
        };
        let mut live = BTreeMap::new();
        for (id, permit) in &self.model.permits {
            if permit.live_during(window)? {
                live.insert(*id, permit.count);
            }
        }
        let holders: BTreeMap<PermitId, u32> =
            status.holders.iter().map(|h| (h.id, h.count)).collect();
        let held: u32 = live.values().sum();
        let expected = (limit, held, self.model.queue.len() as u32, live);
        let got = (status.limit, status.held, status.waiting, holders);
        if got != expected {
            return Err(Failure::Differs(format!(
                "status (limit, held, waiting, holders) is {got:?}, the model {expected:?}"
            )));
        }
        Ok(())
    }
}

/// Why a case stopped.
enum Failure {
    Inconclusive,
    Differs(String),
}

impl From<Inconclusive> for Failure {
    fn from(_: Inconclusive) -> Self {
        Failure::Inconclusive
    }
}

fn same<T: std::fmt::Debug + PartialEq>(what: &str, got: T, expected: T) -> Result<(), Failure> {
    if got == expected {
        Ok(())
    } else {
        Err(Failure::Differs(format!(
            "{what} answered {got:?}, the model {expected:?}"
        )))
    }
}

/// An attempt's answer in the model's terms, and the permit it carried.
fn observed(attempt: Attempt) -> (Expect, Option<Permit>) {
    let outcome = match attempt {
        Attempt::Queued { position, .. } => return (Expect::Queued(position), None),
        Attempt::Done { outcome, .. } => outcome,
    };
    match outcome {
        AcquireOutcome::Granted(permit) => (Expect::Granted(permit.id), Some(permit)),
        AcquireOutcome::Replayed(permit) => (Expect::Replayed(permit.id), Some(permit)),
        AcquireOutcome::Unavailable { limit, held, .. } => {
            (Expect::Unavailable { limit, held }, None)
        }
        AcquireOutcome::NotFound => (Expect::NotFound, None),
        AcquireOutcome::LimitConflict { current } => (Expect::Conflict(current), None),
        AcquireOutcome::CountExceedsLimit { limit } => (Expect::TooLarge(limit), None),
        AcquireOutcome::IdempotencyMismatch => (Expect::Mismatch, None),
        AcquireOutcome::IdempotencyInFlight => (Expect::InFlight, None),
        AcquireOutcome::PermitEnded => (Expect::Ended, None),
    }
}
