//! The Redis store: semaphores shared by every permitd instance on one Redis.
//!
//! Each operation is one Lua script from `scripts/` (a shared prelude plus a
//! body), run on the semaphore's master as a function of one library (FCALL,
//! Redis 7 on) or with EVALSHA (before 7). The scripts own the
//! semantics; this module only passes keys and arguments and decodes replies.
//! Three deployments (`RedisTarget`): one Redis, Redis behind Sentinel, or a
//! Redis Cluster; every script touches only its own semaphore's slot, so all
//! three run the same scripts. Its parts: `nodes` (where a call goes, per
//! mode), `connection` (the pool to one master), `failure` (what Redis
//! answers mean to a caller), `sentinel` (which master, and the switches),
//! `cluster` (the cluster connection), `pubsub` (following a subscription),
//! `tls`, `scripts` (the script registry
//! and the key list), `subscriber` (the wake subscription) and `reply`
//! (decoding).
//! Every reply comes wrapped as `{swept, reply}`, where `swept` counts
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
//! there when it may proceed (or, for a new head of the queue that does not
//! fit, when the soonest lease ends), and the subscriber task passes it to
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
//! pool, so the store recovers by itself when Redis comes back. Calls share
//! the pooled connections instead of holding one each (see `connection`):
//! concurrent calls are pipelined on one socket, which cut the syscalls per
//! uncontended cycle from 8.9 to 6.9 in permitd and from 4.5 to 1.6 in Redis.

mod clock;
mod cluster;
mod connection;
mod failure;
mod nodes;
mod pubsub;
mod reply;
mod scripts;
mod sentinel;
mod server;
mod subscriber;
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_redis::redis;
use futures::StreamExt;

use self::clock::StoreClock;
use self::cluster::Cluster;
use self::connection::{Pool, Source};
use self::nodes::{Calling, Nodes, Wait};
use self::reply::{Reply, unexpected};
use self::scripts::{
    ACQUIRE, DELETE, LEAVE, NamedScript, PERMIT, REFRESH, RELEASE, SET_LIMIT, STATUS, SWEEP,
};
use self::sentinel::{NodeAuth, Sentinel};
use self::subscriber::WakeSource;
pub use self::tls::RedisTls;
use super::{
    Attempt, Lifecycle, ListCursor, ListError, PoolStatus, SemaphoreStore, StoreError, StoreReport,
    Wakeups,
};
use crate::secret::{Secret, redact_url};
use crate::semaphore::{
    AcquireOutcome, AcquireRequest, HolderInfo, IdleTtl, Limit, MAX_LISTED_HOLDERS, Millis, Permit,
    PermitId, ReleaseOutcome, SemaphoreName, SemaphorePage, SemaphoreStatus, SemaphoreSummary,
    SetLimitOutcome, Ttl,
};
use crate::telemetry;

/// Which Redis deployment: exactly one of the three. URLs may hold passwords:
/// `Debug` prints them as `***`.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One Redis (`--redis-url`).
    Standalone(Secret),
    /// A Redis Cluster, found from these seed nodes (`--redis-cluster`).
    Cluster(Vec<Secret>),
    /// The master that these sentinels name `master` (`--redis-sentinels`);
    /// the data nodes' credentials when they differ from the sentinels'.
    Sentinel {
        sentinels: Vec<Secret>,
        master: String,
        username: Option<String>,
        password: Option<Secret>,
    },
}

impl RedisTarget {
    /// Every URL given: the one Redis, the seeds or the sentinels.
    fn urls(&self) -> impl Iterator<Item = &Secret> {
        match self {
            Self::Standalone(url) => std::slice::from_ref(url).iter(),
            Self::Cluster(urls)
            | Self::Sentinel {
                sentinels: urls, ..
            } => urls.iter(),
        }
    }

