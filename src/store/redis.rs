//! The Redis store: semaphores shared by every permitd instance on one Redis.
//!
//! Each operation is one Lua script from `scripts/` (a shared prelude plus a
//! body), run with EVALSHA through a deadpool connection pool. The scripts own
//! the semantics; this file only chooses keys, passes arguments and decodes
//! replies. Every reply comes wrapped as `{swept, reply}`, where `swept` counts
//! the expired leases the call removed, so lease expiries (the sign of a
//! crashed holder) are counted in [`RedisStore::run`] like the round-trip
//! latency and errors. Data model, per semaphore `name` under the configured prefix `p`:
//!
//! - `p{name}:meta`    hash: limit, held, fence
//! - `p{name}:expiry`  sorted set: permit id scored by lease end (Redis ms)
//! - `p{name}:permits` hash: permit id -> record
//! - `p{name}:idem`    hash: Idempotency-Key -> permit id
//! - `p{name}:queue`   sorted set: waiting ticket scored by arrival number
//! - `p{name}:waiters` hash: waiting ticket -> count and wake channel
//! - `p{name}:wleases` sorted set: waiting ticket scored by waiter lease end
//! - `p{name}:left`    sorted set: tickets withdrawn a moment ago (see leave.lua)
//!
//! The `{name}` hash tag puts every key of one semaphore in one cluster slot.
//!
//! Waiting: each instance subscribes (one dedicated connection, outside the
//! pool) to its own channel `p wake:<instance id>`. Scripts publish a ticket
//! there when it may proceed, and the subscriber task wakes it through
//! `Wakeups`. When the subscription drops, messages sent meanwhile are lost, so
//! every local waiter re-checks as soon as it is back; the subscription is
//! PINGed every few seconds so a connection that died silently is replaced.
//! Waiters renew their lease in the queue with every attempt; an instance
//! that dies stops renewing, and its waiters drop out after one lease.
//!
//! Every call is bounded by one deadline (`--redis-timeout-ms`): pool checkout,
//! connecting and the script together. Past it the caller gets
//! `StoreError::Unavailable` (HTTP 503) instead of a hanging request.
//!
//! Connections: a deadpool pool of multiplexed connections, with our own
//! manager instead of deadpool-redis's, whose recycle PINGs before every
//! checkout and so doubles the round trips of every request (measured: half
//! the Redis CPU per acquire/release cycle). Ours PINGs only connections that
//! may be broken: those idle for a while, and all of them after any connection
//! error (a generation counter). A connection that failed is dropped from the
//! pool, so the store recovers by itself when Redis comes back.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool::Runtime;
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig, RetryMethod, Script, Value};
use futures::StreamExt;

use super::{Attempt, PoolStatus, SemaphoreStore, StoreError, Wakeups};
use crate::secret::Secret;
use crate::semaphore::{
    AcquireOutcome, AcquireRequest, HolderInfo, Limit, MAX_LISTED_HOLDERS, Millis, Permit,
    PermitId, ReleaseOutcome, SemaphoreName, SemaphoreStatus, SetLimitOutcome, Ttl,
};
use crate::telemetry;

const PRELUDE: &str = include_str!("scripts/prelude.lua");

/// One script, with the name its metrics are labelled by.
struct NamedScript {
    name: &'static str,
    script: Script,
}

/// The prelude, then the body wrapped in a function, so that every script
/// replies `{swept, body's reply}`: `swept` is how many expired leases the
/// prelude's `expire()` removed during the call (see prelude.lua). `run`
/// counts them, in one place, whatever the body's own reply shape. The body
/// runs before `swept` is read (a table constructor would read it first).
fn script(name: &'static str, body: &str) -> NamedScript {
    NamedScript {
        name,
        script: Script::new(&format!(
            "{PRELUDE}\nlocal function body()\n{body}\nend\nlocal reply = body()\nreturn {{ swept, reply }}\n"
        )),
    }
}

static ACQUIRE: LazyLock<NamedScript> =
    LazyLock::new(|| script("acquire", include_str!("scripts/acquire.lua")));
static PERMIT: LazyLock<NamedScript> =
    LazyLock::new(|| script("permit", include_str!("scripts/permit.lua")));
static REFRESH: LazyLock<NamedScript> =
    LazyLock::new(|| script("refresh", include_str!("scripts/refresh.lua")));
static RELEASE: LazyLock<NamedScript> =
    LazyLock::new(|| script("release", include_str!("scripts/release.lua")));
