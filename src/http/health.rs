//! Liveness and readiness probes, and the Prometheus metrics page.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::error::{ApiError, Unavailable};

/// The body of `GET /healthz`.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({ "status": "ok" })))]
pub struct Health {
    #[schema(pattern = "^ok$")]
    pub status: &'static str,
}

/// The body of `GET /readyz`.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({ "status": "ready", "store": "redis", "mode": "cluster", "masters": 3 })))]
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

/// `GET /readyz`: the store answers (Redis `TIME`); 503 problem when not,
/// and from the moment shutdown begins.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    summary = "Readiness: the store answers",
    description = "200 while the store answers; 503 while it does not, and from the moment \
        this instance begins to shut down (`shutting-down`), so a load balancer stops sending \
        it requests while those in flight finish.",
    responses(
        (status = 200, description = "The store answers (Redis `TIME`); `mode` and `masters` say how Redis is deployed, `warnings` lists store settings to change.", body = Readiness),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    if state.drain.is_draining() {
        return Err(ApiError::ShuttingDown);
    }
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
        format (`text/plain; version=0.0.4`). Touches the store only to read the status of \
        the semaphores `--metrics-semaphores` lists, for their gauges.",
    responses((status = 200, description = "The metrics, as Prometheus text.",
               content_type = "text/plain", body = String,
               example = "# TYPE permitd_http_requests_total counter\n")),
)]
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    use crate::telemetry::{
        REDIS_POOL_IN_USE, REDIS_POOL_MAX, REDIS_POOL_OPEN, REDIS_POOL_WAITING,
    };
    refresh_semaphore_gauges(&state).await;
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

/// Reads the status of every `--metrics-semaphores` name, all at once (each
/// call bounded by the store's timeout, so a scrape during a Redis outage
/// takes one timeout, not one per name), into the per-semaphore gauges. A
/// semaphore that does not exist reads 0; one whose status failed keeps its
/// last values (the failure is counted in the Redis metrics).
async fn refresh_semaphore_gauges(state: &AppState) {
    use crate::telemetry::{SEMAPHORE_HELD, SEMAPHORE_LIMIT, SEMAPHORE_WAITING};
    let reads = state
        .metered
        .iter()
        .map(|name| async move { (name, state.store.status(name).await) });
    for (name, status) in futures::future::join_all(reads).await {
        let (limit, held, waiting) = match status {
            Ok(Some(status)) => (status.limit, status.held, status.waiting),
            Ok(None) => (0, 0, 0),
            Err(e) => {
                tracing::debug!(semaphore = %name, error = %e, "no status for its gauges");
                continue;
            }
        };
        let label = name.to_string();
        metrics::gauge!(SEMAPHORE_LIMIT, "semaphore" => label.clone()).set(f64::from(limit));
        metrics::gauge!(SEMAPHORE_HELD, "semaphore" => label.clone()).set(f64::from(held));
        metrics::gauge!(SEMAPHORE_WAITING, "semaphore" => label).set(f64::from(waiting));
    }
}
