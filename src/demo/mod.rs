//! The fan-out demo: the scenario permitd grew out of, as a library function.
//!
//! `requests` tasks start at once. Each acquires a permit of a fresh demo
//! semaphore through the [`SemaphoreStore`] trait (so through Redis whenever
//! the API uses Redis), waiting in line as `POST …/permits` with `wait_ms`
//! does ([`crate::waiting`]), calls an upstream URL while holding it, and
//! releases it; the semaphore is deleted at the end. The report says how long that took
//! against the ideal `ceil(requests / limit) × delay`, and how many calls were
//! in flight at once: measured with a counter around the calls, never derived
//! from the limit.
//!
//! This module owns the scenario, its bounds and its outbound policy (which
//! URLs may be called, with which timeouts); [`page`] draws a report as HTML
//! with an SVG timeline, [`cli`] runs it from the terminal, and
//! `crate::http::demo` serves it as `GET /demo`.

pub mod cli;
pub mod page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::config::Secret;
use crate::semaphore::{
    AcquireOutcome, AcquireRequest, Count, Holder, Limit, SemaphoreName, Ttl, ValueError, WaitTime,
};
use crate::store::{SemaphoreStore, StoreError};
use crate::waiting::{self, WaitSettings};

/// Most requests one demo may fan out: enough to see the effect of a limit,
/// few enough that `/demo` cannot be used to flood an upstream. The default of
/// `--demo-max-requests`, which may lower it but not raise it.
pub const MAX_REQUESTS: u64 = 100;
/// Highest demo limit (a limit above `requests` is allowed: nobody waits).
pub const MAX_LIMIT: u64 = 100;
/// Slowest the built-in upstream may be asked to be: the default of
/// `--demo-max-delay-ms`, which may lower it but not raise it.
pub const MAX_DELAY_MS: u64 = 5_000;
/// `requests`, `limit` and `delay_ms` when a demo request leaves them out.
pub const DEFAULT_REQUESTS: u64 = 5;
pub const DEFAULT_LIMIT: u64 = 1;
pub const DEFAULT_DELAY_MS: u64 = 100;

/// The demo's configured bounds (`--demo-max-requests`,
/// `--demo-max-delay-ms`): enforced by [`DemoRequest::new`] and the built-in
/// upstream, and stated in the served OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoBounds {
    /// Most requests one demo may fan out, 1 … [`MAX_REQUESTS`].
    pub max_requests: u64,
    /// Slowest the built-in upstream may be asked to be, 0 … [`MAX_DELAY_MS`].
    pub max_delay_ms: u64,
    /// Whether `url` may name any host at all (`--demo-allowed-hosts` lists
    /// one); when not, only the built-in upstream can be called.
    pub urls_allowed: bool,
}

impl Default for DemoBounds {
    fn default() -> Self {
        Self {
            max_requests: MAX_REQUESTS,
            max_delay_ms: MAX_DELAY_MS,
            urls_allowed: false,
        }
    }
}

impl DemoBounds {
    /// # Errors
    /// When a bound is above its hard ceiling, or `max_requests` is 0.
    pub fn new(max_requests: u64, max_delay_ms: u64) -> Result<Self, ValueError> {
        if !(1..=MAX_REQUESTS).contains(&max_requests) {
            return Err(ValueError(format!(
                "--demo-max-requests must be between 1 and {MAX_REQUESTS}"
            )));
        }
        if max_delay_ms > MAX_DELAY_MS {
            return Err(ValueError(format!(
                "--demo-max-delay-ms must be between 0 and {MAX_DELAY_MS}"
            )));
        }
        Ok(Self {
            max_requests,
            max_delay_ms,
            urls_allowed: false,
        })
    }

    /// `requests` when a request leaves it out: [`DEFAULT_REQUESTS`], or the
    /// configured maximum when that is lower.
    pub fn default_requests(&self) -> u64 {
        DEFAULT_REQUESTS.min(self.max_requests)
    }

