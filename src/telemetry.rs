//! What permitd tells its operators: log output (one `tracing` subscriber,
//! text or JSON, filtered by `RUST_LOG`), the Prometheus metrics, whose
//! names are the constants below and whose descriptions live in `describe`,
//! and the W3C trace context ([`TraceContext`]) a request's log lines carry
//! and the demo's outbound calls pass on.
//!
//! Metrics are low-cardinality on purpose: labels are matched routes, methods,
//! statuses, outcomes and script names, never a semaphore name or a permit id
//! (those belong in log spans), so a busy instance cannot grow its metrics
//! page without bound.

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the global subscriber. Defaults to `info` for permitd and `warn`
/// for its dependencies when `RUST_LOG` is unset.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("permitd=info,tower_http=warn,warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(&std::io::stdout()));
    match format {
        LogFormat::Pretty => builder.init(),
        // The request's span (method, route, request id, semaphore) once, as
        // `span`, rather than again in a list of every enclosing span.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .init(),
    }
}

/// Whether log lines written to `stream` get colours: only on a terminal (in
/// a pipe, a file or a log collector the escape codes are noise around every
/// field), and never when NO_COLOR is set to anything (no-color.org).
fn colour(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Seconds buckets for waits and handoffs: fine below a millisecond, where a
/// healthy handoff lands, and up to the longest allowed wait.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Requests served, by `route` (the matched route template, or `unmatched`),
/// `method` and `status`.
pub const HTTP_REQUESTS: &str = "permitd_http_requests_total";
/// Histogram: how long granted waiting acquires waited.
pub const ACQUIRE_WAIT: &str = "permitd_acquire_wait_seconds";
/// Histogram: release (or expiry, limit raise) to grant to the next waiter.
pub const HANDOFF: &str = "permitd_handoff_seconds";
/// Time to produce a response, by `route` and `method`.
pub const HTTP_DURATION: &str = "permitd_http_request_duration_seconds";
/// Acquire answers, by `outcome`.
pub const ACQUIRES: &str = "permitd_acquires_total";
/// Permits removed because their lease ran out: a holder crashed or forgot.
pub const LEASE_EXPIRIES: &str = "permitd_lease_expiries_total";
/// Refreshes, by `outcome` (`refreshed`, `gone`).
pub const REFRESHES: &str = "permitd_refreshes_total";
/// Releases, by `outcome` (`released`, `gone`).
pub const RELEASES: &str = "permitd_releases_total";
/// Acquires waiting for capacity in this instance now.
pub const WAITERS: &str = "permitd_waiters";
/// One Redis call (pool checkout and round trip), by `call`.
pub const REDIS_DURATION: &str = "permitd_redis_call_duration_seconds";
/// Failed Redis calls, by `call` and `kind` (`timeout`, `unavailable`, `internal`).
pub const REDIS_ERRORS: &str = "permitd_redis_errors_total";
/// Redis pool gauges: the bound, open connections, checked out, and callers
/// waiting for one.
pub const REDIS_POOL_MAX: &str = "permitd_redis_pool_max_connections";
pub const REDIS_POOL_OPEN: &str = "permitd_redis_pool_connections";
pub const REDIS_POOL_IN_USE: &str = "permitd_redis_pool_in_use_connections";
pub const REDIS_POOL_WAITING: &str = "permitd_redis_pool_waiting_calls";
/// How many Redis nodes this instance is subscribed to its wake channel on:
/// 1 (every cluster node on a cluster) while subscribed, 0 while not
/// (waiters then fall back to re-checking every `--wait-recheck-ms`).
pub const REDIS_WAKE_SUBSCRIBED: &str = "permitd_redis_wake_subscribed";
/// How many store settings to change (Redis `maxmemory-policy`, …) the last
/// look found, at start and at each `/readyz`: what its `warnings` list.
pub const STORE_WARNINGS: &str = "permitd_store_warnings";
/// Always 1, labelled with the `version`: shows what runs where.
pub const BUILD_INFO: &str = "permitd_build_info";
/// Per-semaphore gauges, labelled `semaphore`, for the names listed in
/// `--metrics-semaphores` only (so the label set stays the operator's
/// choice): the limit, units held and acquires waiting, read at scrape time.
pub const SEMAPHORE_LIMIT: &str = "permitd_semaphore_limit";
pub const SEMAPHORE_HELD: &str = "permitd_semaphore_held";
pub const SEMAPHORE_WAITING: &str = "permitd_semaphore_waiting";

/// Every `outcome` of [`ACQUIRES`], [`REFRESHES`] and [`RELEASES`]: each
/// series is exported at 0 from the start, so `increase()` sees the first
/// event and an alert on a series is never silent for lack of it.
pub const ACQUIRE_OUTCOMES: &[&str] = &[
    "granted",
    "replayed",
    "unavailable",
    "timed_out",
    "not_found",
    "conflict",
    "too_large",
    "idempotency_mismatch",
    "idempotency_in_flight",
    "permit_ended",
    "invalid",
    "too_many_waiters",
    "error",
];
pub const REFRESH_OUTCOMES: &[&str] = &["refreshed", "gone"];
pub const RELEASE_OUTCOMES: &[&str] = &["released", "gone"];
/// The `call` labels of the Redis metrics (script names, `ping`, `info`)
/// and the `kind` labels of [`REDIS_ERRORS`], exported at 0 on the Redis
/// store from the start.
pub const REDIS_CALLS: &[&str] = &[
    "scan",
    "acquire",
    "release",
    "refresh",
    "permit",
    "status",
    "set_limit",
    "delete",
    "leave",
    "ping",
    "info",
];
pub const REDIS_ERROR_KINDS: &[&str] = &["timeout", "unavailable", "internal"];

static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// How often the recorder's histogram samples are folded into their
/// buckets. The recorder keeps every sample until then (or until a scrape),
/// so without this a server nobody scrapes grew by 8 bytes per sample for
/// ever: 16 bytes per request, about 7 MiB in the uncontended benchmark's
/// 8 seconds. Once a second bounds it at a second's samples.
pub const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// The process-wide Prometheus recorder, installed on first use, with the
/// thread that keeps it (see [`METRICS_UPKEEP`]). One per process (the
/// `metrics` facade has one global recorder), so several apps in one test
/// process share it.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    METRICS.get_or_init(|| {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        // A thread of its own, not a task: the recorder may be installed
        // before (or without) a runtime, and it must be kept whatever runs.
        let kept = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    kept.run_upkeep();
                }
            })
            .expect("a thread for the metrics upkeep");
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests answered, by matched route template, method and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time from request to response headers, by matched route template and method \
         (a waiting acquire includes its wait)"
    );
    describe_counter!(
        ACQUIRES,
        Unit::Count,
        "Acquire answers by outcome: granted, replayed, unavailable (try-once, no capacity), \
         timed_out (waited, no capacity), not_found, conflict, too_large, \
         idempotency_mismatch, invalid (400 before the store), error (store failure or \
         request timeout)"
    );
    describe_counter!(
        LEASE_EXPIRIES,
        Unit::Count,
        "Permits removed because their lease ran out without a release: a holder crashed, \
         hung or forgot to release"
    );
    describe_counter!(
        REFRESHES,
        Unit::Count,
        "Lease refreshes by outcome: refreshed, gone (unknown or already expired)"
    );
    describe_counter!(
        RELEASES,
        Unit::Count,
        "Releases by outcome: released, gone (unknown or already expired)"
    );
    describe_gauge!(
        WAITERS,
        Unit::Count,
        "Acquires waiting for capacity in this instance (long polls, including the demo's)"
    );
    describe_histogram!(
        REDIS_DURATION,
        Unit::Seconds,
        "One Redis call, pool checkout included, by call (script name or ping)"
    );
    describe_counter!(
        REDIS_ERRORS,
        Unit::Count,
        "Failed Redis calls by call and kind: timeout, unavailable (connection), internal \
         (script or reply error)"
    );
    describe_gauge!(
        REDIS_POOL_MAX,
        Unit::Count,
        "Most Redis connections the pool may open (--redis-pool-size)"
    );
    describe_gauge!(
        REDIS_POOL_OPEN,
        Unit::Count,
        "Redis connections open in the pool, in use or idle"
    );
    describe_gauge!(
        REDIS_POOL_IN_USE,
        Unit::Count,
        "Redis connections checked out of the pool right now (held by calls that wait for \
         replicas; the other calls share connections)"
    );
    describe_gauge!(
        REDIS_POOL_WAITING,
        Unit::Count,
        "Calls waiting for a Redis connection from the pool"
    );
    describe_gauge!(
        REDIS_WAKE_SUBSCRIBED,
        "Redis nodes this instance is subscribed to its wake channel on (1; every node of a \
         cluster); 0 while none, when waiting acquires are only served by their periodic \
         re-check"
    );
    describe_gauge!(
        STORE_WARNINGS,
        "Store settings to change (such as a Redis maxmemory-policy that may evict \
         semaphores) found at start and at the last /readyz: what its warnings list"
    );
    metrics::gauge!(STORE_WARNINGS).set(0.0);
    describe_gauge!(BUILD_INFO, "Always 1; the version label says what runs");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Present from the start, so rate() over it works before the first expiry.
    metrics::counter!(LEASE_EXPIRIES).increment(0);
    metrics::gauge!(WAITERS).increment(0.0);
    describe_histogram!(
        ACQUIRE_WAIT,
        Unit::Seconds,
        "Time a granted acquire waited for capacity (waiting acquires only)"
    );
    describe_histogram!(
        HANDOFF,
        Unit::Seconds,
        "From the change that freed units (release, expiry, limit raise) to their grant to \
         the next waiter, on the store's clock: 0 when that change handed the waiter its \
         permit"
    );
    describe_gauge!(
        SEMAPHORE_LIMIT,
        "The limit of each semaphore listed in --metrics-semaphores (0 while it does not exist)"
    );
    describe_gauge!(
        SEMAPHORE_HELD,
        Unit::Count,
        "Units held of each semaphore listed in --metrics-semaphores"
    );
    describe_gauge!(
        SEMAPHORE_WAITING,
        Unit::Count,
        "Acquires waiting (on every instance) for each semaphore listed in --metrics-semaphores"
    );
    // Every series with a closed label set is there from the first scrape.
    for (name, outcomes) in [
        (ACQUIRES, ACQUIRE_OUTCOMES),
        (REFRESHES, REFRESH_OUTCOMES),
        (RELEASES, RELEASE_OUTCOMES),
    ] {
        for outcome in outcomes {
            metrics::counter!(name, "outcome" => *outcome).increment(0);
        }
    }
    // A registered histogram is rendered with empty buckets until it records.
    let _ = metrics::histogram!(ACQUIRE_WAIT);
    let _ = metrics::histogram!(HANDOFF);
}

