//! The metrics recorder keeps every histogram sample until its upkeep (or
//! a scrape) folds them into buckets: a server nobody scrapes must not grow
//! with the requests it serves. A test binary of its own, so that nothing
//! else allocates in this process while its memory is measured.

use std::time::Duration;

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
fn histogram_samples_are_folded_without_a_scrape() {
    permitd::telemetry::metrics();
    const ROUNDS: usize = 4;
    // About 6 MiB of kept samples a round (measured without the upkeep).
    const SAMPLES: usize = 400_000;
    let histogram = metrics::histogram!(
        permitd::telemetry::HTTP_DURATION,
        "route" => "/healthz",
        "method" => "GET"
    );
    let mut grown = Vec::new();
    let start = rss_kib();
    for _ in 0..ROUNDS {
        for i in 0..SAMPLES {
            histogram.record(i as f64 * 1e-7);
        }
        // Past one upkeep, so this round's samples are folded before the
        // next one is recorded.
        std::thread::sleep(permitd::telemetry::METRICS_UPKEEP + Duration::from_millis(300));
        grown.push(rss_kib().saturating_sub(start));
    }
    // Kept, the samples would add about 6 MiB a round; folded, the memory
    // of one round is reused by the next.
    let last = *grown.last().unwrap();
    assert!(
        last < 9 * 1024,
        "resident memory grew by {grown:?} KiB over {ROUNDS} rounds"
    );
}