    /// `delay_ms` when a request leaves it out: [`DEFAULT_DELAY_MS`], or the
    /// configured maximum when that is lower.
    pub fn default_delay_ms(&self) -> u64 {
        DEFAULT_DELAY_MS.min(self.max_delay_ms)
    }

    /// A `delay_ms` for the built-in upstream, checked against these bounds.
    ///
    /// # Errors
    /// When it is above `max_delay_ms`.
    pub fn delay_ms(&self, delay_ms: u64) -> Result<u64, ValueError> {
        if delay_ms > self.max_delay_ms {
            return Err(ValueError(format!(
                "delay_ms must be between 0 and {}",
                self.max_delay_ms
            )));
        }
        Ok(delay_ms)
    }
}
/// Longest a demo with the built-in upstream may be planned to take
/// (`ceil(requests / limit) × delay_ms`); beyond it the request is refused
/// rather than holding a connection open for minutes.
pub const MAX_IDEAL_MS: u64 = 30_000;
/// Hard end of one demo: a request without a permit by then gives up.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Bound on one outbound call, body included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The demo's permits must outlive the slowest call, or a second task could
/// be granted the unit while the first is still calling. They are released
/// explicitly; the lease only matters if this process dies mid-demo.
const PERMIT_TTL: Duration = Duration::from_secs(40);
/// Pause before asking again when a wait ended without a permit (the wait is
/// capped by `--max-wait-ms`, which may be shorter than the demo's deadline).
const RETRY_PAUSE: Duration = Duration::from_millis(3);
/// Most demo runs one process serves at once. Each run may make up to
/// [`MAX_REQUESTS`] outbound calls; without a cap, many concurrent `/demo`
/// requests would multiply that without bound.
pub const MAX_CONCURRENT_RUNS: usize = 4;
/// Response bodies are read (a call is over when its body is) and dropped,
/// never relayed; at most this much is read.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Which hosts `GET /demo?url=…` may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// Any http(s) host: only for the terminal, where the operator is the user.
    Any,
    /// Exactly these hosts (lower case), each on any port or on one port.
    Only(Vec<(String, Option<u16>)>),
}

impl AllowedHosts {
    /// Parses entries of `--demo-allowed-hosts`: `host` or `host:port`, with
    /// IPv6 addresses in brackets (`[::1]:8080`). Blank entries are ignored.
    ///
    /// # Errors
    /// When an entry is not a bare host with an optional port.
    pub fn parse(entries: &[String]) -> Result<Self, ValueError> {
        let mut hosts = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let bad = || {
                ValueError(format!(
                    "--demo-allowed-hosts: {entry:?} is not a host or host:port"
                ))
            };
            // Let the URL parser do host syntax (IDNA, IPv6, case) once, here.
            let url = reqwest::Url::parse(&format!("http://{entry}/")).map_err(|_| bad())?;
            if url.path() != "/" || !url.username().is_empty() || url.password().is_some() {
                return Err(bad());
            }
            let host = url.host_str().ok_or_else(bad)?.to_owned();
            // `Url::port` hides the scheme's default port; an entry `host:80`
            // still means "port 80 only".
            let port = url.port().or_else(|| entry.ends_with(":80").then_some(80));
            hosts.push((host, port));
        }
        Ok(Self::Only(hosts))
    }

    fn allows(&self, url: &reqwest::Url) -> bool {
        match self {
            AllowedHosts::Any => true,
            AllowedHosts::Only(hosts) => {
                let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                    return false;
                };
                hosts
                    .iter()
                    .any(|(h, p)| h == host && p.is_none_or(|p| p == port))
            }
        }
    }
}

/// What to call while holding a permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in slow API of this process, `GET /demo/upstream?delay_ms=…`.
    BuiltIn { delay_ms: u64 },
    /// A URL whose host the operator allowed.
    Url(reqwest::Url),
}

