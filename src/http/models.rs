//! The JSON shapes of requests and responses, and their conversion from and to
//! domain values. Raw request bodies stop here: handlers only see validated
//! domain types.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::RequestBounds;
use crate::error::ApiError;
use crate::semaphore::{
    AcquireRequest, Count, Holder, HolderInfo, IdempotencyKey, IdleTtl, Limit, Permit,
    SemaphoreName, SemaphorePage, SemaphoreStatus, ValueError, WaitTime,
};

/// Reads a JSON number that is a whole number, written either way: `5` or
/// `5.0`. JSON Schema (and so the OpenAPI document) counts `5.0` as an
/// integer, and clients in languages with one number type send it.
fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = number.as_u64() {
        return Ok(n);
    }
    match number.as_f64() {
        // The upper bound is exclusive: `u64::MAX as f64` rounds up to 2^64.
        Some(f) if f.fract() == 0.0 && (0.0..u64::MAX as f64).contains(&f) => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!(
            "invalid value: {number}, expected a whole number of at least 0"
        ))),
    }
}

/// [`whole_number`] for an optional field; `null` is the same as leaving it out.
fn optional_whole_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] u64);
    Ok(Option::<Whole>::deserialize(deserializer)?.map(|Whole(n)| n))
}

/// An optional field where `null` means something (never) and leaving it
/// out means "as it is": `None` left out, `Some(None)` null.
fn nullable_whole_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<u64>>, D::Error> {
    optional_whole_number(deserializer).map(Some)
}

/// Body of `PUT /semaphores/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({ "limit": 5, "idle_ttl_ms": 86_400_000 })))]
pub struct SetLimitBody {
    /// The most units held at once. Lowering it never revokes permits
    /// already held; new acquires wait until what is held fits.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub limit: u64,
    /// Forget the semaphore after this long with no holders and no waiters
    /// (its fencing tokens keep increasing if it is created again); `null`:
    /// never. Left out: as it is (a new semaphore gets the server's default,
    /// `--semaphore-idle-ttl-ms`).
    #[serde(default, deserialize_with = "nullable_whole_number")]
    #[schema(value_type = Option<u64>, minimum = 1000, maximum = 31_536_000_000_u64)]
    pub idle_ttl_ms: Option<Option<u64>>,
}

impl SetLimitBody {
    /// Bounds of `idle_ttl_ms`: a second to a year.
    const IDLE_TTL_MS: std::ops::RangeInclusive<u64> = 1_000..=31_536_000_000;

    /// # Errors
    /// When `idle_ttl_ms` is outside its bounds.
    pub fn idle_ttl(&self) -> Result<IdleTtl, ValueError> {
        match self.idle_ttl_ms {
            None => Ok(IdleTtl::Keep),
            Some(None) => Ok(IdleTtl::Never),
            Some(Some(ms)) if Self::IDLE_TTL_MS.contains(&ms) => {
                Ok(IdleTtl::After(std::time::Duration::from_millis(ms)))
            }
            Some(Some(ms)) => Err(ValueError(format!(
                "idle_ttl_ms must be between {} and {} (or null for never), not {ms}",
                Self::IDLE_TTL_MS.start(),
                Self::IDLE_TTL_MS.end()
            ))),
        }
    }
}

/// Body of `POST /semaphores/{name}/permits`; every field may be left out.
///
/// Unknown fields are refused so that a typo (`ttl` for `ttl_ms`) is a 400
/// rather than a silently ignored setting.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({ "limit": 5, "count": 1, "ttl_ms": 30000, "wait_ms": 0, "holder": "worker-7" })))]
pub struct AcquireBody {
    /// Creates an unknown semaphore with this limit. If the semaphore exists
    /// with another limit the acquire is refused (409) rather than silently
    /// sharing it. Without it, an unknown semaphore is a 404.
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(default, deserialize_with = "optional_whole_number")]
    pub limit: Option<u64>,
    /// Units to take at once, all or nothing (default 1). More than the
    /// semaphore's limit could never be granted: 409.
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(default, deserialize_with = "optional_whole_number")]
    pub count: Option<u64>,
    /// Lease length in milliseconds (default 30000). The default, minimum
    /// and maximum are the server's configuration.
    #[schema(minimum = 100, maximum = 3_600_000)]
    #[serde(default, deserialize_with = "optional_whole_number")]
    pub ttl_ms: Option<u64>,
    /// How long the request may wait for capacity, in milliseconds: a long
    /// poll, served first come first served. 0 (the default) tries once. The
    /// maximum is the server's configured maximum wait.
    #[schema(minimum = 0, maximum = 60_000)]
    #[serde(default, deserialize_with = "optional_whole_number")]
    pub wait_ms: Option<u64>,
    /// A free-text label shown in status and logs; no control characters.
    /// An empty label is the same as none.
    #[schema(max_length = 128, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub holder: Option<String>,
}

