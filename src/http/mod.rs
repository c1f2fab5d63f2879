//! The HTTP API: routes, shared state, and the layers around them.
//!
//! `router(state)` is a plain function so tests can drive it without a socket.
//! Handlers live one file per resource; `models` holds the JSON shapes and
//! `extract` the extractors whose rejections are problem+json; `openapi` builds
//! the OpenAPI document from the handlers' annotations and serves it with
//! Swagger UI.

mod demo;
mod extract;
mod health;
mod models;
pub mod openapi;
mod permits;
mod semaphores;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tower_http::trace::TraceLayer;

use crate::config::RequestBounds;
use crate::demo::DemoConfig;
use crate::error::ApiError;
use crate::store::SemaphoreStore;
use crate::waiting::WaitSettings;

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn SemaphoreStore>,
    pub bounds: RequestBounds,
    pub waiting: WaitSettings,
    /// The demo's outbound policy and HTTP clients (`GET /demo`).
    pub demo: Arc<DemoConfig>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/semaphores/{name}",
            get(semaphores::get_semaphore)
                .put(semaphores::put_semaphore)
                .delete(semaphores::delete_semaphore),
        )
        .route(
            "/semaphores/{name}/permits",
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
        .merge(openapi::routes(&state.bounds))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