/// One demo run, validated: the only way to build it is [`DemoRequest::new`].
#[derive(Debug, Clone)]
pub struct DemoRequest {
    requests: u32,
    limit: Limit,
    target: Target,
}

impl DemoRequest {
    /// # Errors
    /// When a number is outside its bound (`bounds` for `requests` and
    /// `delay_ms`), the built-in upstream would take longer than
    /// [`MAX_IDEAL_MS`], or the URL is not http(s) to an allowed host.
    pub fn new(
        requests: u64,
        limit: u64,
        delay_ms: u64,
        url: Option<&str>,
        allowed: &AllowedHosts,
        bounds: &DemoBounds,
    ) -> Result<Self, ValueError> {
        if !(1..=bounds.max_requests).contains(&requests) {
            return Err(ValueError(format!(
                "requests must be between 1 and {}",
                bounds.max_requests
            )));
        }
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ValueError(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        bounds.delay_ms(delay_ms)?;
        // Only an empty URL means the built-in upstream: one of blanks is a
        // bad URL, as the served document says (it allows only "" when no
        // host is listed).
        let target = match url.filter(|u| !u.is_empty()) {
            None => {
                let ideal = requests.div_ceil(limit) * delay_ms;
                if ideal > MAX_IDEAL_MS {
                    return Err(ValueError(format!(
                        "{requests} requests at limit {limit} with delay_ms {delay_ms} would take \
                         at least {ideal} ms; a demo may plan at most {MAX_IDEAL_MS} ms"
                    )));
                }
                Target::BuiltIn { delay_ms }
            }
            Some(raw) => Target::Url(parse_url(raw, allowed)?),
        };
        Ok(Self {
            requests: requests as u32,
            limit: Limit::new(limit)?,
            target,
        })
    }

    pub fn requests(&self) -> u32 {
        self.requests
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    pub fn target(&self) -> &Target {
        &self.target
    }
}

fn parse_url(raw: &str, allowed: &AllowedHosts) -> Result<reqwest::Url, ValueError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| ValueError(format!("url is not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ValueError("url must be http or https".into()));
    }
    // Credentials in a URL would be sent to the upstream on the operator's
    // behalf, and could end up in logs: refuse them outright.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ValueError("url must not contain credentials".into()));
    }
    if !allowed.allows(&url) {
        return Err(ValueError(format!(
            "url host {:?} is not allowed; the operator lists the hosts the demo may call \
             in --demo-allowed-hosts (leave url out to use the built-in upstream)",
            url.host_str().unwrap_or("")
        )));
    }
    Ok(url)
}

/// What the demo needs besides the store: where the built-in upstream is, who
/// may be called, and the HTTP clients that call them. Built once per process.
pub struct DemoConfig {
    /// `http://127.0.0.1:port` (or the listen address) of this process.
    upstream_base: String,
    allowed: AllowedHosts,
    /// For the built-in upstream: never through a proxy, since it is us.
    loopback: reqwest::Client,
    /// For allowed URLs: honours the usual proxy variables, an operator's egress
    /// may need them.
    outbound: reqwest::Client,
    max_wait_ms: u64,
    /// The API's waiting (FIFO queue, wakes, shutdown), shared by the demo.
    waiting: WaitSettings,
    /// One unit per run in progress: see [`MAX_CONCURRENT_RUNS`].
    runs: Arc<tokio::sync::Semaphore>,
    /// Bearer token for the built-in upstream when access control is on.
    /// Only ever sent to this process, never to an allowed URL.
    upstream_token: Option<Secret>,
}

impl DemoConfig {
    /// `listening` is the address this process serves HTTP on (an unspecified
    /// address such as 0.0.0.0 is reached through loopback).
    ///
    /// # Errors
    /// When an HTTP client cannot be built (no TLS backend).
    pub fn new(
        listening: SocketAddr,
        allowed: AllowedHosts,
        max_wait_ms: u64,
        waiting: WaitSettings,
    ) -> Result<Self, reqwest::Error> {
        let mut addr = listening;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        // Redirects are not followed: a redirect is the upstream's answer, and
        // following it would let an allowed host send the demo anywhere.
        let builder = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(CALL_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("permitd-demo/", env!("CARGO_PKG_VERSION")))
        };
        Ok(Self {
            upstream_base: format!("http://{addr}"),
            allowed,
            loopback: builder().no_proxy().build()?,
            outbound: builder().build()?,
            max_wait_ms,
            waiting,
            runs: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_RUNS)),
            upstream_token: None,
        })
    }

    /// Sends `token` with every call to the built-in upstream (this server,
    /// whose routes then need one).
    pub fn with_upstream_token(mut self, token: Option<Secret>) -> Self {
        self.upstream_token = token;
        self
    }

    /// A slot for one run, or `None` when [`MAX_CONCURRENT_RUNS`] are in
    /// progress (the HTTP layer answers 429). Held until dropped.
    pub fn try_start_run(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.runs).try_acquire_owned().ok()
    }

    pub fn allowed_hosts(&self) -> &AllowedHosts {
        &self.allowed
    }

    fn url_of(&self, target: &Target) -> String {
        match target {
            Target::BuiltIn { delay_ms } => {
                format!("{}/demo/upstream?delay_ms={delay_ms}", self.upstream_base)
            }
            Target::Url(url) => url.to_string(),
        }
    }

    fn client_for(&self, target: &Target) -> &reqwest::Client {
        match target {
            Target::BuiltIn { .. } => &self.loopback,
            Target::Url(_) => &self.outbound,
        }
    }

    fn token_for(&self, target: &Target) -> Option<Secret> {
        match target {
            Target::BuiltIn { .. } => self.upstream_token.clone(),
            Target::Url(_) => None,
        }
    }
}

