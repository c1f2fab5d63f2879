//! What a run reports: one result per request, and the totals with the
//! seed script's headline sentence.

use serde::Serialize;

/// One request of the fan-out. Times are milliseconds since the demo started.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(examples(json!({
    "index": 2, "status": 200, "wait_ms": 103.9, "start_ms": 104.0, "end_ms": 206.3
})))]
pub struct RequestResult {
    /// 1-based, in the order the tasks were started.
    #[schema(minimum = 1)]
    pub index: u32,
    /// The upstream's HTTP status, or `null` when there was no answer.
    #[schema(minimum = 100, maximum = 999)]
    pub status: Option<u16>,
    /// From the start of the demo until the permit was granted.
    #[schema(minimum = 0)]
    pub wait_ms: f64,
    /// When the call started (just after the permit was granted).
    #[schema(minimum = 0)]
    pub start_ms: f64,
    /// When the call ended (the permit is released right after).
    #[schema(minimum = 0)]
    pub end_ms: f64,
    /// Why there is no status: "timeout", "connect", "request", or "no permit
    /// before the deadline". Never the upstream's body.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

impl RequestResult {
    /// The seed script's log line, e.g. "Handled api request №4 with status code 200".
    pub fn line(&self) -> String {
        match (self.status, &self.error) {
            (Some(status), _) => {
                format!(
                    "Handled api request №{} with status code {status}",
                    self.index
                )
            }
            (None, error) => format!(
                "Handled api request №{} without a response ({})",
                self.index,
                error.as_deref().unwrap_or("failed")
            ),
        }
    }
}

/// The report of one run: `GET /demo` serves it as JSON or draws it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(examples(json!({
    "requests": 2, "limit": 1, "total_seconds": 0.2071, "ideal_seconds": 0.2,
    "max_concurrency": 1,
    "summary": "takes ~0.2071 seconds to handle 2 with 1 bounded limit",
    "url": "http://127.0.0.1:8080/demo/upstream?delay_ms=100", "store": "redis",
    "semaphore": "demo-c6f9067d-8418-4df8-b91d-f8988b274c2f",
    "results": [
        { "index": 1, "status": 200, "wait_ms": 0.8, "start_ms": 0.9, "end_ms": 103.7 },
        { "index": 2, "status": 200, "wait_ms": 103.9, "start_ms": 104.0, "end_ms": 206.3 }
    ]
})))]
pub struct DemoReport {
    /// How many requests were fanned out.
    #[schema(minimum = 1, maximum = 100)]
    pub requests: u32,
    /// The demo semaphore's limit.
    #[schema(minimum = 1, maximum = 100)]
    pub limit: u32,
    /// How long the whole run took.
    #[schema(minimum = 0)]
    pub total_seconds: f64,
    /// `ceil(requests / limit) × delay`: with the built-in upstream the delay
    /// asked for, with another URL the mean measured call time.
    pub ideal_seconds: f64,
    /// Most calls in flight at once, as observed; never above `limit`.
    pub max_concurrency: u32,
    /// The seed's headline, e.g. "takes ~0.5687 seconds to handle 5 with 1 bounded limit".
    pub summary: String,
    /// The URL that was called.
    pub url: String,
    /// `"memory"` or `"redis"`: where the demo semaphore lived.
    #[schema(pattern = "^(redis|memory)$")]
    pub store: &'static str,
    /// The demo semaphore's name; it no longer exists when the report is read.
    #[schema(pattern = "^demo-[0-9a-f-]{36}$")]
    pub semaphore: String,
    /// One entry per request, by `index`.
    pub results: Vec<RequestResult>,
}

/// The seed script's headline for a run of `requests` under `limit`.
pub fn headline(total_seconds: f64, requests: u32, limit: u32) -> String {
    format!("takes ~{total_seconds:.4} seconds to handle {requests} with {limit} bounded limit")
}

pub(super) fn mean_call_ms(results: &[RequestResult]) -> f64 {
    let calls: Vec<f64> = results
        .iter()
        .filter(|r| r.status.is_some())
        .map(|r| r.end_ms - r.start_ms)
        .collect();
    if calls.is_empty() {
        0.0
    } else {
        calls.iter().sum::<f64>() / calls.len() as f64
    }
}

pub(super) fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_is_the_seed_scripts() {
        let result = RequestResult {
            index: 4,
            status: Some(200),
            wait_ms: 0.0,
            start_ms: 0.0,
            end_ms: 1.0,
            error: None,
        };
        assert_eq!(result.line(), "Handled api request №4 with status code 200");
    }
}
