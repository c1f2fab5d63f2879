//! Building and running the application: the store, the router, the listener.
//!
//! `Application::build` binds the socket (port 0 works, for tests) and returns
//! before serving, so callers learn the port first; `run_until_stopped` serves
//! until the shutdown future they pass completes, then drains in-flight
//! requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{Settings, StoreChoice};
use crate::demo::{AllowedHosts, DemoConfig};
use crate::http::auth::{Scope, TokenEntry};
use crate::http::{AccessControl, AppState, HttpLimits, StateParts, router};
use crate::secret::Secret;
use crate::store::SemaphoreStore;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::waiting::{WaitPlaces, WaitSettings};
use tokio_util::sync::CancellationToken;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// `--shutdown-delay-ms`: served as usual, /readyz 503, before the drain.
    delay: Duration,
    /// Ends the delay early (a second signal), when set.
    hurry: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// `--shutdown-grace-ms`.
    grace: Duration,
    /// After the grace, how long waiting acquires get to leave their queues
    /// and answer: one store call.
    settle: Duration,
}

impl Application {
    /// # Errors
    /// When settings are inconsistent, the Redis URL is malformed, or the
    /// address cannot be bound. An unreachable Redis is not an error: it is
    /// logged, `/readyz` reports it, and requests get 503 until it answers.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let bounds = settings.request_bounds()?;
        let tokens = settings.api_tokens()?;
        let metered = settings.metered_semaphores()?;
        crate::telemetry::metrics();
        let allowed_hosts = AllowedHosts::parse(&settings.demo_allowed_hosts)?;
        let store = build_store(settings).await?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let max_waiters = settings.max_waiters(descriptor_limit());
        tracing::info!(max_waiters, "waiting acquires this instance takes at once");
        let waiting = WaitSettings {
            recheck: settings.wait_recheck(),
            shutdown: CancellationToken::new(),
            places: WaitPlaces::new(max_waiters),
        };
        // The demo calls its built-in upstream on the address actually bound.
        // With access control on, the demo's calls to its built-in upstream
        // (this very server) need a token like any other client's.
        let demo = DemoConfig::new(
            listener.local_addr()?,
            allowed_hosts,
            bounds.max_wait_ms,
            waiting.clone(),
        )?
        .with_upstream_token(upstream_token(&tokens));
        if settings.uses_redis() && settings.request_timeout_ms <= settings.redis_timeout_ms {
            // The request timeout would cut store calls short mid-script, where
            // the store's own timeout would have answered a clear 503.
            tracing::warn!(
                request_timeout_ms = settings.request_timeout_ms,
                redis_timeout_ms = settings.redis_timeout_ms,
                "--request-timeout-ms is not above --redis-timeout-ms"
            );
        }
        let access = AccessControl::new(&tokens, settings.metrics_public)?;
        if access.is_enabled() {
            tracing::info!(
                tokens = tokens.len(),
                metrics_public = settings.metrics_public,
                "access control on: API calls need a bearer token"
            );
        } else if !settings.embedded {
            tracing::warn!(
                "no API token configured: anyone who can reach this port may use the API \
                 (set PERMITD_API_TOKENS or --api-token-file to require one)"
            );
        }
        Ok(Self {
            listener,
            state: AppState::new(StateParts {
                store,
                bounds,
                waiting,
                demo: Arc::new(demo),
                limits: HttpLimits {
                    max_body_bytes: settings.max_body_bytes,
                    request_timeout: settings.request_timeout(),
                },
                access,
                serve_demo: settings.demo,
                metered,
                drain: Arc::default(),
            }),
            delay: settings.shutdown_delay(),
            hurry: None,
            grace: Duration::from_millis(settings.shutdown_grace_ms),
            settle: Duration::from_millis(settings.redis_timeout_ms) + Duration::from_secs(1),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// A future that, once it completes, ends the shutdown delay at once
    /// (`permitd serve` passes a second SIGTERM or Ctrl-C).
    #[must_use]
    pub fn hurried_by(mut self, hurry: impl Future<Output = ()> + Send + 'static) -> Self {
        self.hurry = Some(Box::pin(hurry));
        self
    }

    /// What the handlers share (the store, the demo's configuration, …), for
    /// commands that run the scenario beside the server (`permitd demo`).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains: `/readyz` answers
    /// 503 at once while requests keep being served, new connections too,
    /// for the shutdown delay (`--shutdown-delay-ms`); then, once no request other
    /// than an acquire is in flight, or the grace (`--shutdown-grace-ms`)
    /// is over, waiting acquires are answered 503 and leave their queues
    /// (rather than holding shutdown for their whole wait), the listener
    /// closes, and this returns when the last answer is out, or a store
    /// call's time after that at most.
    ///
    /// # Errors
    /// When the server fails to accept connections.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(address = %self.local_addr(), store = self.state.store.kind(), "permitd listening");
        let waiters = self.state.waiting.shutdown.clone();
        let drain = Arc::clone(&self.state.drain);
        let (delay, grace, settle) = (self.delay, self.grace, self.settle);
        let hurry = self.hurry;
        let stopping = CancellationToken::new();
        let stopped = stopping.clone();
        let server =
            axum::serve(self.listener, router(self.state)).with_graceful_shutdown(async move {
                shutdown.await;
                drain.begin();
                if !delay.is_zero() {
                    // Still accepting and serving: whoever routes to this
                    // instance learns from /readyz (or its endpoint update)
                    // to stop, and meanwhile nobody is refused.
                    tracing::info!(
                        delay_ms = delay.as_millis() as u64,
                        "shutting down after the delay: /readyz answers 503, everything else \
                         is served (a second signal ends the delay)"
                    );
                    let hurry = async {
                        match hurry {
                            Some(hurry) => hurry.await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = hurry => tracing::info!("second signal: the delay ends now"),
                    }
                }
                tracing::info!(
                    grace_ms = grace.as_millis() as u64,
                    in_flight = drain.in_flight(),
                    "draining: /readyz answers 503, requests in flight may finish"
                );
                if tokio::time::timeout(grace, drain.until_idle())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        in_flight = drain.in_flight(),
                        "the shutdown grace is over with requests still in flight"
                    );
                }
                waiters.cancel();
                stopping.cancel();
            });
        tokio::select! {
            served = server.into_future() => served,
            () = async { stopped.cancelled().await; tokio::time::sleep(settle).await } => {
                tracing::warn!("stopping with requests still unanswered after the grace");
                Ok(())
            }
        }
    }
}

