//! The `SemaphoreStore` trait: the one narrow interface between the HTTP layer
//! and where permits live, plus `StoreError`.
//!
//! Two implementations share these semantics, and one contract suite checks
//! both, at this trait and through the HTTP API (`tests/api`):
//! - [`memory::MemoryStore`]: embedded, one process, for `cargo run` and tests;
//! - [`redis::RedisStore`]: Redis, shared by every permitd instance.
//!
//! Semantics every implementation keeps:
//! - **Atomic steps.** Each method is one atomic step against the state of one
//!   semaphore (one Lua script on Redis, one critical section in memory).
//! - **One clock.** Leases are judged by the store's clock (Redis `TIME`), never
//!   by a permitd instance's or a client's clock.
//! - **Leases.** A permit is live while `now < expires_at`. An expired permit is
//!   gone: it frees its units, every method treats it as unknown, and refresh
//!   never brings it back. When a store removes expired permits it counts them
//!   in `permitd_lease_expiries_total`, once each (the sign of a crashed
//!   holder).
//! - **Fencing tokens** strictly increase across all permits of a name, also when
//!   the semaphore is deleted and created again, and when the store's state
//!   rolled back (a restart from an older snapshot, a failover to a replica
//!   that missed the last writes): every new token is `max(last + 1, now_us)`,
//!   floored at the store clock in microseconds. Tokens handed out before a
//!   rollback were all below the clock of their time, so they stay below every
//!   later token as long as the store's clocks agree to within the time the
//!   restart or failover takes.
//! - **Ids are capabilities.** A permit id is only ever returned by the acquire
//!   that created it (or its idempotent replay).
//! - **First come, first served.** Acquires that wait form one queue per
//!   semaphore, in arrival order at the store. Units go to the queue's head
//!   first: an acquire is granted only if its count fits after every waiter
//!   ahead of it (a newcomer is behind the whole queue), so nobody is overtaken,
//!   not even by a try-once acquire that finds units free.
//! - **Tickets.** A waiting acquire is known by a ticket (a fresh `PermitId`,
//!   which also becomes the permit's id when granted). When a change may let a
//!   waiter proceed (release, expiry, limit raise, a waiter leaving, a refresh
//!   that moves the soonest expiry), the store wakes that ticket through
//!   [`Wakeups`]; the waiter then calls `attempt` again. The waiting loop itself
//!   is in `crate::waiting`, shared by both stores.

pub mod memory;
pub mod redis;
pub mod wakeups;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use wakeups::{Handoff, WakeHandle, Wakeups, Woken};

use crate::semaphore::{
    AcquireOutcome, AcquireRequest, IdleTtl, Limit, Permit, PermitId, ReleaseOutcome,
    SemaphoreName, SemaphorePage, SemaphoreStatus, SetLimitOutcome, Ttl,
};

/// How long a store keeps what nobody uses, the same for every store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// A semaphore with no holders and no waiters for this long is forgotten
    /// (`None`: never), unless its own idle TTL says otherwise. Its fencing
    /// tokens keep increasing when it is created again (the clock floor).
    pub idle_ttl: Option<Duration>,
    /// How long an `Idempotency-Key` is remembered after its permit ended, so
    /// that a late retry hears so instead of taking a second permit.
    pub idempotency_retention: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 60 * 60);
        Self {
            idle_ttl: Some(DAY),
            idempotency_retention: DAY,
        }
    }
}

/// The most semaphores one listing page may hold.
pub const MAX_PAGE: usize = 1000;

