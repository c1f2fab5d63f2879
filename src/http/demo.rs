//! `GET /demo` (the fan-out scenario, as JSON or as a page) and
//! `GET /demo/upstream` (the built-in slow API it calls by default).
//!
//! Raw query values stop here: they become a `DemoRequest`, which enforces the
//! bounds and the outbound allow-list, or a 400 problem.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::extract::QueryParams;
use crate::demo::page::{self, FormValues, Origin};
use crate::demo::{
    self as scenario, DEFAULT_LIMIT, DemoError, DemoReport, DemoRequest, MAX_CONCURRENT_RUNS,
};
use crate::error::{ApiError, Problem, Unavailable};
use crate::telemetry::TraceContext;

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

/// The query of `GET /demo`, for the OpenAPI document only ([`DemoQuery`] is
/// what is parsed). The numbers' bounds and defaults are written in by
/// `openapi::document` from the server's configuration.
pub struct DemoParams;

impl IntoParams for DemoParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            number_param(
                "requests",
                "How many requests to fan out at once (1 … `--demo-max-requests`, default 5 \
                 or that maximum if lower). Empty means the default, as the page's form sends \
                 an empty field.",
            ),
            number_param(
                "limit",
                "The demo semaphore's limit: how many calls may be in flight at once \
                 (1 … 100, default 1; above `requests` nobody waits). Empty means the default.",
            ),
            number_param(
                "delay_ms",
                "How long the built-in upstream takes to answer, in milliseconds \
                 (0 … `--demo-max-delay-ms`, default 100 or that maximum if lower). With the \
                 built-in upstream, \
                 `ceil(requests / limit) × delay_ms` may be at most 30000. Empty means the \
                 default.",
            ),
            ParameterBuilder::new()
                .name("url")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(
                    "An absolute http(s) URL to call instead of the built-in upstream; its \
                     host must be listed in `--demo-allowed-hosts`. Empty means the built-in \
                     upstream. When the server lists no host (the default), only empty is \
                     accepted, and this document says so with `maxLength: 0`.",
                ))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
        ]
    }
}

/// The query of `GET /demo/upstream`, for the OpenAPI document only.
pub struct UpstreamParams;

impl IntoParams for UpstreamParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![number_param(
            "delay_ms",
            "How long to take before answering, in milliseconds \
             (0 … `--demo-max-delay-ms`, default 100 or that maximum if lower). Empty means \
             the default.",
        )]
    }
}

/// An optional query parameter holding a whole number, or empty for the
/// default: `openapi::document` fills in the integer's bounds and default.
fn number_param(name: &str, description: &str) -> Parameter {
    let schema = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(0))
                .description(Some("empty: the default")),
        );
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// The body of `GET /demo/upstream`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(examples(json!({ "delay_ms": 100 })))]
pub struct UpstreamReply {
    /// The delay that was asked for (and waited).
    #[schema(minimum = 0, maximum = 5000)]
    pub delay_ms: u64,
}

/// A whole number from a query value; absent or empty means `default`.
/// Only ASCII digits are a number: no sign, no spaces, no fraction.
fn number(field: &str, raw: Option<&str>, default: u64) -> Result<u64, ApiError> {
    match raw {
        None | Some("") => Ok(default),
        Some(text) => text
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| text.parse().ok())
            .flatten()
            .ok_or_else(|| {
                ApiError::BadRequest(format!("{field} must be a whole number, not {text:?}"))
            }),
    }
}

/// What `GET /demo` answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rendering {
    Json,
    Html,
}

/// Content negotiation between `application/json` and `text/html` by the
/// `Accept` header's media ranges and q-values (RFC 9110 §12.5.1): the most
/// specific matching range gives a type its quality, the higher quality
/// wins, and JSON wins ties (so curl's `*/*` and a missing header get JSON,
/// and a browser's `text/html,…,*/*;q=0.8` gets the page). When neither is
/// acceptable, JSON is sent anyway, as RFC 9110 allows.
fn rendering(headers: &HeaderMap) -> Rendering {
    let ranges: Vec<(String, f32)> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|range| {
            let mut parts = range.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            if media.is_empty() {
                return None;
            }
            let mut q = 1.0;
            for param in parts {
                if let Some((key, value)) = param.split_once('=')
                    && key.trim().eq_ignore_ascii_case("q")
                {
                    q = value.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0);
                }
            }
            Some((media, q))
        })
        .collect();
    if ranges.is_empty() {
        return Rendering::Json;
    }
    let quality = |kind: &str| -> f32 {
        let (main, _) = kind.split_once('/').expect("a media type");
        let wildcard = format!("{main}/*");
        [kind, wildcard.as_str(), "*/*"]
            .iter()
            .find_map(|candidate| {
                ranges
                    .iter()
                    .filter(|(media, _)| media == candidate)
                    .map(|(_, q)| *q)
                    .reduce(f32::max)
            })
            .unwrap_or(0.0)
    };
    let (json, html) = (quality("application/json"), quality("text/html"));
    if html > json {
        Rendering::Html
    } else {
        Rendering::Json
    }
}

