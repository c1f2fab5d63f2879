//! The one error type of the HTTP layer, and the one `Problem` body it is
//! rendered as: `application/problem+json` (RFC 9457).
//!
//! Every refusal a client can see is a variant here, and each variant's doc
//! names its status. Extractor rejections (bad JSON, oversized body, bad path)
//! are converted into it too, so no response ever falls back to axum's plain
//! text errors. Store failures are logged with their details; the client only
//! learns whether to retry.
//!
//! The OpenAPI document describes errors with the same [`Problem`] type, and
//! the answers many operations share (503, 413) are reusable responses here,
//! so what is documented is what is sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{ToResponse, ToSchema};

use crate::semaphore::{SemaphoreName, ValueError};
use crate::store::StoreError;
use crate::waiting::WaitError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a field, header or path segment is outside the contract.
    #[error("{0}")]
    BadRequest(String),
    /// 401: access control is on and the request has no accepted bearer
    /// token; `presented` says whether it had a (wrong) one.
    #[error("a valid bearer token is required")]
    Unauthorized { presented: bool },
    /// 403: the token is accepted but lacks the scope, or the semaphore name
    /// prefix, this request needs; the detail says which.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such permit or route.
    #[error("{0}")]
    NotFound(String),
    /// 404: no such semaphore. `to_acquire` when an acquire without `limit`
    /// asked for it (the detail then says how to create it).
    #[error("semaphore {:?} does not exist", name.as_str())]
    SemaphoreNotFound {
        name: SemaphoreName,
        to_acquire: bool,
    },
    /// 405: the path exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the semaphore exists with another limit.
    #[error("semaphore exists with limit {current}")]
    LimitConflict { current: u32 },
    /// 409: `count` is more than the limit, so it could never be granted
    /// while the limit stays. A conflict with the semaphore's state (raising
    /// the limit makes it grantable), not a malformed request: every value is
    /// within its own bound.
    #[error("count {count} is more than the limit {limit}")]
    CountExceedsLimit { count: u32, limit: u32 },
    /// 413: the body is over the size limit.
    #[error("request body is too large")]
    PayloadTooLarge(String),
    /// 422: an `Idempotency-Key` was reused with a different request body
    /// (the IETF httpapi Idempotency-Key draft's answer).
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    /// 409: the `Idempotency-Key`'s first request is still running (it
    /// waits for capacity); retry once it has answered.
    #[error("a request with this idempotency key is still running")]
    IdempotencyInFlight,
    /// 410: the `Idempotency-Key`'s permit ended (released or expired)
    /// within the retention: a retry never takes a second permit.
    #[error("the permit of this idempotency key has ended")]
    PermitEnded,
    /// 429: no capacity; `Retry-After` says when a lease next runs out.
    #[error("no permit available")]
    NoCapacity {
        limit: u32,
        held: u32,
        retry_after_secs: u64,
    },
    /// 503: permitd is shutting down (`/readyz` while draining).
    #[error("shutting down")]
    ShuttingDown,
    /// 503: `--max-waiters` acquires already wait in this instance, and
    /// this one did not fit when tried once.
    #[error("too many waiting acquires")]
    TooManyWaiters { max: usize },
    /// 503: the request was not answered within `--request-timeout-ms` (plus
    /// the wait it asked for).
    #[error("request timed out")]
    Timeout,
    /// 503 or 500, from the store's own classification.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A wait cut short by the drain says so (another instance serves); a store
