//! permitd's load generator: closed-loop clients doing acquire -> hold ->
//! release against permitd or throttle-server, measured the same way for both.
//!
//! Each client owns one keep-alive connection and loops for the run. What it
//! measures, all on this process's monotonic clock:
//! - cycles per second (acquire + release round trips completed in the window);
//! - acquire wait: request sent -> grant received;
//! - handoff: a release sent -> the grant of that unit to the next client,
//!   pairing each grant with the oldest release not yet paired (units freed
//!   are handed on in order), so it includes both HTTP legs;
//! - holders: clients between "grant received" and "release sent", whose
//!   maximum must never exceed the limit;
//! - fairness: cycles per client against the median;
//! - server CPU: utime + stime of the given pids from /proc, per cycle;
//! - peak RSS of the given pids (`VmHWM`), so far in their life.
//!
//! For permitd it also reads the server's own handoff histogram from /metrics
//! (release -> grant on the store's clock, without the HTTP legs).
//!
//! Run: `cargo run --release --example loadgen -- --help`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Target {
    Permitd,
    Throttle,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    target: Target,
    /// Base URL of the server, e.g. http://127.0.0.1:8080
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "bench")]
    semaphore: String,
    /// Spread cycles over this many semaphores (`<semaphore>-0` …), each
    /// cycle the next one; 1: just `<semaphore>`. Holders are then counted
    /// over all of them.
    #[arg(long, default_value_t = 1)]
    semaphores: u64,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The semaphore's limit (permitd: created with it; throttle: configured).
    #[arg(long, default_value_t = 4)]
    limit: u32,
    /// How long a client holds its permit, in milliseconds (may be fractional).
    #[arg(long, default_value_t = 1.0)]
    hold_ms: f64,
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Pids whose CPU time is charged to the server (repeatable).
    #[arg(long)]
    pid: Vec<u32>,
    /// A name for this run in the output.
    #[arg(long, default_value = "run")]
    label: String,
    /// Ports of Redis nodes (on 127.0.0.1) whose script calls in the window
    /// are counted per cycle, from `INFO commandstats` (repeatable).
    #[arg(long)]
    redis_port: Vec<u16>,
}

#[derive(Default)]
struct ClientLog {
    cycles: u64,
    waits: Vec<Duration>,
    grants: Vec<Instant>,
    releases: Vec<Instant>,
}

struct Shared {
    /// Cycles started, for `--semaphores`.
    started: AtomicU64,
    holders: AtomicI64,
    max_holders: AtomicI64,
    stop: AtomicBool,
    errors: AtomicI64,
}

/// The most resident memory the process ever had (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at].as_secs_f64() * 1000.0
}