    /// The URLs, passwords redacted, for logs.
    pub fn describe(&self) -> String {
        let list = |urls: &[Secret]| {
            urls.iter()
                .map(|url| redact_url(url.expose()))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Self::Standalone(url) => redact_url(url.expose()),
            Self::Cluster(seeds) => list(seeds),
            Self::Sentinel {
                sentinels, master, ..
            } => format!("{master} via {}", list(sentinels)),
        }
    }
}

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    /// Certificates for `rediss://` beyond the system's trusted roots.
    pub tls: RedisTls,
    pub key_prefix: String,
    pub pool_size: usize,
    /// Bound on establishing one new connection.
    pub connect_timeout: Duration,
    /// Bound on one whole store call: checkout, connect and script.
    pub timeout: Duration,
    /// How long the queue keeps a waiter its instance stopped renewing.
    pub waiter_lease: Duration,
    /// Replicas that must acknowledge each write (`WAIT`); 0: none.
    pub wait_replicas: u32,
    /// Idle semaphores and ended Idempotency-Keys: how long they are kept.
    pub lifecycle: Lifecycle,
}

pub struct RedisStore {
    nodes: Nodes,
    /// How scripts are called (FCALL on Redis 7 on), read from the masters'
    /// version before the first script.
    calling: tokio::sync::OnceCell<Calling>,
    /// Set once a node refused Functions (its ACL) and EVALSHA worked: every
    /// later call then runs as EVALSHA.
    functions_refused: AtomicBool,
    wait: Option<Wait>,
    prefix: String,
    timeout: Duration,
    waiter_lease_ms: String,
    /// How long `leave` remembers a withdrawn ticket: longer than any call
    /// can be in flight (the call timeout) and than a waiter lease.
    withdrawal_ms: String,
    wake_channel: String,
    /// The two ARGV every script gets last (see prelude.lua): the default
    /// idle TTL and the Idempotency-Key retention, in ms.
    lifecycle_args: [String; 2],
    /// The default idle TTL, for status replies that name none.
    idle_ttl: Option<Duration>,
    /// The Redis clock as last seen, for the deadlines passed to attempts.
    clock: StoreClock,
    wakeups: Arc<Wakeups>,
    /// The wake subscriber, and (Sentinel) the watch on the sentinels.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RedisStore {
    /// Builds the connections and starts the subscriber task (so it must be
    /// called inside a Tokio runtime). No connection is made yet: an
    /// unreachable Redis at start is reported by `ping` (and `/readyz`), not
    /// by a failed start.
    ///
    /// # Errors
    /// When a URL cannot be parsed, or a certificate file read.
    pub fn new(settings: &RedisSettings) -> Result<Self, StoreError> {
        let certificates = settings
            .tls
            .certificates(settings.target.urls().map(Secret::expose))?;
        let failures = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let wake_channel = format!("{}wake:{}", settings.key_prefix, uuid::Uuid::new_v4());
        let wakeups = Wakeups::new();
        let subscribe = |source| {
            tokio::spawn(subscriber::subscribe(
                source,
                wake_channel.clone(),
                wakeups.clone(),
                settings.connect_timeout,
            ))
        };
        let nodes = match &settings.target {
            RedisTarget::Standalone(url) => {
                let client = tls::client(url.expose(), certificates.as_ref())?;
                let pool = Pool::new(Source::Direct(Box::new(client.clone())), failures, settings)?;
                tasks.push(subscribe(WakeSource::Direct(Box::new(client))));
                Nodes::Single {
                    pool,
                    sentinel: None,
                }
            }
            RedisTarget::Cluster(seeds) => {
                let cluster = Arc::new(Cluster::new(
                    seeds,
                    certificates,
                    settings.connect_timeout,
                    settings.timeout,
                )?);
                tasks.push(tokio::spawn(subscriber::subscribe_cluster(
                    cluster.clone(),
                    wake_channel.clone(),
                    wakeups.clone(),
                    settings.connect_timeout,
                )));
                Nodes::Cluster(cluster)
            }
            RedisTarget::Sentinel {
                sentinels,
                master,
                username,
                password,
            } => {
                let auth = NodeAuth {
                    username: username.clone(),
                    password: password.clone(),
                    certificates,
                };
                let sentinel = Arc::new(Sentinel::new(
                    sentinels,
                    master,
                    auth,
                    failures.clone(),
                    settings.connect_timeout,
                )?);
                tasks.push(tokio::spawn(sentinel.clone().watch()));
                let pool = Pool::new(Source::Sentinel(sentinel.clone()), failures, settings)?;
                tasks.push(subscribe(WakeSource::Sentinel(sentinel.clone())));
                Nodes::Single {
                    pool,
                    sentinel: Some(sentinel),
                }
            }
        };
        Ok(Self {
            nodes,
            calling: tokio::sync::OnceCell::new(),
            functions_refused: AtomicBool::new(false),
            // WAIT answers within half the call's bound, so that a shortfall
            // is reported as such rather than as a timeout.
            wait: (settings.wait_replicas > 0).then(|| Wait {
                replicas: settings.wait_replicas,
                timeout_ms: u64::try_from(settings.timeout.as_millis() / 2)
                    .unwrap_or(u64::MAX)
                    .max(1),
            }),
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            waiter_lease_ms: settings.waiter_lease.as_millis().to_string(),
            withdrawal_ms: (settings.waiter_lease.max(settings.timeout) * 2)
                .as_millis()
                .to_string(),
            wake_channel,
            lifecycle_args: [
                settings
                    .lifecycle
                    .idle_ttl
                    .map_or(0, |ttl| ttl.as_millis())
                    .to_string(),
                settings
                    .lifecycle
                    .idempotency_retention
                    .as_millis()
                    .to_string(),
            ],
            idle_ttl: settings.lifecycle.idle_ttl,
            clock: StoreClock::default(),
            wakeups,
            tasks,
        })
    }

