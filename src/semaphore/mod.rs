//! Domain values of permitd: what a semaphore, a permit and an acquire are.
//!
//! Every type here can only be constructed valid ("parse, don't validate"):
//! the HTTP layer turns raw request fields into these with `TryFrom`/`parse`,
//! and the stores never re-check bounds. The bounds themselves are the ones in
//! the API contract (README, "Names and bounds").

mod values;

pub use values::{
    Count, Holder, IdempotencyKey, Limit, Millis, PermitId, SemaphoreName, Ttl, ValueError,
    WaitTime,
};

/// One granted permit, as the acquire that created it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub id: PermitId,
    pub semaphore: SemaphoreName,
    pub count: u32,
    /// Strictly increases with every permit of the semaphore (see
    /// `SemaphoreStore` for how it survives the semaphore being recreated).
    pub fencing_token: u64,
    pub acquired_at: Millis,
    pub expires_at: Millis,
    pub holder: Option<String>,
}

/// One holder as status shows it. The id is a capability: the HTTP layer
/// shows it to admins only, when asked (`?include=ids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    pub id: PermitId,
    pub holder: Option<String>,
    pub count: u32,
    pub fencing_token: u64,
    pub acquired_at: Millis,
    pub expires_at: Millis,
}

/// A semaphore's state at one instant of the store's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphoreStatus {
    pub name: SemaphoreName,
    pub limit: u32,
    pub held: u32,
    pub waiting: u32,
    /// How long the semaphore may stay unused before it is forgotten
    /// (`None`: never); the store's default unless set on it.
    pub idle_ttl: Option<std::time::Duration>,
    /// Live permits, soonest expiry first, at most `MAX_LISTED_HOLDERS`.
    pub holders: Vec<HolderInfo>,
}

/// One line of the listing: a semaphore without its holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphoreSummary {
    pub name: SemaphoreName,
    pub limit: u32,
    pub held: u32,
    pub waiting: u32,
}

/// One page of the listing, and where the next one starts (`None`: this
/// was the last). The cursor is opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphorePage {
    pub semaphores: Vec<SemaphoreSummary>,
    pub next_cursor: Option<String>,
}

/// What a `PUT` says of the idle TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleTtl {
    /// Not mentioned: as it is (the store's default for a new semaphore).
    Keep,
    /// Never forgotten, however long unused.
    Never,
    /// Forgotten after this long with no holders and no waiters.
    After(std::time::Duration),
}

impl SemaphoreStatus {
    /// Units free right now. Zero, not negative, after a limit was lowered
    /// below what is held (held permits are never revoked).
    pub fn available(&self) -> u32 {
        self.limit.saturating_sub(self.held)
    }
}

/// Status lists at most this many holders, so one status call stays cheap
/// even on a semaphore with a million single-unit permits.
pub const MAX_LISTED_HOLDERS: usize = 1000;

/// Everything an acquire asks for, already validated.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    pub name: SemaphoreName,
    /// Create the semaphore with this limit if it does not exist; if it exists
    /// with another limit the outcome is `LimitConflict`.
    pub limit: Option<Limit>,
    pub count: Count,
    pub ttl: Ttl,
    pub wait: WaitTime,
    pub holder: Option<Holder>,
    pub idempotency_key: Option<IdempotencyKey>,
}

impl AcquireRequest {
    /// What an idempotent retry must repeat exactly: a retry with the same key
    /// but another body is a client bug, reported rather than guessed at.
    pub fn fingerprint(&self) -> String {
        format!(
            "limit={};count={};ttl={};holder={}",
            self.limit.map(|l| l.get().to_string()).unwrap_or_default(),
            self.count.get(),
            self.ttl.as_millis(),
            self.holder.as_ref().map(Holder::as_str).unwrap_or_default(),
        )
    }
}

/// How an acquire ended. Only a store failure is an `Err`; "no capacity" and
/// "no such semaphore" are ordinary answers; the HTTP layer alone decides
/// their statuses (`crate::error::ApiError` names each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// A new permit.
    Granted(Permit),
    /// The `Idempotency-Key` already names a live permit: the same one.
    Replayed(Permit),
    /// No capacity within the wait.
    Unavailable {
        limit: u32,
        held: u32,
        /// When the soonest lease runs out, if any: a hint for `Retry-After`.
        retry_after_ms: Option<u64>,
    },
    /// The semaphore does not exist and the request gave no limit.
    NotFound,
    /// The semaphore exists with a different limit.
    LimitConflict { current: u32 },
    /// `count` is more than the semaphore's limit: it could never succeed.
    CountExceedsLimit { limit: u32 },
    /// The `Idempotency-Key` was used with another body.
    IdempotencyMismatch,
    /// The `Idempotency-Key`'s first request still waits for its permit.
    IdempotencyInFlight,
    /// The `Idempotency-Key`'s permit ended (released or expired) within the
    /// retention: never a second permit for one key.
    PermitEnded,
}

/// How a release ended. Telling "no such semaphore" from "no such permit"
/// here spares the handler a second store call to word its 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    Released,
    /// Unknown, already released, or expired.
    NoPermit,
    NoSemaphore,
}

/// How `PUT /semaphores/{name}` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetLimitOutcome {
    Created,
    Changed { previous: u32 },
    Unchanged,
}
