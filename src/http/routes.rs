//! Every route of the API, declared once: `routes!` registers each handler
//! with axum and its `#[utoipa::path]` with the OpenAPI document, so the
//! router and the document cannot disagree. Each group of routes carries its
//! time budget as a route layer (see `limits`).

use axum::middleware::from_fn_with_state;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::limits::{self, TimeBudgets};
use super::{AppState, demo, health, openapi, permits, semaphores};

/// The documented routes, with `budgets` as their time bounds; the demo's
/// only when `demo` (`--demo`), so switched off they are neither routed nor
/// documented. The document alone (`http::document`) does not depend on the
/// budgets.
pub fn api(budgets: &TimeBudgets, demo: bool) -> OpenApiRouter<AppState> {
    let budget = |duration| from_fn_with_state(duration, limits::within);
    let standard = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(semaphores::list_semaphores))
        .routes(routes!(
            semaphores::put_semaphore,
            semaphores::get_semaphore,
            semaphores::delete_semaphore
        ))
        .routes(routes!(
            permits::get_permit,
            permits::refresh_permit,
            permits::release_permit
        ))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(openapi::openapi_yaml))
        .route_layer(budget(budgets.standard));
    // A long poll may wait up to --max-wait-ms on top of the request timeout.
    let acquire = OpenApiRouter::new()
        .routes(routes!(permits::acquire_permit))
        .route_layer(budget(budgets.acquire));
    let api = standard.merge(acquire);
    if !demo {
        return api;
    }
    let upstream = OpenApiRouter::new()
        .routes(routes!(demo::demo_upstream))
        .route_layer(budget(budgets.standard));
    let run = OpenApiRouter::new()
        .routes(routes!(demo::run_demo))
        .route_layer(budget(budgets.demo));
    api.merge(upstream).merge(run)
}