static SET_LIMIT: LazyLock<NamedScript> =
    LazyLock::new(|| script("set_limit", include_str!("scripts/set_limit.lua")));
static STATUS: LazyLock<NamedScript> =
    LazyLock::new(|| script("status", include_str!("scripts/status.lua")));
static DELETE: LazyLock<NamedScript> =
    LazyLock::new(|| script("delete", include_str!("scripts/delete.lua")));
static LEAVE: LazyLock<NamedScript> =
    LazyLock::new(|| script("leave", include_str!("scripts/leave.lua")));

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// May hold a password: `Debug` prints `***`.
    pub url: Secret,
    pub key_prefix: String,
    pub pool_size: usize,
    /// Bound on establishing one new connection.
    pub connect_timeout: Duration,
    /// Bound on one whole store call: checkout, connect and script.
    pub timeout: Duration,
    /// How long the queue keeps a waiter its instance stopped renewing.
    pub waiter_lease: Duration,
}

/// Connections idle longer than this are PINGed before reuse: Redis may have
/// restarted, or a middlebox dropped the connection, while nobody used it.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

/// One pooled connection and the failure generation it was last checked in.
struct Pooled {
    connection: MultiplexedConnection,
    checked_in_generation: u64,
}

/// Opens multiplexed connections with our timeouts; see the module docs for
/// when it PINGs.
struct Connector {
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// Bumped on every connection error: connections checked before it are
    /// suspect and get PINGed on their next checkout.
    failures: AtomicU64,
}

impl managed::Manager for Connector {
    type Type = Pooled;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Pooled, redis::RedisError> {
        let generation = self.failures.load(Ordering::Relaxed);
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Pooled {
            connection,
            checked_in_generation: generation,
        })
    }

    async fn recycle(
        &self,
        pooled: &mut Pooled,
        metrics: &Metrics,
    ) -> RecycleResult<redis::RedisError> {
        let generation = self.failures.load(Ordering::Relaxed);
        if pooled.checked_in_generation == generation && metrics.last_used() < IDLE_BEFORE_PING {
            return Ok(());
        }
        let pong: String = redis::cmd("PING")
            .query_async(&mut pooled.connection)
            .await
            .map_err(RecycleError::Backend)?;
        if pong != "PONG" {
            return Err(RecycleError::message("unexpected PING reply"));
        }
        pooled.checked_in_generation = generation;
        Ok(())
    }
}

type Pool = managed::Pool<Connector>;

pub struct RedisStore {
    pool: Pool,
    prefix: String,
    timeout: Duration,
    waiter_lease_ms: String,
    /// How long `leave` remembers a withdrawn ticket: longer than any call
    /// can be in flight (the call timeout) and than a waiter lease.
    withdrawal_ms: String,
    wake_channel: String,
    wakeups: Arc<Wakeups>,
    subscriber: tokio::task::JoinHandle<()>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl RedisStore {
    /// Builds the pool and starts the subscriber task (so it must be called
    /// inside a Tokio runtime). No pooled connection is made yet: an
    /// unreachable Redis at start is reported by `ping` (and `/readyz`), not
    /// by a failed start.
    ///
    /// # Errors
    /// When the URL cannot be parsed.
    pub fn new(settings: &RedisSettings) -> Result<Self, StoreError> {
        let client = redis::Client::open(settings.url.expose())
            .map_err(|e| StoreError::Internal(format!("bad Redis URL: {e}")))?;
        let connector = Connector {
            client: client.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.timeout)),
            failures: AtomicU64::new(0),
        };
        let pool = Pool::builder(connector)
            .max_size(settings.pool_size)
            .timeouts(Timeouts {
                wait: Some(settings.timeout),
                create: Some(settings.connect_timeout),
                recycle: Some(settings.connect_timeout),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Internal(format!("bad Redis pool configuration: {e}")))?;
        let wake_channel = format!("{}wake:{}", settings.key_prefix, uuid::Uuid::new_v4());
        let wakeups = Wakeups::new();
        let subscriber = tokio::spawn(subscribe(
            client,
            wake_channel.clone(),
            wakeups.clone(),
            settings.connect_timeout,
        ));
        Ok(Self {
            pool,
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            waiter_lease_ms: settings.waiter_lease.as_millis().to_string(),
            withdrawal_ms: (settings.waiter_lease.max(settings.timeout) * 2)
                .as_millis()
                .to_string(),
            wake_channel,
            wakeups,
            subscriber,
        })
    }