async fn permitd_cycle(
    client: &reqwest::Client,
    args: &Args,
    shared: &Shared,
    log: &mut ClientLog,
    in_window: impl Fn(Instant) -> bool,
) -> Result<(), String> {
    let name = if args.semaphores > 1 {
        let n = shared.started.fetch_add(1, Ordering::Relaxed) % args.semaphores;
        format!("{}-{n}", args.semaphore)
    } else {
        args.semaphore.clone()
    };
    let sent = Instant::now();
    let response = client
        .post(format!("{}/semaphores/{name}/permits", args.url))
        .json(&json!({ "limit": args.limit, "wait_ms": 60000, "ttl_ms": 60000 }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 201 {
        return Err(format!("acquire answered {}", response.status()));
    }
    let granted = Instant::now();
    let location = response.headers()["location"]
        .to_str()
        .map_err(|e| e.to_string())?
        .to_owned();
    let _ = response.bytes().await;
    hold_and_release(shared, args, log, sent, granted, &in_window, async {
        let released = client
            .delete(format!("{}{location}", args.url))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if released.status() != 204 {
            return Err(format!("release answered {}", released.status()));
        }
        Ok(())
    })
    .await
}

async fn throttle_cycle(
    client: &reqwest::Client,
    args: &Args,
    peer: u64,
    shared: &Shared,
    log: &mut ClientLog,
    in_window: impl Fn(Instant) -> bool,
) -> Result<(), String> {
    let sent = Instant::now();
    let url = format!("{}/peers/{peer}/{}", args.url, args.semaphore);
    loop {
        // throttle answers 202 while still pending; asking again keeps waiting.
        let response = client
            .put(format!("{url}?block_for=60s"))
            .json(&1)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        match status {
            200 => break,
            202 => continue,
            other => return Err(format!("acquire answered {other}")),
        }
    }
    let granted = Instant::now();
    hold_and_release(shared, args, log, sent, granted, &in_window, async {
        let released = client
            .delete(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !released.status().is_success() {
            return Err(format!("release answered {}", released.status()));
        }
        Ok(())
    })
    .await
}

/// Sleeps `duration`, to within about a tenth of a millisecond. Tokio's
/// timer counts whole milliseconds and rounds up, so its sleep of 1 ms held
/// 2.2 ms at the median (Node's `setTimeout(1)`, which the redis-semaphore
/// peer holds with, 1.2 ms): the contended loop's cycles, bound by the hold,
/// then measured the timer, not the server. A thread's sleep is precise.
async fn hold(duration: Duration) {
    tokio::task::spawn_blocking(move || std::thread::sleep(duration))
        .await
        .expect("the hold's thread");
}

async fn hold_and_release(
    shared: &Shared,
    args: &Args,
    log: &mut ClientLog,
    sent: Instant,
    granted: Instant,
    in_window: &impl Fn(Instant) -> bool,
    release: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    let now_holding = shared.holders.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_holders.fetch_max(now_holding, Ordering::SeqCst);
    if args.hold_ms > 0.0 {
        hold(Duration::from_secs_f64(args.hold_ms / 1000.0)).await;
    }
    shared.holders.fetch_sub(1, Ordering::SeqCst);
    let release_sent = Instant::now();
    release.await?;
    if in_window(sent) {
        log.cycles += 1;
        log.waits.push(granted - sent);
        log.grants.push(granted);
        log.releases.push(release_sent);
    }
    Ok(())
}

async fn new_throttle_peer(client: &reqwest::Client, url: &str) -> u64 {
    client
        .post(format!("{url}/new_peer"))
        .json(&json!({ "expires_in": "5m" }))
        .send()
        .await
        .expect("throttle answers")
        .json()
        .await
        .expect("a peer id")
}

/// Bucket counts of `permitd_handoff_seconds` from a /metrics page.
/// Script calls (FCALL, EVALSHA, EVAL and their read-only forms) the Redis
/// nodes on these ports have run, from `redis-cli info commandstats`; `None`
/// with no port or when one does not answer.
fn script_calls(ports: &[u16]) -> Option<u64> {
    if ports.is_empty() {
        return None;
    }
    let mut calls = 0;
    for port in ports {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "info", "commandstats"])
            .output()
            .ok()?;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            if matches!(
                name,
                "fcall" | "fcall_ro" | "evalsha" | "evalsha_ro" | "eval" | "eval_ro"
            ) {
                let n = fields
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()?;
                calls += n;
            }
        }
    }
    Some(calls)
}

