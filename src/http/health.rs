//! Liveness and readiness probes, and the Prometheus metrics page.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::error::{ApiError, Unavailable};

/// The body of `GET /healthz`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({ "status": "ok" }))]
pub struct Health {
    #[schema(pattern = "^ok$")]
    pub status: &'static str,
}

/// The body of `GET /readyz`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({ "status": "ready", "store": "redis", "mode": "cluster", "masters": 3 }))]
pub struct Readiness {
    #[schema(pattern = "^ready$")]
    pub status: &'static str,
    /// Which store this instance uses: `redis` or `memory`.
    #[schema(pattern = "^(redis|memory)$")]
    pub store: &'static str,
    /// Redis only: `standalone`, `sentinel` or `cluster`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(standalone|sentinel|cluster)$")]
    pub mode: Option<&'static str>,
    /// Redis Cluster only: how many masters serve its slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masters: Option<usize>,
    /// What the operator should change in the store's configuration (for
    /// Redis: an eviction policy other than `noeviction`). Left out when
    /// nothing; the instance serves either way.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `GET /healthz`: the process answers HTTP. Never touches the store, so a
/// Redis outage does not get healthy instances restarted.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "Liveness: the process answers",
    responses((status = 200, description = "The process answers HTTP (the store is not checked).", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /readyz`: the store answers (Redis `TIME`); 503 problem when not.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    summary = "Readiness: the store answers",
    responses(
        (status = 200, description = "The store answers (Redis `TIME`); `mode` and `masters` say how Redis is deployed, `warnings` lists store settings to change.", body = Readiness),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    state.store.ping().await?;
    let report = state.store.report().await?;
    Ok(Json(Readiness {
        status: "ready",
        store: state.store.kind(),
        mode: report.mode,
        masters: report.masters,
        warnings: report.warnings,
    }))
}

/// `GET /metrics`: Prometheus text format. The Redis pool's gauges are read
/// now, at scrape time, rather than kept up to date on every checkout.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "This instance's counters and histograms in the Prometheus text exposition \
        format (`text/plain; version=0.0.4`). Never touches the store.",
    responses((status = 200, description = "The metrics, as Prometheus text.",
               content_type = "text/plain", body = String,
               example = "# TYPE permitd_http_requests_total counter\n")),
)]
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