    fn keys(&self, name: &SemaphoreName) -> [String; 8] {
        let base = format!("{}{{{}}}", self.prefix, name.as_str());
        [
            "meta", "expiry", "permits", "idem", "queue", "waiters", "wleases", "left",
        ]
        .map(|suffix| format!("{base}:{suffix}"))
    }

    /// Runs one script: the one place every script call goes through, so it
    /// is where the round trip is timed, failures are counted, and the leases
    /// the script swept are counted as expiries.
    async fn run<T: redis::FromRedisValue>(
        &self,
        named: &NamedScript,
        name: &SemaphoreName,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let call = async {
            let mut pooled = self.pool.get().await.map_err(classify_pool)?;
            let mut invocation = named.script.prepare_invoke();
            for key in self.keys(name) {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(*arg);
            }
            let reply = invocation
                .invoke_async::<(u64, T)>(&mut pooled.connection)
                .await;
            reply.map_err(|e| self.connection_failed(pooled, e))
        };
        let (swept, reply) = self.timed(named.name, call).await?;
        if swept > 0 {
            metrics::counter!(telemetry::LEASE_EXPIRIES).increment(swept);
        }
        Ok(reply)
    }

    /// Bounds one call by `--redis-timeout-ms` and records its latency (pool
    /// checkout included: it is what a request waits for) and any failure.
    async fn timed<T>(
        &self,
        call_name: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let (result, failure) = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => (Ok(value), None),
            Ok(Err(e)) => {
                let kind = if e.is_transient() {
                    "unavailable"
                } else {
                    "internal"
                };
                (Err(e), Some(kind))
            }
            Err(_) => (
                Err(StoreError::Unavailable(
                    "Redis did not answer in time".into(),
                )),
                Some("timeout"),
            ),
        };
        metrics::histogram!(telemetry::REDIS_DURATION, "call" => call_name)
            .record(started.elapsed().as_secs_f64());
        if let Some(kind) = failure {
            metrics::counter!(telemetry::REDIS_ERRORS, "call" => call_name, "kind" => kind)
                .increment(1);
        }
        result
    }
}

impl RedisStore {
    /// Classifies a command error; a connection-level one also drops the
    /// connection and makes every other pooled connection suspect.
    fn connection_failed(&self, pooled: Object<Connector>, e: redis::RedisError) -> StoreError {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            self.pool.manager().failures.fetch_add(1, Ordering::Relaxed);
            drop(Object::take(pooled));
        }
        classify(e)
    }
}