/// failure is one.
impl From<WaitError> for ApiError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Store(e) => ApiError::Store(e),
            WaitError::ShuttingDown => ApiError::ShuttingDown,
            WaitError::TooManyWaiters { max } => ApiError::TooManyWaiters { max },
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::SemaphoreNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::LimitConflict { .. }
            | ApiError::CountExceedsLimit { .. }
            | ApiError::IdempotencyInFlight => StatusCode::CONFLICT,
            ApiError::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PermitEnded => StatusCode::GONE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoCapacity { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout | ApiError::ShuttingDown | ApiError::TooManyWaiters { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem `type`: a stable identifier clients can switch on.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid-request",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) | ApiError::SemaphoreNotFound { .. } => "not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::LimitConflict { .. } => "limit-conflict",
            ApiError::CountExceedsLimit { .. } => "count-exceeds-limit",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::IdempotencyMismatch => "idempotency-key-reused",
            ApiError::IdempotencyInFlight => "idempotency-key-in-use",
            ApiError::PermitEnded => "permit-ended",
            ApiError::NoCapacity { .. } => "no-capacity",
            ApiError::Timeout => "request-timeout",
            ApiError::ShuttingDown => "shutting-down",
            ApiError::TooManyWaiters { .. } => "too-many-waiters",
            ApiError::Store(e) if e.is_transient() => "store-unavailable",
            ApiError::Store(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "Invalid request",
            ApiError::Unauthorized { .. } => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound(_) | ApiError::SemaphoreNotFound { .. } => "Not found",
            ApiError::MethodNotAllowed => "Method not allowed",
            ApiError::LimitConflict { .. } => "Semaphore exists with another limit",
            ApiError::CountExceedsLimit { .. } => "Count is more than the limit",
            ApiError::PayloadTooLarge(_) => "Request body too large",
            ApiError::IdempotencyMismatch => "Idempotency key reused",
            ApiError::IdempotencyInFlight => "Idempotency key in use",
            ApiError::PermitEnded => "Permit ended",
            ApiError::NoCapacity { .. } => "No permit available",
            ApiError::Timeout => "Request timed out",
            ApiError::ShuttingDown => "Shutting down",
            ApiError::TooManyWaiters { .. } => "Too many waiting acquires",
            ApiError::Store(e) if e.is_transient() => "Store unavailable",
            ApiError::Store(_) => "Internal error",
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::BadRequest(d)
            | ApiError::NotFound(d)
            | ApiError::PayloadTooLarge(d)
            | ApiError::Forbidden(d) => d.clone(),
            ApiError::SemaphoreNotFound {
                to_acquire: false, ..
            } => self.to_string(),
            ApiError::SemaphoreNotFound {
                to_acquire: true, ..
            } => format!("{self}; give a limit to create it"),
            ApiError::MethodNotAllowed => "this path does not accept that method".into(),
            ApiError::Unauthorized { presented: false } => {
                "send an Authorization: Bearer <token> header with a token this server \
                 accepts"
                    .into()
            }
            ApiError::Unauthorized { presented: true } => {
                "the bearer token is not one this server accepts".into()
            }
            ApiError::ShuttingDown => "this instance is shutting down; use another".into(),
            ApiError::TooManyWaiters { max } => format!(
                "{max} acquires already wait in this instance (--max-waiters), and no unit is \
                 free now; retry after Retry-After, or on another instance"
            ),
            ApiError::Timeout => "the request was not answered within the server's time \
                 limit; retry shortly"
                .into(),
            ApiError::LimitConflict { current } => format!(
                "the semaphore exists with limit {current}; acquire without a limit, or with \
                 limit {current}, or change it with PUT"
            ),
            ApiError::CountExceedsLimit { count, limit } => format!(
                "count {count} is more than the limit {limit}: it could never be granted; \
                 ask for fewer units or raise the limit with PUT"
            ),
            ApiError::IdempotencyMismatch => "this Idempotency-Key was used with a different \
                 request body; use a new key for a new request"
                .into(),
            ApiError::IdempotencyInFlight => "the first request with this Idempotency-Key is \
                 still waiting for a permit; retry once it has answered"
                .into(),
            ApiError::PermitEnded => "the permit this Idempotency-Key was granted has been \
                 released or has expired; acquire again with a new key"
                .into(),
            ApiError::NoCapacity { limit, held, .. } => {
                format!("{held} of {limit} units are held; not enough are free")
            }
            ApiError::Store(e) if e.is_transient() => {
                "the semaphore store cannot be reached right now; retry shortly".into()
            }
            ApiError::Store(_) => "the server failed to handle this request".into(),
        }
    }

    /// The body: the standard members, plus `limit`, `held` and `available`
    /// where they help the client decide what to do.
    pub fn problem(&self) -> Problem {
        let mut problem = Problem {
            kind: format!("urn:permitd:problem:{}", self.kind()),
            title: self.title().into(),
            status: self.status().as_u16(),
            detail: self.detail(),
            limit: None,
            held: None,
            available: None,
        };
        match self {
            ApiError::LimitConflict { current: limit }
            | ApiError::CountExceedsLimit { limit, .. } => problem.limit = Some(*limit),
            ApiError::NoCapacity { limit, held, .. } => {
                problem.limit = Some(*limit);
                problem.held = Some(*held);
                problem.available = Some(limit.saturating_sub(*held));
            }
            _ => {}
        }
        problem
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::NoCapacity {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::Store(e) if e.is_transient() => Some(1),
            ApiError::Timeout | ApiError::ShuttingDown | ApiError::TooManyWaiters { .. } => Some(1),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Store(e) = &self {
            // The only place store details appear: logs, never the client.
            if e.is_transient() {
                tracing::warn!(error = %e, "store unavailable");
            } else {
                tracing::error!(error = %e, "store failed");
            }
        }
        let body = serde_json::to_string(&self.problem()).expect("a problem serialises");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ApiError::TooManyWaiters { .. } = self {
            // Gives the descriptor back: a client that keeps the connection
            // open would hold it as a waiter would.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::Unauthorized { presented } = self {
            // RFC 6750: name the realm; say "invalid_token" only when one was sent.
            let challenge = if presented {
                r#"Bearer realm="permitd", error="invalid_token""#
            } else {
                r#"Bearer realm="permitd""#
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// 400 from any domain value that failed to parse: its message names the
/// field and the bound.
impl From<ValueError> for ApiError {
    fn from(e: ValueError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

// What every refusal renders as, and what the OpenAPI document says it is:
// one type, so the two cannot differ.
/// An error, as `application/problem+json` (RFC 9457). `limit`, `held` and
/// `available` appear where they help decide what to do next.
#[derive(Debug, Serialize, ToSchema)]
#[schema(examples(json!({
    "type": "urn:permitd:problem:no-capacity", "title": "No permit available", "status": 429,
    "detail": "2 of 2 units are held; not enough are free", "limit": 2, "held": 2, "available": 0
})))]
pub struct Problem {
    /// A stable identifier of the kind of problem, `urn:permitd:problem:<kind>`:
    /// clients switch on it.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:permitd:problem:[a-z-]+$")]
    pub kind: String,
    /// A short, human-readable summary of the kind.
    pub title: String,
    /// The HTTP status, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request, in words a client can act on.
    pub detail: String,
    /// The semaphore's limit: on `limit-conflict` and `count-exceeds-limit`
    /// (the limit the request conflicts with) and on `no-capacity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000, nullable = false)]
    pub limit: Option<u32>,
    /// Units held (`no-capacity` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub held: Option<u32>,
    /// Units free (`no-capacity` only): fewer than the request asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub available: Option<u32>,
}

/// The store cannot be reached, the request took longer than the server
/// allows (`request-timeout`), or (a waiting acquire) as many acquires as
/// `--max-waiters` already wait in this instance (`too-many-waiters`); retry
/// after `Retry-After` seconds.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))
)]
pub struct Unavailable(#[allow(dead_code)] Problem);

/// The bearer token is accepted but lacks the scope (`read`, `use`,
/// `admin`) or the semaphore name prefix this operation needs; `detail`
/// names what is missing. Only on a server with API tokens.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct Forbidden(#[allow(dead_code)] Problem);

/// Request body over the size limit (`--max-body-bytes`, 16 KiB by default).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct PayloadTooLarge(#[allow(dead_code)] Problem);
