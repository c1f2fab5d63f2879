//! The JSON shapes of requests and responses, and their conversion from and to
//! domain values. Raw request bodies stop here: handlers only see validated
//! domain types.

use serde::{Deserialize, Serialize};

use crate::config::RequestBounds;
use crate::error::ApiError;
use crate::semaphore::{
    AcquireRequest, Count, Holder, HolderInfo, IdempotencyKey, Limit, Permit, SemaphoreName,
    SemaphoreStatus, Ttl, WaitTime,
};

/// Body of `PUT /semaphores/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLimitBody {
    pub limit: u64,
}

/// Body of `POST /semaphores/{name}/permits`; every field may be left out.
///
/// Unknown fields are refused so that a typo (`ttl` for `ttl_ms`) is a 400
/// rather than a silently ignored setting.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    pub limit: Option<u64>,
    pub count: Option<u64>,
    pub ttl_ms: Option<u64>,
    pub wait_ms: Option<u64>,
    pub holder: Option<String>,
}

/// Body of `PATCH /semaphores/{name}/permits/{id}`; `ttl_ms` defaults to the
/// configured default lease.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub ttl_ms: Option<u64>,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

impl AcquireBody {
    /// # Errors
    /// 400 for any value outside its bound, including `count` above the limit
    /// given in the same body.
    pub fn into_request(
        self,
        name: SemaphoreName,
        idempotency_key: Option<IdempotencyKey>,
        bounds: &RequestBounds,
    ) -> Result<AcquireRequest, ApiError> {
        let limit = self.limit.map(Limit::new).transpose().map_err(bad)?;
        let count = self
            .count
            .map(Count::new)
            .transpose()
            .map_err(bad)?
            .unwrap_or(Count::ONE);
        if let Some(limit) = limit
            && count.get() > limit.get()
        {
            return Err(bad(format!(
                "count {} is more than the limit {}: it could never be granted",
                count.get(),
                limit.get()
            )));
        }
        let ttl = match self.ttl_ms {
            Some(ms) => Ttl::new(ms, bounds.max_ttl_ms).map_err(bad)?,
            None => bounds.default_ttl,
        };
        let wait = WaitTime::new(self.wait_ms.unwrap_or(0), bounds.max_wait_ms).map_err(bad)?;
        // An empty label is the same as none: status shows `null` for both.
        let holder = match self.holder.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(Holder::parse(raw).map_err(bad)?),
        };
        Ok(AcquireRequest {
            name,
            limit,
            count,
            ttl,
            wait,
            holder,
            idempotency_key,
        })
    }
}

/// A permit as the acquire, lookup and refresh responses show it.
#[derive(Debug, Serialize)]
pub struct PermitView {
    pub id: String,
    pub semaphore: String,
    pub count: u32,
    pub fencing_token: u64,
    pub acquired_at: String,
    pub expires_at: String,
    pub holder: Option<String>,
}

impl From<&Permit> for PermitView {
    fn from(p: &Permit) -> Self {
        Self {
            id: p.id.to_string(),
            semaphore: p.semaphore.to_string(),
            count: p.count,
            fencing_token: p.fencing_token,
            acquired_at: p.acquired_at.to_rfc3339(),
            expires_at: p.expires_at.to_rfc3339(),
            holder: p.holder.clone(),
        }
    }
}

/// One holder in a semaphore's status: never the permit id.
#[derive(Debug, Serialize)]
pub struct HolderView {
    pub holder: Option<String>,
    pub count: u32,
    pub fencing_token: u64,
    pub acquired_at: String,
    pub expires_at: String,
}

impl From<&HolderInfo> for HolderView {
    fn from(h: &HolderInfo) -> Self {
        Self {
            holder: h.holder.clone(),
            count: h.count,
            fencing_token: h.fencing_token,
            acquired_at: h.acquired_at.to_rfc3339(),
            expires_at: h.expires_at.to_rfc3339(),
        }
    }
}

/// A semaphore's status.
#[derive(Debug, Serialize)]
pub struct SemaphoreView {
    pub name: String,
    pub limit: u32,
    pub held: u32,
    pub available: u32,
    pub waiting: u32,
    pub holders: Vec<HolderView>,
}

impl From<&SemaphoreStatus> for SemaphoreView {
    fn from(s: &SemaphoreStatus) -> Self {
        Self {
            name: s.name.to_string(),
            limit: s.limit,
            held: s.held,
            available: s.available(),
            waiting: s.waiting,
            holders: s.holders.iter().map(HolderView::from).collect(),
        }
    }
}