    /// The masters' `INFO`, checked: the warnings, and how scripts are
    /// called (Functions when every master is Redis 7 or newer).
    async fn checked_infos(&self) -> Result<(usize, Vec<String>), StoreError> {
        let infos = self.nodes.infos().await?;
        let mut warnings = Vec::new();
        let mut redis_7 = true;
        for info in &infos {
            for warning in server::check(info)? {
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
            redis_7 &= server::is_redis_7(info);
        }
        // Set once: a later answer (an upgrade) changes nothing that matters,
        // since a newer Redis also runs the scripts an older one does.
        let calling = if redis_7 {
            Calling::Functions
        } else {
            Calling::Scripts { flags: false }
        };
        let _ = self.calling.set(calling);
        Ok((infos.len(), warnings))
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
            let mut calling = match self.calling.get() {
                Some(calling) => *calling,
                None => {
                    self.checked_infos().await?;
                    self.calling
                        .get()
                        .copied()
                        .unwrap_or(Calling::Scripts { flags: false })
                }
            };
            if calling == Calling::Functions && self.functions_refused.load(Ordering::Relaxed) {
                calling = Calling::Scripts { flags: true };
            }
            let keys = scripts::keys(&self.prefix, name);
            let wait = self.wait.filter(|_| named.writes);
            let mut all = Vec::with_capacity(args.len() + 2);
            all.extend_from_slice(args);
            all.extend(self.lifecycle_args.iter().map(String::as_str));
            self.nodes
                .call::<(u64, T)>(named, calling, &self.functions_refused, &keys, &all, wait)
                .await
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
    /// The semaphore a `…{name}:meta` key under our prefix belongs to.
    fn name_of_meta_key(&self, key: &str) -> Option<SemaphoreName> {
        let tagged = key.strip_prefix(&self.prefix)?.strip_suffix(":meta")?;
        let name = tagged.strip_prefix('{')?.strip_suffix('}')?;
        SemaphoreName::parse(name).ok()
    }

    /// A listing line: the status script with no holders listed.
    async fn summary(&self, name: &SemaphoreName) -> Result<Option<SemaphoreSummary>, StoreError> {
        let (tag, mut reply) = self.status_reply(name, "0").await?;
        match tag.as_str() {
            "not_found" => Ok(None),
            "found" => Ok(Some(SemaphoreSummary {
                name: name.clone(),
                limit: reply.u32()?,
                held: reply.u32()?,
                waiting: reply.u32()?,
            })),
            tag => Err(unexpected(tag)),
        }
    }
}

impl RedisStore {
    /// The status script's reply and its tag, after sweeping as long as it
    /// finds more ended leases than one call subtracts (see status.lua).
    async fn status_reply(
        &self,
        name: &SemaphoreName,
        max: &str,
    ) -> Result<(String, Reply), StoreError> {
        let mut calls = 0;
        loop {
            let mut reply = Reply::new(self.run(&STATUS, name, &[max]).await?);
            let tag = reply.string()?;
            if tag != "sweeping" {
                return Ok((tag, reply));
            }
            loop {
                calls += 1;
                if calls > MAX_SWEEP_CALLS {
                    return Err(still_sweeping());
                }
                if self.run::<i64>(&SWEEP, name, &[]).await? == 0 {
                    break;
                }
            }
        }
    }
}

/// The most SCAN calls one listing page makes: a keyspace where few keys
/// match ends a page early (with a cursor) rather than running long.
const MAX_SCAN_STEPS: usize = 64;

/// How many of a listing page's status calls run at once, so that calls
/// served meanwhile, pipelined on the same connection, queue behind a few
/// of them rather than a whole page.
const LIST_STATUSES_AT_ONCE: usize = 8;

/// The most calls one acquire or status makes while ended leases are swept
/// (see prelude.lua's `sweep_capped`): 500 leases a call, so 1,000 calls
/// sweep half a million leases that ended together.
const MAX_SWEEP_CALLS: usize = 1_000;

fn still_sweeping() -> StoreError {
    StoreError::Unavailable("more leases ended than this call could sweep".into())
}

/// `text` matched literally by a `SCAN MATCH` glob.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[async_trait]
impl SemaphoreStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // TIME rather than PING: as cheap, and it also tells the Redis clock.
        let time = redis::cmd("TIME");
        let call = self.nodes.command(&time);
        let (secs, micros): (u64, u64) = self.timed("ping", call).await?;
        self.clock.observe(secs * 1_000_000 + micros);
        Ok(())
    }

