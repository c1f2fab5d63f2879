//! The embedded store: every semaphore in this process's memory.
//!
//! It keeps the same semantics as the Redis store (see `store/mod.rs`) so that
//! `cargo run` works with nothing else installed and the contract suite can run
//! against both. It is not shared between permitd instances, which is why the
//! application warns when it starts on it.
//!
//! One `std::sync::Mutex` guards the whole map: every operation is a short,
//! non-async critical section (no `.await` while locked), which is both the
//! atomicity the contract asks for and cheaper than an async lock.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{SemaphoreStore, StoreError};
use crate::semaphore::{
    AcquireOutcome, AcquireRequest, HolderInfo, Limit, MAX_LISTED_HOLDERS, Millis, Permit,
    PermitId, SemaphoreName, SemaphoreStatus, SetLimitOutcome, Ttl,
};

#[derive(Default)]
pub struct MemoryStore {
    semaphores: Mutex<HashMap<SemaphoreName, SemaphoreState>>,
}

struct PermitRecord {
    count: u32,
    fencing_token: u64,
    acquired_at: Millis,
    expires_at: Millis,
    holder: Option<String>,
    /// The idempotency key and request fingerprint this permit was made for.
    idempotency: Option<(String, String)>,
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
        }
    }

    /// Drops every permit whose lease ended at or before `now`.
    fn expire(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            self.remove(id);
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
                Ok(SetLimitOutcome::Changed { previous })
            }
        }
    }

    async fn status(&self, name: &SemaphoreName) -> Result<Option<SemaphoreStatus>, StoreError> {
        let now = Millis::now();
        let mut map = self.lock();
        let Some(state) = map.get_mut(name) else {
            return Ok(None);
        };
        state.expire(now);
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
        Ok(Some(SemaphoreStatus {
            name: name.clone(),
            limit: state.limit,
            held: state.held,
            waiting: 0,
            holders,
        }))
    }

    async fn delete(&self, name: &SemaphoreName) -> Result<bool, StoreError> {
        Ok(self.lock().remove(name).is_some())
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, StoreError> {
        let now = Millis::now();
        let mut map = self.lock();
        let state = match (map.get_mut(&request.name), request.limit) {
            (None, None) => return Ok(AcquireOutcome::NotFound),
            (Some(state), Some(limit)) if state.limit != limit.get() => {
                return Ok(AcquireOutcome::LimitConflict {
                    current: state.limit,
                });
            }
            (Some(state), _) => state,
            (None, Some(limit)) => map
                .entry(request.name.clone())
                .or_insert_with(|| SemaphoreState::new(limit.get())),
        };
        state.expire(now);

        if let Some(key) = &request.idempotency_key
            && let Some(&id) = state.idempotency.get(key.as_str())
        {
            let record = &state.permits[&id];
            let same = record
                .idempotency
                .as_ref()
                .is_some_and(|(_, fp)| *fp == request.fingerprint());
            return Ok(if same {
                AcquireOutcome::Replayed(to_permit(&request.name, id, record))
            } else {
                AcquireOutcome::IdempotencyMismatch
            });
        }

        let count = request.count.get();
        if count > state.limit {
            return Ok(AcquireOutcome::CountExceedsLimit { limit: state.limit });
        }
        if state.held + count > state.limit {
            return Ok(AcquireOutcome::Unavailable {
                limit: state.limit,
                held: state.held,
                retry_after_ms: state.soonest_expiry().map(|at| at.0.saturating_sub(now.0)),
            });
        }

        state.fence += 1;
        let id = PermitId::random();
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
        };
        if let Some((key, _)) = &record.idempotency {
            state.idempotency.insert(key.clone(), id);
        }
        state.expiries.insert((record.expires_at, id));
        state.held += count;
        let permit = to_permit(&request.name, id, &record);
        state.permits.insert(id, record);
        Ok(AcquireOutcome::Granted(permit))
    }

    async fn permit(
        &self,
        name: &SemaphoreName,
        id: PermitId,
    ) -> Result<Option<Permit>, StoreError> {
        let now = Millis::now();
        let mut map = self.lock();
        let Some(state) = map.get_mut(name) else {
            return Ok(None);
        };
        state.expire(now);
        Ok(state.permits.get(&id).map(|r| to_permit(name, id, r)))
    }

    async fn refresh(
        &self,
        name: &SemaphoreName,
        id: PermitId,
        ttl: Ttl,
    ) -> Result<Option<Permit>, StoreError> {
        let now = Millis::now();
        let mut map = self.lock();
        let Some(state) = map.get_mut(name) else {
            return Ok(None);
        };
        state.expire(now);
        let Some(record) = state.permits.get_mut(&id) else {
            return Ok(None);
        };
        state.expiries.remove(&(record.expires_at, id));
        record.expires_at = Millis(now.0 + ttl.as_millis());
        state.expiries.insert((record.expires_at, id));
        Ok(Some(to_permit(name, id, record)))
    }

    async fn release(&self, name: &SemaphoreName, id: PermitId) -> Result<bool, StoreError> {
        let now = Millis::now();
        let mut map = self.lock();
        let Some(state) = map.get_mut(name) else {
            return Ok(false);
        };
        state.expire(now);
        Ok(state.remove(id).is_some())
    }
}