/// The Redis store's series, at 0 until they count: registered when a
/// Redis store is built, before it first connects, so
/// `permitd_redis_wake_subscribed` reads 0 (not absent) while Redis is down
/// at start.
pub fn register_redis_series() {
    metrics::gauge!(REDIS_WAKE_SUBSCRIBED).increment(0.0);
    for call in REDIS_CALLS {
        let _ = metrics::histogram!(REDIS_DURATION, "call" => *call);
        for kind in REDIS_ERROR_KINDS {
            metrics::counter!(REDIS_ERRORS, "call" => *call, "kind" => *kind).increment(0);
        }
    }
}

/// Like [`init`], but writes to stderr and shows only warnings by default:
/// for commands whose stdout is their result (`permitd demo`).
pub fn init_for_terminal(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// A W3C trace context (`traceparent`, version 00): the trace a request
/// belongs to, taken from its `traceparent` header when that is valid, or a
/// new one otherwise, so every request's log lines carry a trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    flags: u8,
}

impl TraceContext {
    /// Reads `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`
    /// (lowercase hex, ids not all zero). Another version is read by the
    /// same first four fields, as the specification asks; version `ff`,
    /// or anything malformed, is `None`.
    pub fn parse(header: &str) -> Option<Self> {
        let mut fields = header.trim().split('-');
        let version = fields.next()?;
        let (trace_id, parent_id, flags) = (fields.next()?, fields.next()?, fields.next()?);
        let hex = |text: &str, len: usize| {
            text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        // Version 00 has exactly four fields; later versions may add more.
        let extra = fields.next().is_some();
        if !hex(version, 2) || version == "ff" || (version == "00" && extra) {
            return None;
        }
        if !hex(trace_id, 32) || !hex(parent_id, 16) || !hex(flags, 2) {
            return None;
        }
        let zero = |text: &str| text.bytes().all(|b| b == b'0');
        if zero(trace_id) || zero(parent_id) {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self {
            trace_id: id,
            flags: u8::from_str_radix(flags, 16).ok()? & 0x01,
        })
    }

    /// A new trace, not sampled: for a request that brought none.
    pub fn fresh() -> Self {
        Self {
            trace_id: *uuid::Uuid::new_v4().as_bytes(),
            flags: 0,
        }
    }

    /// The trace id as 32 lowercase hex digits, as logged.
    pub fn trace_id(&self) -> String {
        // One allocation: it is made for every request's span.
        uuid::Uuid::from_bytes(self.trace_id).simple().to_string()
    }

    /// The `traceparent` of a call made on behalf of this trace: the same
    /// trace id and flags, and a new parent id naming that call.
    pub fn child(&self) -> String {
        let parent = uuid::Uuid::new_v4().as_u64_pair().0;
        format!("00-{}-{parent:016x}-{:02x}", self.trace_id(), self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read() {
        let trace = TraceContext::parse(VALID).unwrap();
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // A later version is read by its first four fields.
        assert!(TraceContext::parse(&format!("01{}-more", &VALID[2..])).is_some());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_parent() {
        let trace = TraceContext::parse(VALID).unwrap();
        let child = trace.child();
        let again = TraceContext::parse(&child).unwrap();
        assert_eq!(again, trace);
        assert_ne!(&child[36..52], &VALID[36..52], "a new parent id");
        assert!(child.ends_with("-01"), "{child}");
        let fresh = TraceContext::fresh();
        assert_eq!(TraceContext::parse(&fresh.child()), Some(fresh));
    }
}
