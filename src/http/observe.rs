//! What each request leaves behind for operators: a request id, a `tracing`
//! span, one access log line, and the HTTP metrics.
//!
//! - **Request id**: taken from the client's `x-request-id` when it is a
//!   sensible one (1–128 visible ASCII characters), generated (a UUID)
//!   otherwise, and echoed on the response ([`identify`]).
//! - **Trace context**: a valid W3C `traceparent` header names the request's
//!   trace; without one (or with an invalid one, which is ignored) a new
//!   trace id is made. It is in the request's extensions for calls made on
//!   its behalf (the demo's), and `trace_id` in its span.
//! - **Span** `request` per request, with `method`, `route` (the matched route
//!   template, never the raw path), `request_id`, `trace_id`, and
//!   `semaphore`, which the handler fills in once it has parsed the name.
//!   Every log line of the request carries them.
//! - **Access log**: one `request finished` line at the end, with status and
//!   latency; target `permitd::access`, so it can be filtered on its own.
//!   Probes and scrapes log at debug, server errors at warn, the rest at info.
//! - **Metrics**: requests by route, method and status, and their duration,
//!   labelled like the span (never with a semaphore name or permit id).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, Response};
use axum::middleware::Next;
use tracing::Span;

use crate::telemetry::{self, TraceContext};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route label of unmatched requests (404 fallback): a fixed word, so
/// scanners probing random paths add no series.
const UNMATCHED: &str = "unmatched";

pub(super) fn route_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
}

/// A label for the method: the client chooses it, so anything unusual is
/// folded into `other` to keep the number of series bounded.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn usable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic)
}

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Middleware, outermost, before the span is made: settles the request's id
/// and trace. The id is the client's `x-request-id` when every one it sent
/// is usable (else a fresh UUID, rather than a client's junk copied into
/// every log line), and it is echoed on the response; the trace is the valid
/// `traceparent`'s, else a new one, kept in the request's extensions. One
/// layer for both, since every layer costs a boxed future per request.
pub async fn identify(mut request: Request, next: Next) -> Response<Body> {
    let headers = request.headers_mut();
    if headers
        .get_all(&X_REQUEST_ID)
        .iter()
        .any(|value| !usable_request_id(value))
    {
        headers.remove(&X_REQUEST_ID);
    }
    let request_id = if let Some(id) = headers.get(&X_REQUEST_ID) {
        id.clone()
    } else {
        let mut text = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        let id = HeaderValue::from_str(id).expect("a UUID is a header value");
        headers.insert(X_REQUEST_ID.clone(), id.clone());
        id
    };
    let mut traceparents = headers.get_all(&TRACEPARENT).iter();
    // Two traceparent headers are as invalid as a malformed one.
    let trace = match (traceparents.next(), traceparents.next()) {
        (Some(value), None) => value.to_str().ok().and_then(TraceContext::parse),
        _ => None,
    };
    request
        .extensions_mut()
        .insert(trace.unwrap_or_else(TraceContext::fresh));
    let mut response = next.run(request).await;
    if !response.headers().contains_key(&X_REQUEST_ID) {
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id);
    }
    response
}

/// The span of one request (see the module docs for its fields).
pub fn request_span<B>(request: &axum::http::Request<B>) -> Span {
    let request_id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let trace_id = request
        .extensions()
        .get::<TraceContext>()
        .map(TraceContext::trace_id)
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = route_of(request),
        request_id,
        trace_id,
        semaphore = tracing::field::Empty,
    )
}

/// Records the semaphore name in the current request's span, so every later
/// log line of the request names it (and none needs a label for it).
pub fn record_semaphore(name: &str) {
    Span::current().record("semaphore", name);
}

/// The access log line, written when the response is ready.
/// It is emitted inside the request's span, so it carries the request id.
pub fn log_response<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    let status = response.status().as_u16();
    // Whole microseconds, so the number reads as 1.178, not 1.1784729999.
    let latency_ms = latency.as_micros() as f64 / 1000.0;
    let quiet = response.extensions().get::<QuietRoute>().is_some();
    if response.status().is_server_error() {
        tracing::warn!(target: "permitd::access", status, latency_ms, "request finished");
    } else if quiet {
        tracing::debug!(target: "permitd::access", status, latency_ms, "request finished");
    } else {
        tracing::info!(target: "permitd::access", status, latency_ms, "request finished");
    }
}

/// Marks a response whose access line is debug only: probes and scrapes
/// arrive every few seconds and would drown the lines that matter.
#[derive(Clone, Copy)]
struct QuietRoute;

/// One request's HTTP metrics: counted and timed from [`Measured::start`] to
/// [`Measured::finish`], labelled by matched route, method and status.
pub struct Measured {
    route: String,
    method: &'static str,
    started: Instant,
}

impl Measured {
    pub fn start(request: &Request) -> Self {
        Self {
            route: route_of(request).to_owned(),
            method: method_label(request.method()),
            started: Instant::now(),
        }
    }

    /// Records the answer, and marks the quiet routes' for the access log.
    pub fn finish(self, mut response: Response<Body>) -> Response<Body> {
        let Self {
            route,
            method,
            started,
        } = self;
        let status = response.status().as_u16().to_string();
        metrics::histogram!(telemetry::HTTP_DURATION, "route" => route.clone(), "method" => method)
            .record(started.elapsed().as_secs_f64());
        if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") {
            response.extensions_mut().insert(QuietRoute);
        }
        metrics::counter!(
            telemetry::HTTP_REQUESTS,
            "route" => route,
            "method" => method,
            "status" => status
        )
        .increment(1);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_must_be_short_visible_text() {
        assert!(usable_request_id(&HeaderValue::from_static("abc-123")));
        assert!(usable_request_id(&HeaderValue::from_static(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )));
        assert!(!usable_request_id(&HeaderValue::from_static("")));
        assert!(!usable_request_id(&HeaderValue::from_static("has space")));
        assert!(!usable_request_id(
            &HeaderValue::from_str(&"x".repeat(129)).unwrap()
        ));
    }

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(
            method_label(&Method::from_bytes(b"PROPFIND").unwrap()),
            "other"
        );
    }
}
