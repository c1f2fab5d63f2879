//! The HTTP API: routes, shared state, and the layers around them.
//!
//! `router(state)` is a plain function so tests can drive it without a socket.
//! Handlers live one file per resource; `models` holds the JSON shapes and
//! `extract` the extractors whose rejections are problem+json; `openapi` builds
//! the OpenAPI document from the handlers' annotations and serves it with
//! Swagger UI. The layers around them: `observe` (request ids, spans, access
//! log, HTTP metrics), `auth` (bearer tokens) and `limits` (body size, request
//! timeout).

pub mod auth;
mod demo;
mod extract;
mod health;
pub mod limits;
mod models;
pub mod observe;
pub mod openapi;
mod permits;
mod semaphores;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::AccessControl;
pub use limits::{HttpLimits, RequestBounds};

use crate::demo::DemoConfig;
use crate::error::ApiError;
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
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/semaphores/{name}",
            get(semaphores::get_semaphore)
                .put(semaphores::put_semaphore)
                .delete(semaphores::delete_semaphore),
        )
        // One constant, so the timeout layer's long-poll allowance cannot
        // drift from the route it is for.
        .route(
            limits::ACQUIRE_ROUTE,
            axum::routing::post(permits::acquire_permit),
        )
        .route(
            "/semaphores/{name}/permits/{id}",
            get(permits::get_permit)
                .patch(permits::refresh_permit)
                .delete(permits::release_permit),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(demo::routes())
        .merge(openapi::routes(&state.bounds, &state.access))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Each layer wraps the ones above it, so a request meets them bottom
        // up: its id is settled first, then its span opens, and the metrics
        // and the access log also see the 401s and timeouts answered below
        // them. Router::layer runs after routing, so the matched route is
        // known to every one of them.
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(from_fn_with_state(state.clone(), limits::request_timeout))
        .layer(from_fn_with_state(state.clone(), auth::require_token))
        .layer(from_fn(observe::record_metrics))
        .layer(PropagateRequestIdLayer::new(observe::X_REQUEST_ID.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(observe::request_span)
                .on_request(())
                .on_response(observe::log_response)
                // Failures are logged where they happen (`ApiError`) and in
                // the access line; tower-http's own line would repeat them.
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(
            observe::X_REQUEST_ID.clone(),
            MakeRequestUuid,
        ))
        .layer(from_fn(observe::drop_unusable_request_id))
        .with_state(state)
}
