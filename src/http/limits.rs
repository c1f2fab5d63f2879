//! Bounds on one request: how long it may take (`--request-timeout-ms`).
//! The body size bound (`--max-body-bytes`) is axum's `DefaultBodyLimit`,
//! enforced where the body is read (`extract::JsonBody`).
//!
//! The timeout must not cut a legitimate long poll short, so routes that wait
//! on purpose get their longest legitimate wait on top: an acquire its
//! `--max-wait-ms` here (the body, and so `wait_ms`, is not read yet), which
//! the handler then tightens to its own `wait_ms` plus the timeout; `GET /demo`
//! the length of a whole run. Past the bound the answer is a 503 problem with
//! `Retry-After`, and the handler's future is dropped (a waiting acquire
//! leaves the queue as it does when a client hangs up).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, observe};
use crate::demo::{self, DemoBounds};
use crate::semaphore::{Ttl, ValueError};
use crate::error::ApiError;

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

/// The route of a waiting acquire, as matched.
pub const ACQUIRE_ROUTE: &str = "/semaphores/{name}/permits";

/// How long this request may take, before the handler knows more.
fn budget(state: &AppState, method: &Method, route: &str) -> Duration {
    let extra = match (method, route) {
        (&Method::POST, ACQUIRE_ROUTE) => Duration::from_millis(state.bounds.max_wait_ms),
        // A run ends by its deadline, plus one call that started just before.
        (&Method::GET, "/demo") => demo::DEADLINE + demo::CALL_TIMEOUT,
        _ => Duration::ZERO,
    };
    state.limits.request_timeout + extra
}

/// Middleware: answers 503 (problem+json) when the request is not answered
/// within its budget.
pub async fn request_timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let budget = budget(&state, request.method(), observe::route_of(&request));
    match tokio::time::timeout(budget, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(budget_ms = budget.as_millis() as u64, "request timed out");
            ApiError::Timeout.into_response()
        }
    }
}