/// `GET /demo?requests=5&limit=1[&url=…][&delay_ms=100]`: runs the demo and
/// returns its report, as JSON or (for a browser) as a page.
#[utoipa::path(
    get,
    path = "/demo",
    tag = "demo",
    operation_id = "run_demo",
    summary = "Run the fan-out demo",
    description = "Starts `requests` calls at once; each acquires a permit of a fresh demo \
        semaphore of `limit` through the same store as the API, calls the upstream (the built-in \
        `GET /demo/upstream?delay_ms=…`, or `url`) while holding it, and releases it. The \
        report says how long that took against the ideal `ceil(requests / limit) × delay`, and \
        how many calls were in flight at once. The answer is JSON, or an HTML page with the \
        run drawn as a timeline when `Accept` prefers `text/html` (JSON wins ties and is sent \
        when neither is acceptable). At most 4 runs are served at once per instance.",
    params(DemoParams),
    responses(
        (status = 200, description = "The run's report: JSON, or the page drawing it.",
         content(
            (DemoReport = "application/json"),
            (String = "text/html", example = "<!doctype html>…"),
         )),
        (status = 400, description = "A number that is not a whole number or is outside its \
            bound, a plan longer than 30 s with the built-in upstream, a `url` that is not an \
            absolute http(s) URL to an allowed host, or an unknown query parameter.",
         body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "4 demo runs are in progress on this instance; retry after \
            `Retry-After` seconds.",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn run_demo(
    State(state): State<AppState>,
    trace: Option<Extension<TraceContext>>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<DemoQuery>,
) -> Result<Response, ApiError> {
    let bounds = state.bounds.demo;
    let form = FormValues {
        requests: number(
            "requests",
            query.requests.as_deref(),
            bounds.default_requests(),
        )?,
        limit: number("limit", query.limit.as_deref(), DEFAULT_LIMIT)?,
        delay_ms: number(
            "delay_ms",
            query.delay_ms.as_deref(),
            bounds.default_delay_ms(),
        )?,
        url: query.url.unwrap_or_default(),
        bounds: state.bounds.demo,
    };
    let request = DemoRequest::new(
        form.requests,
        form.limit,
        form.delay_ms,
        Some(&form.url),
        state.demo.allowed_hosts(),
        &state.bounds.demo,
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let request = match trace {
        Some(Extension(trace)) => request.within_trace(trace),
        None => request,
    };
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
    if rendering(&headers) == Rendering::Html {
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
/// after `delay_ms` (0 … `--demo-max-delay-ms`).
#[utoipa::path(
    get,
    path = "/demo/upstream",
    tag = "demo",
    operation_id = "demo_upstream",
    summary = "The demo's built-in slow API",
    description = "Answers after `delay_ms` milliseconds: the upstream `GET /demo` calls \
        unless given a `url`, so the demo needs no network.",
    params(UpstreamParams),
    responses(
        (status = 200, description = "Answered after `delay_ms`.", body = UpstreamReply),
        (status = 400, description = "`delay_ms` is not a whole number or is above \
            `--demo-max-delay-ms`, or an unknown query parameter.",
         body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn demo_upstream(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<UpstreamQuery>,
) -> Result<Response, ApiError> {
    let bounds = state.bounds.demo;
    let delay_ms = number(
        "delay_ms",
        query.delay_ms.as_deref(),
        bounds.default_delay_ms(),
    )?;
    let delay_ms = bounds
        .delay_ms(delay_ms)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    Ok(axum::Json(UpstreamReply { delay_ms }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Rendering {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        rendering(&headers)
    }

    #[test]
    fn json_unless_html_is_preferred() {
        assert_eq!(rendering(&HeaderMap::new()), Rendering::Json);
        assert_eq!(accept("*/*"), Rendering::Json);
        assert_eq!(accept("application/json"), Rendering::Json);
        assert_eq!(accept("application/problem+json"), Rendering::Json);
        assert_eq!(accept("text/html"), Rendering::Html);
        assert_eq!(accept("text/*"), Rendering::Html);
        assert_eq!(
            accept("text/html,application/xhtml+xml,*/*;q=0.8"),
            Rendering::Html
        );
        assert_eq!(accept("text/html;q=0, */*"), Rendering::Json);
        assert_eq!(accept("text/html;q=0.5, application/json"), Rendering::Json);
        assert_eq!(accept("application/json;q=0.1, text/html"), Rendering::Html);
        assert_eq!(accept("image/png"), Rendering::Json);
    }

    #[test]
    fn numbers_are_digits_or_empty() {
        assert_eq!(number("n", None, 7).unwrap(), 7);
        assert_eq!(number("n", Some(""), 7).unwrap(), 7);
        assert_eq!(number("n", Some("42"), 7).unwrap(), 42);
        for bad in [
            "+1",
            "-1",
            " 1",
            "1 ",
            "1.0",
            "x",
            "99999999999999999999999",
        ] {
            assert!(number("n", Some(bad), 7).is_err(), "{bad:?}");
        }
    }
}