async fn handoff_buckets(url: &str) -> Vec<(f64, f64)> {
    let Ok(response) = reqwest::get(format!("{url}/metrics")).await else {
        return Vec::new();
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("permitd_handoff_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

/// The q-quantile in ms from the difference of two bucket snapshots, with
/// linear interpolation inside the bucket.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let old = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, n - old)
        })
        .collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = total * q;
    let mut lower = (0.0, 0.0);
    for &(le, cumulative) in &deltas {
        if cumulative >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let span = cumulative - lower.1;
            let fraction = if span > 0.0 {
                (rank - lower.1) / span
            } else {
                1.0
            };
            return Some((lower.0 + (le - lower.0) * fraction) * 1000.0);
        }
        lower = (le, cumulative);
    }
    None
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let shared = Arc::new(Shared {
        started: AtomicU64::new(0),
        holders: AtomicI64::new(0),
        max_holders: AtomicI64::new(0),
        stop: AtomicBool::new(false),
        errors: AtomicI64::new(0),
    });
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup_s);
    let window_end = window_start + Duration::from_secs_f64(args.duration_s);

    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (args, shared) = (args.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap();
            let peer = match args.target {
                Target::Throttle => new_throttle_peer(&client, &args.url).await,
                Target::Permitd => 0,
            };
            let mut log = ClientLog::default();
            let in_window = |t: Instant| t >= window_start && t < window_end;
            while !shared.stop.load(Ordering::Relaxed) {
                let cycle = match args.target {
                    Target::Permitd => {
                        permitd_cycle(&client, &args, &shared, &mut log, in_window).await
                    }
                    Target::Throttle => {
                        throttle_cycle(&client, &args, peer, &shared, &mut log, in_window).await
                    }
                };
                if let Err(e) = cycle {
                    if shared.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("loadgen: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            log
        }));
    }

    tokio::time::sleep_until(window_start.into()).await;
    let cpu_before: Vec<Option<u64>> = args.pid.iter().map(|&p| cpu_ticks(p)).collect();
    let buckets_before = handoff_buckets(&args.url).await;
    let scripts_before = script_calls(&args.redis_port);
    tokio::time::sleep_until(window_end.into()).await;
    let scripts_after = script_calls(&args.redis_port);
    let cpu_after: Vec<Option<u64>> = args.pid.iter().map(|&p| cpu_ticks(p)).collect();
    let buckets_after = handoff_buckets(&args.url).await;
    shared.stop.store(true, Ordering::Relaxed);

    let mut logs = Vec::new();
    for task in tasks {
        logs.push(task.await.unwrap());
    }
    let cycles: u64 = logs.iter().map(|l| l.cycles).sum();
    let seconds = args.duration_s;
    let mut waits: Vec<Duration> = logs.iter().flat_map(|l| l.waits.iter().copied()).collect();
    waits.sort();
    // How long the clients really held (the timer's granularity lengthens
    // a hold of 1 ms): the contended loop's cycles depend on it.
    let mut holds: Vec<Duration> = logs
        .iter()
        .flat_map(|l| l.grants.iter().zip(&l.releases).map(|(g, r)| *r - *g))
        .collect();
    holds.sort();
    let mut grants: Vec<Instant> = logs.iter().flat_map(|l| l.grants.iter().copied()).collect();
    let mut releases: Vec<Instant> = logs
        .iter()
        .flat_map(|l| l.releases.iter().copied())
        .collect();
    grants.sort();
    releases.sort();
    let mut handoffs = Vec::new();
    let mut pending = std::collections::VecDeque::new();
    let mut next_release = 0;
    for &grant in &grants {
        while next_release < releases.len() && releases[next_release] < grant {
            pending.push_back(releases[next_release]);
            next_release += 1;
        }
        if let Some(freed) = pending.pop_front() {
            handoffs.push(grant - freed);
        }
    }
    handoffs.sort();
    let mut per_client: Vec<u64> = logs.iter().map(|l| l.cycles).collect();
    per_client.sort();
    let median = per_client[per_client.len() / 2] as f64;
    let spread = per_client
        .iter()
        .map(|&c| ((c as f64 - median) / median.max(1.0)).abs())
        .fold(0.0, f64::max);
    let ticks = ticks_per_second() as f64;
    let cpu_us_per_cycle: Vec<Value> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| match (b, a) {
            (Some(b), Some(a)) if cycles > 0 => {
                json!(((a - b) as f64 / ticks * 1e6 / cycles as f64).round())
            }
            _ => Value::Null,
        })
        .collect();
    let server_handoff = |q| bucket_quantile(&buckets_before, &buckets_after, q);
    let report = json!({
        "label": args.label,
        "clients": args.clients,
        "limit": args.limit,
        "hold_ms": args.hold_ms,
        "cycles": cycles,
        "cycles_per_s": (cycles as f64 / seconds).round(),
        "hold_p50_ms": quantile(&holds, 0.5),
        "wait_p50_ms": quantile(&waits, 0.5),
        "wait_p99_ms": quantile(&waits, 0.99),
        "wait_max_ms": quantile(&waits, 1.0),
        "handoff_p50_ms": quantile(&handoffs, 0.5),
        "handoff_p99_ms": quantile(&handoffs, 0.99),
        "server_handoff_p50_ms": server_handoff(0.5),
        "server_handoff_p99_ms": server_handoff(0.99),
        "max_holders": shared.max_holders.load(Ordering::SeqCst),
        "client_cycles_min": per_client.first(),
        "client_cycles_median": median,
        "client_cycles_max": per_client.last(),
        "client_spread_vs_median": (spread * 1000.0).round() / 1000.0,
        "server_cpu_us_per_cycle": cpu_us_per_cycle,
        "script_calls_per_cycle": scripts_before.zip(scripts_after).and_then(|(b, a)| {
            (cycles > 0).then(|| ((a - b) as f64 / cycles as f64 * 100.0).round() / 100.0)
        }),
        "peak_rss_mib": args.pid.iter().map(|&p| json!(peak_rss_mib(p))).collect::<Vec<_>>(),
        "errors": shared.errors.load(Ordering::Relaxed),
    });
    println!("{report}");
}