/// One request of the fan-out. Times are milliseconds since the demo started.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "index": 2, "status": 200, "wait_ms": 103.9, "start_ms": 104.0, "end_ms": 206.3
}))]
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
#[schema(example = json!({
    "requests": 2, "limit": 1, "total_seconds": 0.2071, "ideal_seconds": 0.2,
    "max_concurrency": 1,
    "summary": "takes ~0.2071 seconds to handle 2 with 1 bounded limit",
    "url": "http://127.0.0.1:8080/demo/upstream?delay_ms=100", "store": "redis",
    "semaphore": "demo-c6f9067d-8418-4df8-b91d-f8988b274c2f",
    "results": [
        { "index": 1, "status": 200, "wait_ms": 0.8, "start_ms": 0.9, "end_ms": 103.7 },
        { "index": 2, "status": 200, "wait_ms": 103.9, "start_ms": 104.0, "end_ms": 206.3 }
    ]
}))]
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

/// Why a demo could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The store failed; the demo is abandoned (503 or 500, like the API).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything the tasks of one run share.
struct Run {
    store: Arc<dyn SemaphoreStore>,
    name: SemaphoreName,
    url: String,
    client: reqwest::Client,
    /// Sent as a bearer token with each call (built-in upstream only).
    token: Option<Secret>,
    max_wait_ms: u64,
    waiting: WaitSettings,
    started: Instant,
    deadline: Instant,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
}

impl Run {
    fn elapsed_ms(&self) -> f64 {
        round(self.started.elapsed().as_secs_f64() * 1000.0, 1)
    }
}

