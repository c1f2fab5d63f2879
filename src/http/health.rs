//! Liveness and readiness probes, and the Prometheus metrics page.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;

/// `GET /healthz`: the process answers HTTP. Never touches the store, so a
/// Redis outage does not get healthy instances restarted.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the store answers (Redis `PING`); 503 problem when not.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await?;
    Ok(Json(
        json!({ "status": "ready", "store": state.store.kind() }),
    ))
}

/// `GET /metrics`: Prometheus text format. The Redis pool's gauges are read
/// now, at scrape time, rather than kept up to date on every checkout.
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    use crate::telemetry::{
        REDIS_POOL_IN_USE, REDIS_POOL_MAX, REDIS_POOL_OPEN, REDIS_POOL_WAITING,
    };
    if let Some(pool) = state.store.pool_status() {
        metrics::gauge!(REDIS_POOL_MAX).set(pool.max_size as f64);
        metrics::gauge!(REDIS_POOL_OPEN).set(pool.size as f64);
        metrics::gauge!(REDIS_POOL_IN_USE).set(pool.size.saturating_sub(pool.available) as f64);
        metrics::gauge!(REDIS_POOL_WAITING).set(pool.waiting as f64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::metrics().render(),
    )
}
