//! The HTTP API: routes, shared state, and the layers around them.
//!
//! `router(state)` is a plain function so tests can drive it without a socket.
//! `routes` declares every route once, for the router and the OpenAPI
//! document alike. Handlers live one file per resource; `models` holds the
//! JSON shapes and `extract` the extractors (a valid semaphore name from the
//! path; rejections as problem+json); `openapi` completes the document and
//! serves it with Swagger UI. The layers around them: `observe` (request ids,
//! spans, access log, HTTP metrics), `auth` (bearer tokens), `drain` (requests
//! in flight, readiness during shutdown) and `limits` (request bounds, body
//! size, the per-route time budgets).

pub mod auth;
mod demo;
pub mod drain;
mod extract;
mod health;
pub mod limits;
mod models;
pub mod observe;
pub mod openapi;
mod permits;
mod routes;
mod semaphores;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::Response;
use axum::{Extension, Router};
use tower_http::trace::TraceLayer;

pub use auth::AccessControl;
pub use limits::{HttpLimits, RequestBounds, TimeBudgets};

use crate::demo::DemoConfig;
use crate::error::ApiError;
use crate::semaphore::SemaphoreName;
use crate::store::SemaphoreStore;
use crate::waiting::WaitSettings;

/// What every handler can reach: one `Arc`, because axum clones the state for
/// every extractor and middleware of every request, and cloning (and dropping)
/// several `Arc`s per request showed up in the contended benchmark's profile.
#[derive(Clone)]
pub struct AppState(Arc<StateParts>);

impl AppState {
    pub fn new(parts: StateParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = StateParts;

    fn deref(&self) -> &StateParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct StateParts {
    pub store: Arc<dyn SemaphoreStore>,
    pub bounds: RequestBounds,
    pub waiting: WaitSettings,
    /// The demo's outbound policy and HTTP clients (`GET /demo`).
    pub demo: Arc<DemoConfig>,
    /// Body size and time bounds of one request.
    pub limits: HttpLimits,
    /// Which tokens are accepted, and where none is needed.
    pub access: AccessControl,
    /// Whether `/demo` and `/demo/upstream` are served (`--demo`).
    pub serve_demo: bool,
    /// Semaphores with their own gauges on `/metrics` (`--metrics-semaphores`).
    pub metered: Vec<SemaphoreName>,
    /// Shutdown's progress, and the requests it waits for.
    pub drain: Arc<drain::Drain>,
}

/// The OpenAPI document of a server enforcing `bounds`, as `GET
/// /openapi.json` serves it when no API token is configured and the demo is
/// on (the defaults).
pub fn document(bounds: &RequestBounds) -> utoipa::openapi::OpenApi {
    // Budgets only bound requests being served: none is served from this one.
    let unused = TimeBudgets {
        standard: Duration::ZERO,
        acquire: Duration::ZERO,
        demo: Duration::ZERO,
    };
    let doc = routes::api(&unused, true).into_openapi();
    openapi::with_bounds(doc, bounds)
}

/// The document as YAML, as checked in at the repository root.
///
/// # Errors
/// Never in practice: the document is plain data.
pub fn document_yaml(bounds: &RequestBounds) -> anyhow::Result<String> {
    Ok(openapi::to_yaml(&document(bounds)))
}

pub fn router(state: AppState) -> Router {
    let budgets = TimeBudgets::new(&state.limits, &state.bounds);
    let (api, doc) = routes::api(&budgets, state.serve_demo).split_for_parts();
    let mut doc = openapi::with_bounds(doc, &state.bounds);
    if !state.serve_demo
        && let Some(tags) = doc.tags.as_mut()
    {
        tags.retain(|tag| tag.name != "demo");
    }
    if state.access.is_enabled() {
        openapi::require_bearer(&mut doc, &state.access);
    }
    api.layer(Extension(Arc::new(openapi::Rendered::new(&doc))))
        .merge(openapi::swagger_ui())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Each layer wraps the ones above it, so a request meets them bottom
        // up: its id and trace are settled first, then its span opens, and
        // the metrics and the access log also see the 401s and timeouts
        // answered below them. Router::layer runs after routing, so the
        // matched route is known to every one of them. As few layers as
        // that order allows: each costs a boxed future and a clone of the
        // stack below it per request (seven merged into `admit` and
        // `identify`, five fewer, cut the memory store's CPU per
        // acquire-release cycle by a tenth uncontended, a fifth contended).
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(from_fn_with_state(state.clone(), admit))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(observe::request_span)
                .on_request(())
                .on_response(observe::log_response)
                // Failures are logged where they happen (`ApiError`) and in
                // the access line; tower-http's own line would repeat them.
                .on_failure(()),
        )
        .layer(from_fn(observe::identify))
        .with_state(state)
}

/// Middleware inside the span: the HTTP metrics (which see every answer
/// below, 401s and time-outs included), the drain's count of requests in
/// flight, then access control.
async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let measured = observe::Measured::start(&request);
    let _in_flight = state.drain.enter(&request);
    let response = match auth::require_token(&state.access, request).await {
        Ok(request) => next.run(request).await,
        Err(refusal) => refusal,
    };
    measured.finish(response)
}