/// Runs the demo once and reports it. `on_handled` sees each request as it
/// finishes (the terminal prints it), in the order they finish.
///
/// # Errors
/// When the store fails; the demo semaphore is still removed if possible.
pub async fn run(
    store: Arc<dyn SemaphoreStore>,
    config: &DemoConfig,
    request: &DemoRequest,
    mut on_handled: impl FnMut(&RequestResult),
) -> Result<DemoReport, DemoError> {
    let name = SemaphoreName::parse(&format!("demo-{}", uuid::Uuid::new_v4()))
        .expect("a demo- prefix and a UUID fit the name alphabet");
    store.set_limit(&name, request.limit).await?;
    // From here on the semaphore exists; the guard removes it however this
    // function ends, also when the caller drops it (a client hung up).
    let guard = Cleanup {
        store: Some(Arc::clone(&store)),
        name: name.clone(),
    };
    let started = Instant::now();
    let shared = Arc::new(Run {
        store: Arc::clone(&store),
        name: name.clone(),
        url: config.url_of(&request.target),
        client: config.client_for(&request.target).clone(),
        token: config.token_for(&request.target),
        max_wait_ms: config.max_wait_ms,
        waiting: config.waiting.clone(),
        started,
        deadline: started + DEADLINE,
        in_flight: AtomicU32::new(0),
        max_in_flight: AtomicU32::new(0),
    });
    let mut tasks = JoinSet::new();
    for index in 1..=request.requests {
        tasks.spawn(one_request(Arc::clone(&shared), index));
    }
    let mut results = Vec::with_capacity(request.requests as usize);
    while let Some(joined) = tasks.join_next().await {
        // A task only ends early through a store failure; a panic is a bug
        // and is reported as one rather than swallowed.
        let result = joined.expect("a demo task panicked")?;
        on_handled(&result);
        results.push(result);
    }
    let total = started.elapsed();
    guard.delete_now().await?;

    results.sort_by_key(|r| r.index);
    let total_seconds = round(total.as_secs_f64(), 4);
    let rounds = f64::from(request.requests.div_ceil(request.limit.get()));
    let delay_ms = match request.target {
        Target::BuiltIn { delay_ms } => delay_ms as f64,
        Target::Url(_) => mean_call_ms(&results),
    };
    Ok(DemoReport {
        requests: request.requests,
        limit: request.limit.get(),
        total_seconds,
        ideal_seconds: round(rounds * delay_ms / 1000.0, 4),
        max_concurrency: shared.max_in_flight.load(Ordering::SeqCst),
        summary: format!(
            "takes ~{total_seconds:.4} seconds to handle {} with {} bounded limit",
            request.requests,
            request.limit.get()
        ),
        url: shared.url.clone(),
        store: store.kind(),
        semaphore: name.to_string(),
        results,
    })
}