fn classify(e: redis::RedisError) -> StoreError {
    match e.retry_method() {
        RetryMethod::NoRetry => StoreError::Internal(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn classify_pool(e: PoolError<redis::RedisError>) -> StoreError {
    match e {
        PoolError::Backend(e) => classify(e),
        PoolError::Timeout(_) => StoreError::Unavailable("no Redis connection in time".into()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// How often the wake subscription is PINGed to notice a dead connection.
const SUBSCRIBER_PING_EVERY: Duration = Duration::from_secs(5);

/// Keeps this instance subscribed to its wake channel, reconnecting with
/// backoff, and turns each message ("ticket \n cause µs") into a wake.
async fn subscribe(
    client: redis::Client,
    channel: String,
    wakeups: Arc<Wakeups>,
    connect_timeout: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = tokio::time::timeout(connect_timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "wake subscription failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                tracing::debug!("wake subscription timed out; retrying");
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        metrics::gauge!(telemetry::REDIS_WAKE_SUBSCRIBED).set(1.0);
        // Whatever was published while we were not subscribed is lost.
        wakeups.wake_all();
        let (mut sink, mut messages) = pubsub.split();
        // A connection that died without a FIN (a middlebox dropped it)
        // delivers nothing and never ends: PING it, and start over when the
        // answer does not come.
        let mut keepalive = tokio::time::interval(SUBSCRIBER_PING_EVERY);
        keepalive.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let payload: &[u8] = message.get_payload_bytes();
                    let text = String::from_utf8_lossy(payload);
                    let mut parts = text.splitn(2, '\n');
                    let ticket = parts.next().and_then(|t| PermitId::parse(t).ok());
                    let cause_us = parts.next().and_then(|us| us.parse().ok());
                    if let Some(ticket) = ticket {
                        wakeups.wake(ticket, cause_us);
                    }
                }
                _ = keepalive.tick() => {
                    let pong = tokio::time::timeout(connect_timeout, sink.ping::<Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        metrics::gauge!(telemetry::REDIS_WAKE_SUBSCRIBED).set(0.0);
        tracing::warn!("wake subscription lost; waiting acquires re-check");
        wakeups.wake_all();
    }
}

/// A script's array reply, read front to back.
struct Reply(std::vec::IntoIter<Value>);

impl Reply {
    fn new(values: Vec<Value>) -> Self {
        Self(values.into_iter())
    }

    fn next_value(&mut self) -> Result<Value, StoreError> {
        self.0
            .next()
            .ok_or_else(|| StoreError::Internal("script reply too short".into()))
    }

    fn string(&mut self) -> Result<String, StoreError> {
        redis::from_redis_value(self.next_value()?)
            .map_err(|e| StoreError::Internal(format!("bad script reply: {e}")))
    }

    fn int(&mut self) -> Result<i64, StoreError> {
        redis::from_redis_value(self.next_value()?)
            .map_err(|e| StoreError::Internal(format!("bad script reply: {e}")))
    }

    fn uint(&mut self) -> Result<u64, StoreError> {
        u64::try_from(self.int()?).map_err(|_| StoreError::Internal("negative in reply".into()))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        u32::try_from(self.int()?).map_err(|_| StoreError::Internal("out of range reply".into()))
    }

    fn holder(&mut self) -> Result<Option<String>, StoreError> {
        let holder = self.string()?;
        Ok((!holder.is_empty()).then_some(holder))
    }

    /// The `id, count, fence, acquired_ms, expires_ms, holder` tail.
    fn permit(&mut self, semaphore: &SemaphoreName) -> Result<Permit, StoreError> {
        let id = PermitId::parse(&self.string()?)
            .map_err(|_| StoreError::Internal("bad permit id in store".into()))?;
        Ok(Permit {
            id,
            semaphore: semaphore.clone(),
            count: self.u32()?,
            fencing_token: self.uint()?,
            acquired_at: Millis(self.uint()?),
            expires_at: Millis(self.uint()?),
            holder: self.holder()?,
        })
    }
}

fn unexpected(tag: &str) -> StoreError {
    StoreError::Internal(format!("unexpected script reply {tag:?}"))
}

#[async_trait]
impl SemaphoreStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let call = async {
            let mut pooled = self.pool.get().await.map_err(classify_pool)?;
            let reply = redis::cmd("PING")
                .query_async::<String>(&mut pooled.connection)
                .await;
            reply.map_err(|e| self.connection_failed(pooled, e))
        };
        self.timed("ping", call).await?;
        Ok(())
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        let status = self.pool.status();
        Some(PoolStatus {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        })
    }

    async fn set_limit(
        &self,
        name: &SemaphoreName,
        limit: Limit,
    ) -> Result<SetLimitOutcome, StoreError> {
        let limit = limit.get().to_string();
        let mut reply = Reply::new(self.run(&SET_LIMIT, name, &[&limit]).await?);
        match reply.string()?.as_str() {
            "created" => Ok(SetLimitOutcome::Created),
            "unchanged" => Ok(SetLimitOutcome::Unchanged),
            "changed" => Ok(SetLimitOutcome::Changed {
                previous: reply.u32()?,
            }),
            tag => Err(unexpected(tag)),
        }
    }

    async fn status(&self, name: &SemaphoreName) -> Result<Option<SemaphoreStatus>, StoreError> {
        let max = MAX_LISTED_HOLDERS.to_string();
        let mut reply = Reply::new(self.run(&STATUS, name, &[&max]).await?);
        match reply.string()?.as_str() {
            "not_found" => Ok(None),
            "found" => {
                let limit = reply.u32()?;
                let held = reply.u32()?;
                let waiting = reply.u32()?;
                let listed = reply.uint()?;
                let mut holders = Vec::with_capacity(listed as usize);
                for _ in 0..listed {
                    holders.push(HolderInfo {
                        count: reply.u32()?,
                        fencing_token: reply.uint()?,
                        acquired_at: Millis(reply.uint()?),
                        expires_at: Millis(reply.uint()?),
                        holder: reply.holder()?,
                    });
                }
                Ok(Some(SemaphoreStatus {
                    name: name.clone(),
                    limit,
                    held,
                    waiting,
                    holders,
                }))
            }
            tag => Err(unexpected(tag)),
        }
    }

    async fn delete(&self, name: &SemaphoreName) -> Result<bool, StoreError> {
        let existed: i64 = self.run(&DELETE, name, &[]).await?;
        Ok(existed == 1)
    }

    async fn attempt(
        &self,
        request: &AcquireRequest,
        ticket: PermitId,
        queue: bool,
    ) -> Result<Attempt, StoreError> {
        let limit = request
            .limit
            .map(|l| l.get().to_string())
            .unwrap_or_default();
        let count = request.count.get().to_string();
        let ttl = request.ttl.as_millis().to_string();
        let holder = request.holder.as_ref().map(|h| h.as_str()).unwrap_or("");
        let key = request
            .idempotency_key
            .as_ref()
            .map(|k| k.as_str())
            .unwrap_or("");
        let fingerprint = request.fingerprint();
        let ticket = ticket.to_string();
        let args = [
            limit.as_str(),
            &count,
            &ttl,
            holder,
            key,
            &fingerprint,
            &ticket,
            if queue { "1" } else { "0" },
            &self.waiter_lease_ms,
            &self.wake_channel,
        ];
        let mut reply = Reply::new(self.run(&ACQUIRE, &request.name, &args).await?);
        let tag = reply.string()?;
        let clock_us = reply.uint()?;
        let outcome = match tag.as_str() {
            "granted" => AcquireOutcome::Granted(reply.permit(&request.name)?),
            "replayed" => AcquireOutcome::Replayed(reply.permit(&request.name)?),
            "not_found" => AcquireOutcome::NotFound,
            "mismatch" => AcquireOutcome::IdempotencyMismatch,
            "conflict" => AcquireOutcome::LimitConflict {
                current: reply.u32()?,
            },
            "too_large" => AcquireOutcome::CountExceedsLimit {
                limit: reply.u32()?,
            },
            "unavailable" => AcquireOutcome::Unavailable {
                limit: reply.u32()?,
                held: reply.u32()?,
                retry_after_ms: u64::try_from(reply.int()?).ok(),
            },
            "queued" => {
                return Ok(Attempt::Queued {
                    position: reply.u32()?,
                    soonest_expiry: u64::try_from(reply.int()?).ok().map(Duration::from_millis),
                    soonest_waiter_lease: u64::try_from(reply.int()?)
                        .ok()
                        .map(Duration::from_millis),
                });
            }
            tag => return Err(unexpected(tag)),
        };
        Ok(Attempt::Done { outcome, clock_us })
    }

    async fn leave(&self, name: &SemaphoreName, ticket: PermitId) -> Result<(), StoreError> {
        let ticket = ticket.to_string();
        let _: i64 = self
            .run(&LEAVE, name, &[&ticket, &self.withdrawal_ms])
            .await?;
        Ok(())
    }

    fn wakeups(&self) -> &Arc<Wakeups> {
        &self.wakeups
    }

    async fn permit(
        &self,
        name: &SemaphoreName,
        id: PermitId,
    ) -> Result<Option<Permit>, StoreError> {
        let id = id.to_string();
        let mut reply = Reply::new(self.run(&PERMIT, name, &[&id]).await?);
        match reply.string()?.as_str() {
            "gone" => Ok(None),
            "live" => Ok(Some(reply.permit(name)?)),
            tag => Err(unexpected(tag)),
        }
    }

    async fn refresh(
        &self,
        name: &SemaphoreName,
        id: PermitId,
        ttl: Ttl,
    ) -> Result<Option<Permit>, StoreError> {
        let id = id.to_string();
        let ttl = ttl.as_millis().to_string();
        let mut reply = Reply::new(self.run(&REFRESH, name, &[&id, &ttl]).await?);
        match reply.string()?.as_str() {
            "gone" => Ok(None),
            "live" => Ok(Some(reply.permit(name)?)),
            tag => Err(unexpected(tag)),
        }
    }

    async fn release(
        &self,
        name: &SemaphoreName,
        id: PermitId,
    ) -> Result<ReleaseOutcome, StoreError> {
        let id = id.to_string();
        let released: i64 = self.run(&RELEASE, name, &[&id]).await?;
        Ok(match released {
            1 => ReleaseOutcome::Released,
            -1 => ReleaseOutcome::NoSemaphore,
            _ => ReleaseOutcome::NoPermit,
        })
    }
}