/// A failure of the store itself, never of the request. Details are for logs;
/// clients only learn whether retrying may help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time: retrying
    /// later may succeed (HTTP 503 with `Retry-After`).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refuses this instance: a TLS certificate not trusted, wrong
    /// credentials. A 503 like `Unavailable` while serving (it can be fixed
    /// on the store's side without restarting permitd), but it stops a start,
    /// where it is almost always a configuration mistake.
    #[error("store refused the connection: {0}")]
    Refused(String),
    /// The store answered something this version does not understand, or a
    /// script failed: a bug or an incompatible deployment (HTTP 500).
    #[error("store failed: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether the same request may succeed if retried later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Refused(_))
    }

    /// Whether the store refused this instance (see [`StoreError::Refused`]).
    pub fn is_refusal(&self) -> bool {
        matches!(self, StoreError::Refused(_))
    }
}

/// Where a listing goes on, the one cursor shape of both stores
/// (`node.scan[.after]`): on Redis the master (named by its lowest slot) and
/// the SCAN cursor on it; in memory the last name listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListCursor {
    pub node: u16,
    pub scan: u64,
    pub after: Option<String>,
}

impl ListCursor {
    /// `node.scan[.after]`: `after` is last and taken whole, so the dots a
    /// name may hold are no ambiguity.
    pub fn render(&self) -> String {
        match &self.after {
            Some(after) => format!("{}.{}.{after}", self.node, self.scan),
            None => format!("{}.{}", self.node, self.scan),
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '.');
        // Past every slot is past every master: an empty last page.
        let node = parts.next()?.parse::<u32>().ok()?.min(u32::from(u16::MAX)) as u16;
        let scan = parts.next()?.parse().ok()?;
        let after = match parts.next() {
            Some(after) => Some(SemaphoreName::parse(after).ok()?.as_str().to_owned()),
            None => None,
        };
        Some(Self { node, scan, after })
    }
}

/// Why a listing page could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The cursor is not one this store made (HTTP 400).
    #[error("the cursor is not one a listing returned")]
    BadCursor,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answer to one acquire attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A final answer; `clock_us` is the store clock when it was decided.
    Done {
        outcome: AcquireOutcome,
        clock_us: u64,
    },
    /// The ticket waits in the queue at `position` (0 = head). `soonest_expiry`
    /// is when the soonest lease runs out, so the head can set a timer for it.
    /// `soonest_waiter_lease` (Redis only) is when the soonest waiter lease
    /// ends: a waiter whose instance died may be blocking the queue until then.
    Queued {
        position: u32,
        soonest_expiry: Option<Duration>,
        soonest_waiter_lease: Option<Duration>,
    },
}

/// A snapshot of a connection pool, for the metrics page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Most connections the pool may open.
    pub max_size: usize,
    /// Connections open now, in use or idle.
    pub size: usize,
    /// Idle connections ready to be checked out.
    pub available: usize,
    /// Calls waiting for a connection.
    pub waiting: usize,
}

/// How a store is deployed, as `/readyz` and the startup log tell it.
#[derive(Debug, Clone, Default)]
pub struct StoreReport {
    /// Redis: `standalone`, `sentinel` or `cluster`.
    pub mode: Option<&'static str>,
    /// Redis Cluster: how many masters serve slots.
    pub masters: Option<usize>,
    /// What the operator should change (Redis: an eviction policy other than
    /// `noeviction`), in words. Empty when nothing.
    pub warnings: Vec<String>,
}