/// This process's limits on open descriptors, soft and hard.
fn nofile() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0).then_some(limit)
}

/// This process's soft limit on open descriptors.
pub fn descriptor_limit() -> u64 {
    nofile().map_or(1024, |limit| limit.rlim_cur)
}

/// Raises the soft limit on open descriptors to the hard limit, as servers
/// commonly do: every waiting acquire holds a connection, and the usual soft
/// limit (1,024) is small for a fleet of waiters. Logs the figure.
pub fn raise_descriptor_limit() {
    let Some(mut limit) = nofile() else {
        return;
    };
    let before = limit.rlim_cur;
    // Linux refuses more than fs.nr_open (2^20 by default) even when the
    // hard limit is unlimited.
    limit.rlim_cur = limit.rlim_max.min(1 << 20);
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if limit.rlim_cur > before
        && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0
    {
        limit.rlim_cur = before;
    }
    tracing::info!(
        before,
        now = limit.rlim_cur,
        "open-descriptor limit (soft, raised to the hard limit)"
    );
}

/// A token the demo may call its built-in upstream with (`use` suffices; the
/// upstream names no semaphore, so a name prefix does not matter).
fn upstream_token(entries: &[Secret]) -> Option<Secret> {
    entries
        .iter()
        .filter_map(|entry| TokenEntry::parse(entry).ok())
        .find(|entry| entry.scope >= Scope::Use)
        .map(|entry| entry.token)
}

/// The store the settings choose, with the start-up log lines about it.
///
/// # Errors
/// When the Redis URL is malformed (an unreachable Redis is only logged).
pub async fn build_store(settings: &Settings) -> anyhow::Result<Arc<dyn SemaphoreStore>> {
    match settings.store()? {
        StoreChoice::Memory => {
            tracing::warn!(
                "no Redis configured: using the embedded memory store, which is NOT shared \
                 between permitd instances and is lost on restart (set REDIS_URL to share)"
            );
            Ok(Arc::new(MemoryStore::with_lifecycle(settings.lifecycle())))
        }
        StoreChoice::Redis(redis) => {
            crate::telemetry::register_redis_series();
            let shown = redis.target.describe();
            let store = RedisStore::new(&redis).map_err(|e| anyhow::anyhow!("{e}"))?;
            // The seed's "check the Redis connection at start", without making a
            // Redis outage at deploy time a crash loop; a Redis that cannot run
            // permitd at all (too old) stops the start.
            match store.ping().await.and(store.report().await) {
                Ok(report) => {
                    metrics::gauge!(crate::telemetry::STORE_WARNINGS)
                        .set(report.warnings.len() as f64);
                    tracing::info!(
                        redis = %shown,
                        mode = report.mode.unwrap_or("standalone"),
                        masters = report.masters,
                        "connected to Redis"
                    );
                    for warning in report.warnings {
                        tracing::warn!(redis = %shown, "{warning}");
                    }
                }
                Err(e) if e.is_refusal() => anyhow::bail!("{e}"),
                Err(e) if e.is_transient() => tracing::warn!(
                    redis = %shown, error = %e,
                    "Redis is not answering yet; requests get 503 until it does"
                ),
                Err(e) => anyhow::bail!("{e}"),
            }
            Ok(Arc::new(store))
        }
    }
}