    async fn report(&self) -> Result<StoreReport, StoreError> {
        let (masters, warnings) = self.timed("info", self.checked_infos()).await?;
        let mode = self.nodes.mode();
        Ok(StoreReport {
            mode: Some(mode),
            masters: (mode == "cluster").then_some(masters),
            warnings,
        })
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        self.nodes.pool_status()
    }

    async fn set_limit(
        &self,
        name: &SemaphoreName,
        limit: Limit,
        idle_ttl: IdleTtl,
    ) -> Result<SetLimitOutcome, StoreError> {
        let limit = limit.get().to_string();
        let idle = match idle_ttl {
            IdleTtl::Keep => String::new(),
            IdleTtl::Never => "0".into(),
            IdleTtl::After(ttl) => ttl.as_millis().max(1).to_string(),
        };
        let mut reply = Reply::new(self.run(&SET_LIMIT, name, &[&limit, &idle]).await?);
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
        let (tag, mut reply) = self.status_reply(name, &max).await?;
        match tag.as_str() {
            "not_found" => Ok(None),
            "found" => {
                let limit = reply.u32()?;
                let held = reply.u32()?;
                let waiting = reply.u32()?;
                let idle_ttl = match reply.string()?.as_str() {
                    "" => self.idle_ttl,
                    "0" => None,
                    ms => Some(Duration::from_millis(ms.parse().map_err(|_| {
                        StoreError::Internal(format!("bad idle TTL {ms:?} in store"))
                    })?)),
                };
                let listed = reply.uint()?;
                let mut holders = Vec::with_capacity(listed as usize);
                for _ in 0..listed {
                    holders.push(HolderInfo {
                        id: reply.permit_id()?,
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
                    idle_ttl,
                    holders,
                }))
            }
            tag => Err(unexpected(tag)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SemaphorePage, ListError> {
        // On Redis the cursor is the master (its lowest slot), the SCAN
        // cursor on it, and (rarely, see below) the last name listed from
        // the step that cursor starts.
        let mut at = match cursor {
            Some(text) => ListCursor::parse(text).ok_or(ListError::BadCursor)?,
            None => ListCursor::default(),
        };
        // Names hold no glob characters (see SemaphoreName); the key prefix
        // may, so it is escaped.
        let pattern = format!("{}{{{prefix}*}}:meta", glob_escape(&self.prefix));
        let mut names: Vec<SemaphoreName> = Vec::new();
        let mut steps = 0;
        let masters = self.timed("scan", self.nodes.masters()).await?;
        // Keys scanned per call: a step that overflows the page ends it
        // early, so a few more than the page holds cost nothing.
        let count = limit.max(16);
        let next = loop {
            let step = self.nodes.scan(&masters, at.node, at.scan, &pattern, count);
            let Some(step) = self.timed("scan", step).await? else {
                break None;
            };
            let started = ListCursor {
                node: step.master,
                scan: step.cursor,
                after: None,
            };
            let after = at.after.take().filter(|_| started.node == at.node);
            let mut found: Vec<SemaphoreName> = step
                .keys
                .iter()
                .filter_map(|key| self.name_of_meta_key(key))
                .filter(|name| after.as_deref().is_none_or(|after| name.as_str() > after))
                .collect();
            found.sort();
            found.dedup();
            // SCAN may return a key twice (a rehash between calls).
            found.retain(|name| !names.contains(name));
            // A step is not split between pages: SCAN's promise (every key
            // present throughout is returned) holds for whole steps from the
            // cursors it gave, not for a step run again and cut. So a step
            // that does not fit ends the page before it...
            if !names.is_empty() && names.len() + found.len() > limit {
                break Some(started);
            }
            // ...unless it alone holds more than a page (its buckets held
            // more than COUNT asked for): then it is cut after the last name
            // listed, and run again for the rest, the one case where a name
            // added or removed meanwhile may be missed.
            if found.len() > limit {
                found.truncate(limit);
                let last = found.last().map(|n| n.as_str().to_owned());
                names.extend(found);
                break Some(ListCursor {
                    after: last,
                    ..started
                });
            }
            names.extend(found);
            at = if step.next == 0 {
                let Some(node) = step.master.checked_add(1) else {
                    break None;
                };
                ListCursor {
                    node,
                    ..ListCursor::default()
                }
            } else {
                ListCursor {
                    scan: step.next,
                    ..started
                }
            };
            steps += 1;
            // Bounded work per page, also where few keys match.
            if names.len() >= limit || steps == MAX_SCAN_STEPS {
                break Some(at);
            }
        };
        // A few at a time, in order: a page of 1,000 names all at once took
        // every pooled connection when calls held one each, and would now
        // queue 1,000 scripts ahead of every acquire on the shared one.
        let calls: Vec<_> = names.iter().map(|name| self.summary(name)).collect();
        let statuses: Vec<_> = futures::stream::iter(calls)
            .buffered(LIST_STATUSES_AT_ONCE)
            .collect()
            .await;
        let semaphores = statuses
            .into_iter()
            .filter_map(Result::transpose)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SemaphorePage {
            semaphores,
            next_cursor: next.map(|c| c.render()),
        })
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
        // Handed its permit by the release (see prelude.lua's hand_off) only
        // when it waits here, to answer from the grant, and when answers need
        // no WAIT for replicas first (a handed grant is answered before any).
        let handoff = queue && self.wait.is_none() && self.wakeups.waits(ticket);
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
            "",
            if handoff { "1" } else { "0" },
        ];
        // A call that found more ended leases than one call sweeps asks to
        // be called again (see prelude.lua's `sweep_capped`); each call
        // sweeps more. Bounded, so a store that keeps asking is a failure.
        let mut calls = 0;
        let (mut reply, tag, clock_us) = loop {
            let deadline = self.clock.deadline_ms(self.timeout);
            let mut args = args;
            args[10] = &deadline;
            let mut reply = Reply::new(self.run(&ACQUIRE, &request.name, &args).await?);
            let tag = reply.string()?;
            let clock_us = reply.uint()?;
            self.clock.observe(clock_us);
            calls += 1;
            match tag.as_str() {
                "sweeping" if calls < MAX_SWEEP_CALLS => {}
                "sweeping" => return Err(still_sweeping()),
                _ => break (reply, tag, clock_us),
            }
        };
        let outcome = match tag.as_str() {
            "late" => {
                return Err(StoreError::Unavailable(
                    "the attempt reached Redis after its caller gave up".into(),
                ));
            }
            "granted" => AcquireOutcome::Granted(reply.permit(&request.name)?),
            "replayed" => AcquireOutcome::Replayed(reply.permit(&request.name)?),
            "not_found" => AcquireOutcome::NotFound,
            "mismatch" => AcquireOutcome::IdempotencyMismatch,
            "in_flight" => AcquireOutcome::IdempotencyInFlight,
            "ended" => AcquireOutcome::PermitEnded,
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