fn mean_call_ms(results: &[RequestResult]) -> f64 {
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

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// One task: acquire, call while holding, release.
async fn one_request(run: Arc<Run>, index: u32) -> Result<RequestResult, StoreError> {
    let Some(permit) = acquire(&run, index).await? else {
        let at = run.elapsed_ms();
        return Ok(RequestResult {
            index,
            status: None,
            wait_ms: at,
            start_ms: at,
            end_ms: at,
            error: Some("no permit before the deadline".into()),
        });
    };
    let wait_ms = run.elapsed_ms();
    // Counted only between grant and release, so it can never exceed what
    // the store lets be held: this is the measurement the report shows.
    let now_in_flight = run.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    run.max_in_flight.fetch_max(now_in_flight, Ordering::SeqCst);
    let start_ms = run.elapsed_ms();
    let outcome = call(&run.client, &run.url, run.token.as_ref()).await;
    let end_ms = run.elapsed_ms();
    run.in_flight.fetch_sub(1, Ordering::SeqCst);
    run.store.release(&run.name, permit).await?;
    let (status, error) = match outcome {
        Ok(status) => (Some(status), None),
        Err(kind) => (None, Some(kind.to_owned())),
    };
    Ok(RequestResult {
        index,
        status,
        wait_ms,
        start_ms,
        end_ms,
        error,
    })
}

/// Acquires one unit of the demo semaphore before the run's deadline.
///
/// It waits the way `POST …/permits` with `wait_ms` does (the same FIFO queue
/// and wakes, so a unit is handed over as soon as it is released), for the
/// time left in the run; should that wait end without a permit (it is capped
/// by `--max-wait-ms`), it pauses briefly and asks again until the deadline.
async fn acquire(run: &Run, index: u32) -> Result<Option<crate::semaphore::PermitId>, StoreError> {
    let holder = Holder::parse(&format!("demo request {index}")).ok();
    let ttl = Ttl::new(PERMIT_TTL.as_millis() as u64, PERMIT_TTL.as_millis() as u64)
        .expect("the demo lease is within its own bound");
    loop {
        let left = run.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let wait_ms = (left.as_millis() as u64).min(run.max_wait_ms);
        let request = AcquireRequest {
            name: run.name.clone(),
            // No limit: the semaphore was created with it. Should it be gone
            // (the demo was abandoned), the acquire must not recreate it.
            limit: None,
            count: Count::ONE,
            ttl,
            wait: WaitTime::new(wait_ms, run.max_wait_ms).unwrap_or_default(),
            holder: holder.clone(),
            idempotency_key: None,
        };
        match waiting::acquire(&run.store, &request, &run.waiting).await? {
            AcquireOutcome::Granted(permit) | AcquireOutcome::Replayed(permit) => {
                return Ok(Some(permit.id));
            }
            AcquireOutcome::Unavailable { .. } => tokio::time::sleep(RETRY_PAUSE).await,
            other => {
                return Err(StoreError::Internal(format!(
                    "demo semaphore {}: unexpected acquire outcome {other:?}",
                    run.name
                )));
            }
        }
    }
}

/// Calls `url` and reads (then drops) the body. Returns the status, or a
/// coarse reason: details of the failure are logged, not reported.
async fn call(
    client: &reqwest::Client,
    url: &str,
    token: Option<&Secret>,
) -> Result<u16, &'static str> {
    let classify = |e: reqwest::Error| {
        tracing::debug!(error = %e, "demo call failed");
        if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else {
            "request"
        }
    };
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token.expose());
    }
    let mut response = request.send().await.map_err(classify)?;
    let status = response.status().as_u16();
    let mut read = 0;
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        read += chunk.len();
        if read >= MAX_BODY_BYTES {
            break;
        }
    }
    Ok(status)
}

/// Removes the demo semaphore when dropped, unless already removed.
struct Cleanup {
    store: Option<Arc<dyn SemaphoreStore>>,
    name: SemaphoreName,
}