/// Where semaphores and permits live. See the module docs for the semantics
/// every method keeps.
#[async_trait]
pub trait SemaphoreStore: Send + Sync + 'static {
    /// A short name for logs and `/readyz`: `"redis"` or `"memory"`.
    fn kind(&self) -> &'static str;

    /// Checks that the store answers (Redis `TIME`).
    ///
    /// # Errors
    /// `Unavailable` when it does not answer in time.
    async fn ping(&self) -> Result<(), StoreError>;

    /// How the store is deployed and what an operator should change in its
    /// configuration for these semantics to hold, for logs and `/readyz`.
    ///
    /// # Errors
    /// `Unavailable` when the store does not answer; `Internal` when it cannot
    /// run permitd at all (a Redis older than the scripts need).
    async fn report(&self) -> Result<StoreReport, StoreError> {
        Ok(StoreReport::default())
    }

    /// Creates the semaphore, or changes its limit and (unless `Keep`) its
    /// idle TTL. Lowering a limit never revokes held permits; setting the
    /// current limit changes nothing. The outcome is about the limit.
    ///
    /// # Errors
    /// Only store failures.
    async fn set_limit(
        &self,
        name: &SemaphoreName,
        limit: Limit,
        idle_ttl: IdleTtl,
    ) -> Result<SetLimitOutcome, StoreError>;

    /// One page of the semaphores whose names start with `prefix`, at most
    /// `limit` (1 ..= [`MAX_PAGE`]) of them, from `cursor` (an earlier page's
    /// `next_cursor`; `None` for the first). Each summary is read on its
    /// own, so a page is not one snapshot; a semaphore created or forgotten
    /// while the listing goes on may or may not be in it. Never permit ids.
    ///
    /// # Errors
    /// `ListError::BadCursor` for a cursor this store never made; store
    /// failures.
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SemaphorePage, ListError>;

    /// The semaphore's limit, held units and live holders, or `None` if it
    /// does not exist. Read-only: expired permits are left out, not removed.
    ///
    /// # Errors
    /// Only store failures.
    async fn status(&self, name: &SemaphoreName) -> Result<Option<SemaphoreStatus>, StoreError>;

    /// Removes the semaphore with every permit and idempotency record.
    /// Returns whether it existed.
    ///
    /// # Errors
    /// Only store failures.
    async fn delete(&self, name: &SemaphoreName) -> Result<bool, StoreError>;

    /// One acquire attempt for `ticket`: takes `count` units, all or nothing,
    /// creating the semaphore first when the request carries a limit and it
    /// does not exist. With an idempotency key that already names a live
    /// permit, returns that permit unchanged.
    ///
    /// When the units do not fit (after every waiter ahead of the ticket):
    /// with `queue`, the ticket joins the queue (or keeps its place, renewing
    /// its waiter lease) and the answer is `Queued`; without, the ticket leaves
    /// the queue if it was in it and the answer is `Unavailable`. Every final
    /// answer takes the ticket out of the queue.
    ///
    /// # Errors
    /// Only store failures; every refusal is an `AcquireOutcome`.
    async fn attempt(
        &self,
        request: &AcquireRequest,
        ticket: PermitId,
        queue: bool,
    ) -> Result<Attempt, StoreError>;

    /// Withdraws a ticket: out of the queue if it waits, and if it was already
    /// granted (the client went away before hearing so), its permit is
    /// released. Idempotent.
    ///
    /// # Errors
    /// Only store failures.
    async fn leave(&self, name: &SemaphoreName, ticket: PermitId) -> Result<(), StoreError>;

    /// Where this store wakes the tickets waiting in this process.
    fn wakeups(&self) -> &Arc<Wakeups>;

    /// Its connection pool's state, if it has one (Redis); for `/metrics`.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    /// The permit if it is live. Read-only.
    ///
    /// # Errors
    /// Only store failures.
    async fn permit(
        &self,
        name: &SemaphoreName,
        id: PermitId,
    ) -> Result<Option<Permit>, StoreError>;

    /// Sets a live permit's lease to end `ttl` from now (the store's now), which
    /// may shorten it. `None` when the permit is unknown or already expired.
    ///
    /// # Errors
    /// Only store failures.
    async fn refresh(
        &self,
        name: &SemaphoreName,
        id: PermitId,
        ttl: Ttl,
    ) -> Result<Option<Permit>, StoreError>;

    /// Gives a live permit's units back. Releasing twice is harmless: the
    /// second answer is `NoPermit`.
    ///
    /// # Errors
    /// Only store failures.
    async fn release(
        &self,
        name: &SemaphoreName,
        id: PermitId,
    ) -> Result<ReleaseOutcome, StoreError>;
}
