//! Log output: one `tracing` subscriber, text or JSON, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Defaults to `info` for permitd and `warn`
/// for its dependencies when `RUST_LOG` is unset.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("permitd=info,tower_http=warn,warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Seconds buckets for waits and handoffs: fine below a millisecond, where a
/// healthy handoff lands, and up to the longest allowed wait.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use. One per
/// process (the `metrics` facade has one global recorder), so several apps
/// in one test process share it.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    METRICS.get_or_init(|| {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_histogram};
    describe_histogram!(
        "permitd_acquire_wait_seconds",
        Unit::Seconds,
        "Time a granted acquire waited for capacity (waiting acquires only)"
    );
    describe_histogram!(
        "permitd_handoff_seconds",
        Unit::Seconds,
        "From the change that freed units (release, expiry, limit raise) to their grant to \
         the next waiter, on the store's clock"
    );
}

/// Like [`init`], but writes to stderr and shows only warnings by default:
/// for commands whose stdout is their result (`permitd demo`).
pub fn init_for_terminal(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
