//! The demo's outbound calls: where the built-in upstream is, the HTTP
//! clients (no redirects, timeouts, proxies only for allowed URLs), how many
//! runs may go at once, and the one call a task makes while holding a permit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::request::{AllowedHosts, Target};
use crate::secret::Secret;
use crate::waiting::WaitSettings;

/// Bound on one outbound call, body included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Most demo runs one process serves at once. Each run may make up to
/// [`MAX_REQUESTS`] outbound calls; without a cap, many concurrent `/demo`
/// requests would multiply that without bound.
pub const MAX_CONCURRENT_RUNS: usize = 4;
/// Response bodies are read (a call is over when its body is) and dropped,
/// never relayed; at most this much is read.
const MAX_BODY_BYTES: usize = 1024 * 1024;

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
    pub(super) max_wait_ms: u64,
    /// The API's waiting (FIFO queue, wakes, shutdown), shared by the demo.
    pub(super) waiting: WaitSettings,
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

    pub(super) fn url_of(&self, target: &Target) -> String {
        match target {
            Target::BuiltIn { delay_ms } => {
                format!("{}/demo/upstream?delay_ms={delay_ms}", self.upstream_base)
            }
            Target::Url(url) => url.to_string(),
        }
    }

    pub(super) fn client_for(&self, target: &Target) -> &reqwest::Client {
        match target {
            Target::BuiltIn { .. } => &self.loopback,
            Target::Url(_) => &self.outbound,
        }
    }

    pub(super) fn token_for(&self, target: &Target) -> Option<Secret> {
        match target {
            Target::BuiltIn { .. } => self.upstream_token.clone(),
            Target::Url(_) => None,
        }
    }
}

/// Calls `url` (with `traceparent`, when the run belongs to a trace) and
/// reads (then drops) the body. Returns the status, or a coarse reason:
/// details of the failure are logged, not reported.
pub(super) async fn call(
    client: &reqwest::Client,
    url: &str,
    token: Option<&Secret>,
    traceparent: Option<String>,
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
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
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
