//! `GET /demo` (the fan-out scenario, as JSON or as a page) and
//! `GET /demo/upstream` (the built-in slow API it calls by default).
//!
//! Raw query values stop here: they become a `DemoRequest`, which enforces the
//! bounds and the outbound allow-list, or a 400 problem.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::AppState;
use super::extract::QueryParams;
use crate::demo::page::{self, FormValues, Origin};
use crate::demo::{self as scenario, DemoError, DemoRequest, MAX_CONCURRENT_RUNS, MAX_DELAY_MS};
use crate::error::ApiError;

/// The demo's routes, merged into the main router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/demo", get(run_demo))
        .route("/demo/upstream", get(demo_upstream))
}

/// Query of `GET /demo`. Values are taken as text so that an empty form field
/// means "default" and a bad number gets a message naming its field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoQuery {
    requests: Option<String>,
    limit: Option<String>,
    delay_ms: Option<String>,
    url: Option<String>,
}

const DEFAULT_REQUESTS: u64 = 5;
const DEFAULT_LIMIT: u64 = 1;
const DEFAULT_DELAY_MS: u64 = 100;

/// A whole number from a query value; absent or empty means `default`.
fn number(field: &str, raw: Option<&str>, default: u64) -> Result<u64, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(default),
        Some(text) => text.parse().map_err(|_| {
            ApiError::BadRequest(format!("{field} must be a whole number, not {text:?}"))
        }),
    }
}

/// Whether the client would rather have HTML: browsers say `text/html`
/// first; curl (`*/*`) and API clients get JSON.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// `GET /demo?requests=5&limit=1[&url=…][&delay_ms=100]`: runs the demo and
/// returns its report, as JSON or (for a browser) as a page.
pub async fn run_demo(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<DemoQuery>,
) -> Result<Response, ApiError> {
    let form = FormValues {
        requests: number("requests", query.requests.as_deref(), DEFAULT_REQUESTS)?,
        limit: number("limit", query.limit.as_deref(), DEFAULT_LIMIT)?,
        delay_ms: number("delay_ms", query.delay_ms.as_deref(), DEFAULT_DELAY_MS)?,
        url: query.url.unwrap_or_default().trim().to_owned(),
    };
    let request = DemoRequest::new(
        form.requests,
        form.limit,
        form.delay_ms,
        Some(&form.url),
        state.demo.allowed_hosts(),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(_slot) = state.demo.try_start_run() else {
        // The runs themselves are the semaphore here: all units held, retry.
        return Err(ApiError::NoCapacity {
            limit: MAX_CONCURRENT_RUNS as u32,
            held: MAX_CONCURRENT_RUNS as u32,
            retry_after_secs: 1,
        });
    };
    let report = scenario::run(Arc::clone(&state.store), &state.demo, &request, |_| {})
        .await
        .map_err(|DemoError::Store(e)| ApiError::Store(e))?;
    tracing::info!(
        requests = report.requests,
        limit = report.limit,
        total_seconds = report.total_seconds,
        max_concurrency = report.max_concurrency,
        "demo run"
    );
    if wants_html(&headers) {
        // Only used as text in the page, escaped like every other value.
        let origin = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .map(|host| Origin(format!("http://{host}")))
            .unwrap_or_default();
        let mut response = Html(page::render(&report, &form, &origin)).into_response();
        // The page is self-contained: forbid every script and every fetch.
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            ),
        );
        Ok(response)
    } else {
        Ok(axum::Json(report).into_response())
    }
}

/// Query of `GET /demo/upstream`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamQuery {
    delay_ms: Option<String>,
}

/// `GET /demo/upstream?delay_ms=100`: a slow API stand-in that answers 200
/// after `delay_ms` (0 … 5000).
pub async fn demo_upstream(
    QueryParams(query): QueryParams<UpstreamQuery>,
) -> Result<Response, ApiError> {
    let delay_ms = number("delay_ms", query.delay_ms.as_deref(), DEFAULT_DELAY_MS)?;
    if delay_ms > MAX_DELAY_MS {
        return Err(ApiError::BadRequest(format!(
            "delay_ms must be between 0 and {MAX_DELAY_MS}"
        )));
    }
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    Ok(axum::Json(serde_json::json!({ "delay_ms": delay_ms })).into_response())
}
