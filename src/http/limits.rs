//! Bounds on one request: the values it may carry ([`RequestBounds`]: lease
//! and wait lengths, the demo's sizes) and how long it may take
//! (`--request-timeout-ms`). The body size bound (`--max-body-bytes`) is axum's `DefaultBodyLimit`,
//! enforced where the body is read (`extract::JsonBody`).
//!
//! The timeout is one route-scoped layer ([`within`]), with a budget per kind
//! of route ([`TimeBudgets`]), chosen where the routes are declared
//! (`http::routes`). It must not cut a legitimate long poll short, so routes
//! that wait on purpose get their longest legitimate wait on top. Past the
//! budget the answer is a 503 problem with `Retry-After`, and the handler's
//! future is dropped (a waiting acquire leaves the queue as it does when a
//! client hangs up).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::demo::{self, DemoBounds};
use crate::error::ApiError;
use crate::semaphore::{Ttl, ValueError};

/// The bounds request values are checked against, derived from settings.
#[derive(Debug, Clone, Copy)]
pub struct RequestBounds {
    pub default_ttl: Ttl,
    pub min_ttl_ms: u64,
    pub max_ttl_ms: u64,
    pub max_wait_ms: u64,
    /// The demo's `requests` and `delay_ms` bounds.
    pub demo: DemoBounds,
}

impl RequestBounds {
    /// A requested lease (`ttl_ms`), checked against these bounds.
    ///
    /// # Errors
    /// When `ms` is outside the minimum … maximum lease.
    pub fn ttl(&self, ms: u64) -> Result<Ttl, ValueError> {
        Ttl::within(ms, self.min_ttl_ms, self.max_ttl_ms)
    }
}

/// Limits of the HTTP layer, from settings.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Bound on one request, on top of any wait it asked for.
    pub request_timeout: Duration,
}

/// How long a request of each kind of route may take: the request timeout,
/// plus the longest legitimate wait of routes that wait on purpose.
#[derive(Debug, Clone, Copy)]
pub struct TimeBudgets {
    /// Every route that does not wait on purpose.
    pub standard: Duration,
    /// An acquire: `--max-wait-ms` on top (its own `wait_ms` is not known
    /// before the body is read, and the wait itself ends by `wait_ms`).
    pub acquire: Duration,
    /// `GET /demo`: a whole run, which ends by its deadline, plus one call
    /// that started just before.
    pub demo: Duration,
}

impl TimeBudgets {
    pub fn new(limits: &HttpLimits, bounds: &RequestBounds) -> Self {
        let standard = limits.request_timeout;
        Self {
            standard,
            acquire: standard + Duration::from_millis(bounds.max_wait_ms),
            demo: standard + demo::DEADLINE + demo::CALL_TIMEOUT,
        }
    }
}

/// Route middleware: answers 503 (problem+json) when the request is not
/// answered within `budget`, the budget of the route it is layered on.
pub async fn within(State(budget): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(budget, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(budget_ms = budget.as_millis() as u64, "request timed out");
            ApiError::Timeout.into_response()
        }
    }
}
