//! Liveness and readiness probes, and the Prometheus metrics page.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Access;
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
    metrics::gauge!(crate::telemetry::STORE_WARNINGS).set(report.warnings.len() as f64);
    Ok(Json(Readiness {
        status: "ready",
        store: state.store.kind(),
        mode: report.mode,
        masters: report.masters,
        warnings: report.warnings,
    }))
}

/// `GET /metrics`: Prometheus text format. The Redis pool's gauges are read
/// now, at scrape time, rather than kept up to date on every checkout. The
/// per-semaphore gauges are shown only for names the caller may read.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "This instance's counters and histograms in the Prometheus text exposition \
        format (`text/plain; version=0.0.4`). Touches the store only to read the status of \
        the semaphores `--metrics-semaphores` lists, for their gauges. With API tokens \
        configured, those gauges are shown only for the semaphores the caller's token may \
        read (`GET /semaphores/{name}`): none without a token, where the page is public.",
    responses((status = 200, description = "The metrics, as Prometheus text.",
               content_type = "text/plain", body = String,
               example = "# TYPE permitd_http_requests_total counter\n")),
)]
pub async fn metrics(
    State(state): State<AppState>,
    access: Option<Access>,
) -> impl axum::response::IntoResponse {
    use crate::telemetry::{
        REDIS_POOL_IN_USE, REDIS_POOL_MAX, REDIS_POOL_OPEN, REDIS_POOL_WAITING,
    };
    // `None`: an anonymous scrape of public metrics, which may read no name.
    let may_read = |name: &str| access.as_ref().is_some_and(|a| a.may_read(name));
    refresh_semaphore_gauges(&state, may_read).await;
    if let Some(pool) = state.store.pool_status() {
        metrics::gauge!(REDIS_POOL_MAX).set(pool.max_size as f64);
        metrics::gauge!(REDIS_POOL_OPEN).set(pool.size as f64);
        metrics::gauge!(REDIS_POOL_IN_USE).set(pool.size.saturating_sub(pool.available) as f64);
        metrics::gauge!(REDIS_POOL_WAITING).set(pool.waiting as f64);
    }
    let page = crate::telemetry::metrics().render();
    let page = if access.as_ref().is_some_and(Access::may_read_all) {
        page
    } else {
        without_unreadable_gauges(&page, may_read)
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        page,
    )
}

/// Reads the status of every `--metrics-semaphores` name the caller may
/// read, all at once (each call bounded by the store's timeout, so a scrape
/// during a Redis outage takes one timeout, not one per name), into the
/// per-semaphore gauges. A semaphore that does not exist reads 0; one whose
/// status failed keeps its last values (the failure is counted in the Redis
/// metrics). The others are not read: the caller is not shown them, and the
/// next caller who is reads them afresh.
async fn refresh_semaphore_gauges(state: &AppState, may_read: impl Fn(&str) -> bool) {
    use crate::telemetry::{SEMAPHORE_HELD, SEMAPHORE_LIMIT, SEMAPHORE_WAITING};
    let reads = state
        .metered
        .iter()
        .filter(|name| may_read(name.as_str()))
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

/// The rendered page without the per-semaphore gauge samples whose
/// `semaphore` label the caller may not read: those name a semaphore and
/// tell its state, which `GET /semaphores/{name}` would refuse. Their
/// `# HELP` and `# TYPE` lines stay (they name no semaphore). The recorder is
/// process-wide, so this filters what is rendered rather than what this
/// scrape refreshed: a gauge set earlier (or by another caller) is filtered
/// all the same. A sample whose label cannot be read is dropped.
fn without_unreadable_gauges(page: &str, may_read: impl Fn(&str) -> bool) -> String {
    use crate::telemetry::{SEMAPHORE_HELD, SEMAPHORE_LIMIT, SEMAPHORE_WAITING};
    let mut shown = String::with_capacity(page.len());
    for line in page.split_inclusive('\n') {
        let gauge = [SEMAPHORE_LIMIT, SEMAPHORE_HELD, SEMAPHORE_WAITING]
            .iter()
            .find_map(|metric| line.strip_prefix(metric)?.strip_prefix('{'));
        // Names never hold `"` or `\`, so the label value needs no unescaping.
        let readable = gauge.is_none_or(|labels| {
            labels
                .strip_prefix("semaphore=\"")
                .or_else(|| labels.split_once(",semaphore=\"").map(|(_, rest)| rest))
                .and_then(|rest| rest.split_once('"'))
                .is_some_and(|(name, _)| may_read(name))
        });
        if readable {
            shown.push_str(line);
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::without_unreadable_gauges;

    const PAGE: &str = "# HELP permitd_semaphore_held Units held\n\
        # TYPE permitd_semaphore_held gauge\n\
        permitd_semaphore_held{semaphore=\"team-a.x\"} 1\n\
        permitd_semaphore_held{semaphore=\"team-b.payroll\"} 2\n\
        permitd_semaphore_limit{semaphore=\"team-b.payroll\"} 5\n\
        permitd_semaphore_waiting{semaphore=\"team-a.x\"} 0\n\
        permitd_waiters 0\n\
        permitd_http_requests_total{route=\"/semaphores/{name}\",method=\"GET\",status=\"200\"} 3\n";

    #[test]
    fn only_the_gauges_of_readable_names_are_left() {
        let shown = without_unreadable_gauges(PAGE, |name| name.starts_with("team-a."));
        assert_eq!(
            shown,
            "# HELP permitd_semaphore_held Units held\n\
             # TYPE permitd_semaphore_held gauge\n\
             permitd_semaphore_held{semaphore=\"team-a.x\"} 1\n\
             permitd_semaphore_waiting{semaphore=\"team-a.x\"} 0\n\
             permitd_waiters 0\n\
             permitd_http_requests_total{route=\"/semaphores/{name}\",method=\"GET\",status=\"200\"} 3\n"
        );
        let anonymous = without_unreadable_gauges(PAGE, |_| false);
        assert!(!anonymous.contains("semaphore=\""), "{anonymous}");
        assert!(anonymous.contains("permitd_waiters 0\n"), "{anonymous}");
        assert_eq!(without_unreadable_gauges(PAGE, |_| true), PAGE);
    }

    #[test]
    fn a_gauge_without_a_semaphore_label_is_dropped() {
        let page = "permitd_semaphore_held{other=\"x\"} 1\n\
            permitd_semaphore_held{other_semaphore=\"x\"} 1\n\
            permitd_semaphore_held{other=\"x\",semaphore=\"a\"} 3\n\
            permitd_semaphore_held 2\n";
        assert_eq!(
            without_unreadable_gauges(page, |_| true),
            "permitd_semaphore_held{other=\"x\",semaphore=\"a\"} 3\npermitd_semaphore_held 2\n"
        );
    }
}