/// Body of `PATCH /semaphores/{name}/permits/{id}`; `ttl_ms` defaults to the
/// configured default lease.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({ "ttl_ms": 30000 })))]
pub struct RefreshBody {
    /// The new lease, in milliseconds from now (default 30000). The default,
    /// minimum and maximum are the server's configuration.
    #[schema(minimum = 100, maximum = 3_600_000)]
    #[serde(default, deserialize_with = "optional_whole_number")]
    pub ttl_ms: Option<u64>,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

impl AcquireBody {
    /// # Errors
    /// 400 for any value outside its bound; 409 for `count` above the limit
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
            return Err(ApiError::CountExceedsLimit {
                count: count.get(),
                limit: limit.get(),
            });
        }
        let ttl = match self.ttl_ms {
            Some(ms) => bounds.ttl(ms).map_err(bad)?,
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
#[derive(Debug, Serialize, ToSchema)]
#[schema(examples(json!({
    "id": "3b0c5a4e-8f1d-4c3a-9a57-2f6c1e0d9b21", "semaphore": "payments", "count": 1,
    "fencing_token": 1_795_851_413_712_265_u64, "acquired_at": "2026-11-28T07:36:53.712Z",
    "expires_at": "2026-11-28T07:37:23.712Z", "holder": "worker-7"
})))]
pub struct PermitView {
    /// The permit's id: the capability to refresh or release it. Only the
    /// acquire that made the permit returns it.
    #[schema(format = Uuid)]
    pub id: String,
    /// The semaphore's name.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub semaphore: String,
    /// Units this permit holds.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub count: u32,
    /// Strictly increases with every permit of the semaphore; below 2^53.
    pub fencing_token: u64,
    /// When the permit was granted, on the store's clock.
    #[schema(format = DateTime)]
    pub acquired_at: String,
    /// When the lease runs out unless refreshed, on the store's clock.
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// The label given at acquire, if any.
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
#[derive(Debug, Serialize, ToSchema)]
pub struct HolderView {
    /// The permit id: only for admin tokens that ask (`?include=ids`), so
    /// that one stuck permit can be released (`DELETE`) without deleting
    /// the semaphore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The label given at acquire, if any.
    pub holder: Option<String>,
    /// Units this permit holds.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub count: u32,
    pub fencing_token: u64,
    #[schema(format = DateTime)]
    pub acquired_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

impl From<&HolderInfo> for HolderView {
    fn from(h: &HolderInfo) -> Self {
        Self {
            id: None,
            holder: h.holder.clone(),
            count: h.count,
            fencing_token: h.fencing_token,
            acquired_at: h.acquired_at.to_rfc3339(),
            expires_at: h.expires_at.to_rfc3339(),
        }
    }
}

/// A semaphore's status.
#[derive(Debug, Serialize, ToSchema)]
#[schema(examples(json!({
    "name": "payments", "limit": 5, "held": 1, "available": 4, "waiting": 0,
    "holders": [{ "holder": "worker-7", "count": 1, "fencing_token": 1_795_851_413_712_265_u64,
                  "acquired_at": "2026-11-28T07:36:53.712Z", "expires_at": "2026-11-28T07:37:23.712Z" }]
})))]
pub struct SemaphoreView {
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub name: String,
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub limit: u32,
    /// Units held by live permits; may exceed `limit` after the limit was lowered.
    pub held: u32,
    /// Units free right now.
    pub available: u32,
    /// Acquires waiting for capacity.
    pub waiting: u32,
    /// Forgotten after this long with no holders and no waiters; `null`:
    /// never.
    pub idle_ttl_ms: Option<u64>,
    /// Live permits, soonest expiry first, at most 1,000 (`held` counts all).
    #[schema(max_items = 1000)]
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
            idle_ttl_ms: s.idle_ttl.map(|ttl| ttl.as_millis() as u64),
            holders: s.holders.iter().map(HolderView::from).collect(),
        }
    }
}

impl SemaphoreView {
    /// With each holder's permit id (for admins who asked).
    pub fn with_ids(mut self, status: &SemaphoreStatus) -> Self {
        for (view, holder) in self.holders.iter_mut().zip(&status.holders) {
            view.id = Some(holder.id.to_string());
        }
        self
    }
}

/// One semaphore in the listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct SemaphoreLine {
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub name: String,
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub limit: u32,
    pub held: u32,
    pub waiting: u32,
}

/// `GET /semaphores`: one page of the listing.
#[derive(Debug, Serialize, ToSchema)]
#[schema(examples(json!({
    "semaphores": [{ "name": "payments", "limit": 5, "held": 1, "waiting": 0 }],
    "next_cursor": null
})))]
pub struct SemaphoreList {
    pub semaphores: Vec<SemaphoreLine>,
    /// Pass as `cursor` for the next page; `null` after the last page.
    pub next_cursor: Option<String>,
}

impl From<SemaphorePage> for SemaphoreList {
    fn from(page: SemaphorePage) -> Self {
        Self {
            semaphores: page
                .semaphores
                .into_iter()
                .map(|s| SemaphoreLine {
                    name: s.name.to_string(),
                    limit: s.limit,
                    held: s.held,
                    waiting: s.waiting,
                })
                .collect(),
            next_cursor: page.next_cursor,
        }
    }
}