impl Cleanup {
    async fn delete_now(mut self) -> Result<(), StoreError> {
        if let Some(store) = self.store.take() {
            store.delete(&self.name).await?;
        }
        Ok(())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // `Drop` cannot await: hand the delete to a task. Without a runtime
        // (process shutting down) the leases still run out by themselves.
        if let (Some(store), Ok(runtime)) =
            (self.store.take(), tokio::runtime::Handle::try_current())
        {
            let name = self.name.clone();
            runtime.spawn(async move {
                if let Err(e) = store.delete(&name).await {
                    tracing::warn!(semaphore = %name, error = %e, "demo semaphore not removed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn bounds_are_enforced() {
        let none = hosts(&[]);
        let bounds = DemoBounds::default();
        assert!(DemoRequest::new(5, 1, 100, None, &none, &bounds).is_ok());
        assert!(DemoRequest::new(0, 1, 100, None, &none, &bounds).is_err());
        assert!(DemoRequest::new(101, 1, 100, None, &none, &bounds).is_err());
        assert!(DemoRequest::new(5, 0, 100, None, &none, &bounds).is_err());
        assert!(DemoRequest::new(5, 101, 100, None, &none, &bounds).is_err());
        assert!(DemoRequest::new(5, 1, 5_001, None, &none, &bounds).is_err());
        // 100 rounds of 5 s is far beyond what one demo may plan.
        assert!(DemoRequest::new(100, 1, 5_000, None, &none, &bounds).is_err());
        assert!(DemoRequest::new(100, 100, 5_000, None, &none, &bounds).is_ok());
    }

    #[test]
    fn configured_bounds_are_enforced_and_capped() {
        let none = hosts(&[]);
        let small = DemoBounds::new(4, 5).unwrap();
        assert!(DemoRequest::new(4, 1, 5, None, &none, &small).is_ok());
        assert!(DemoRequest::new(5, 1, 5, None, &none, &small).is_err());
        assert!(DemoRequest::new(4, 1, 6, None, &none, &small).is_err());
        assert!(small.delay_ms(6).is_err());
        assert!(DemoBounds::new(0, 5).is_err());
        assert!(DemoBounds::new(MAX_REQUESTS + 1, 5).is_err());
        assert!(DemoBounds::new(4, MAX_DELAY_MS + 1).is_err());
        assert!(DemoBounds::new(MAX_REQUESTS, 0).is_ok());
        // Defaults stay within configured bounds.
        assert_eq!((small.default_requests(), small.default_delay_ms()), (4, 5));
        let bounds = DemoBounds::default();
        assert_eq!(
            (bounds.default_requests(), bounds.default_delay_ms()),
            (5, 100)
        );
    }

    #[test]
    fn only_listed_hosts_and_ports_may_be_called() {
        let allowed = hosts(&["api.example.com", "127.0.0.1:9000", "[::1]", "plain:80"]);
        let ok = |url: &str| {
            DemoRequest::new(2, 1, 0, Some(url), &allowed, &DemoBounds::default()).is_ok()
        };
        assert!(ok("https://api.example.com/v1/things?x=1"));
        assert!(ok("http://API.example.com:8443/"));
        assert!(ok("http://127.0.0.1:9000/"));
        assert!(!ok("http://127.0.0.1:9001/"));
        assert!(!ok("http://127.0.0.1/"));
        assert!(ok("http://[::1]:1234/"));
        assert!(ok("http://plain/"));
        assert!(!ok("https://plain/"));
        assert!(!ok("http://evil.example.com/"));
        assert!(!ok("http://api.example.com.evil.net/"));
        assert!(!ok("ftp://api.example.com/"));
        assert!(!ok("file:///etc/passwd"));
        assert!(!ok("http://user:pw@api.example.com/"));
        assert!(!ok("not a url"));
        assert!(!ok("/demo/upstream"));
    }

    #[test]
    fn an_empty_url_means_the_built_in_upstream() {
        let bounds = DemoBounds::default();
        let request = DemoRequest::new(3, 2, 50, Some(""), &hosts(&[]), &bounds).unwrap();
        assert_eq!(request.target(), &Target::BuiltIn { delay_ms: 50 });
        assert!(DemoRequest::new(3, 2, 50, Some("  "), &hosts(&[]), &bounds).is_err());
    }

    #[test]
    fn allow_list_entries_must_be_hosts() {
        for bad in ["http://x/", "x/path", "u@x"] {
            assert!(
                AllowedHosts::parse(&[bad.to_owned()]).is_err(),
                "{bad} was accepted"
            );
        }
        assert!(AllowedHosts::Any.allows(&reqwest::Url::parse("http://anything/").unwrap()));
    }

    #[test]
    fn the_allow_list_flag_takes_a_comma_separated_list() {
        use clap::Parser;
        let cli = crate::config::Cli::parse_from([
            "permitd",
            "--demo-allowed-hosts",
            "api.example.com,127.0.0.1:9000",
        ]);
        assert_eq!(
            AllowedHosts::parse(&cli.settings.demo_allowed_hosts).unwrap(),
            AllowedHosts::Only(vec![
                ("api.example.com".into(), None),
                ("127.0.0.1".into(), Some(9000)),
            ])
        );
        let cli = crate::config::Cli::parse_from(["permitd"]);
        assert_eq!(
            AllowedHosts::parse(&cli.settings.demo_allowed_hosts).unwrap(),
            AllowedHosts::Only(vec![])
        );
    }

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
