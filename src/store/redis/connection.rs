//! Connections to one master at a time (standalone, or the one Sentinel
//! names): a deadpool pool of multiplexed connections with our own manager
//! (see the module docs of `store::redis` for when it PINGs). Calls share
//! them: a call checks one out and gives it back at once, keeping a clone,
//! so concurrent calls go on one connection and redis-rs pipelines them;
//! only a call that ends with `WAIT` keeps its connection out of the pool
//! until it is done (see [`Pool::checkout`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig};

use super::RedisSettings;
use super::failure::{classify, is_unusable};
use super::sentinel::{NodeAddr, Sentinel};
use crate::store::{PoolStatus, StoreError};

/// Connections idle longer than this are PINGed before reuse: Redis may have
/// restarted, or a middlebox dropped the connection, while nobody used it.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

/// One pooled connection, the failure generation it was last checked in,
/// and (Sentinel) the master it was opened to.
pub(super) struct Pooled {
    pub(super) connection: MultiplexedConnection,
    /// Set when a call found the connection unusable: it is dropped at its
    /// next checkout.
    unusable: Arc<AtomicBool>,
    checked_in_generation: u64,
    master: Option<NodeAddr>,
}

/// A clone of a pooled connection for one call; see [`Pool::checkout`].
pub(super) struct Checkout {
    pub(super) connection: MultiplexedConnection,
    unusable: Arc<AtomicBool>,
    /// The pooled connection itself, kept out of the pool while the call
    /// runs; `None` once it is back, shared.
    _held: Option<Object<Connector>>,
}

/// Where new connections go.
pub(super) enum Source {
    /// One Redis, at the URL given.
    Direct(Box<redis::Client>),
    /// Whichever master the sentinels name now.
    Sentinel(Arc<Sentinel>),
}

/// Opens multiplexed connections with our timeouts; see the module docs for
/// when it PINGs.
pub(super) struct Connector {
    source: Source,
    config: AsyncConnectionConfig,
    /// Bumped on every connection error and every master switch: connections
    /// checked before it are suspect and get checked on their next checkout.
    failures: Arc<AtomicU64>,
}

impl managed::Manager for Connector {
    type Type = Pooled;
    type Error = StoreError;

    async fn create(&self) -> Result<Pooled, StoreError> {
        let generation = self.failures.load(Ordering::Relaxed);
        let (client, master) = match &self.source {
            Source::Direct(client) => (client.as_ref().clone(), None),
            Source::Sentinel(sentinel) => {
                let (client, addr) = sentinel.master().await?;
                (client, Some(addr))
            }
        };
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(classify)?;
        if master.is_some() {
            // The sentinels may name a master that has not taken the role
            // yet, or one that was just demoted: only a master is used.
            ensure_master(&mut connection).await?;
        }
        Ok(Pooled {
            connection,
            unusable: Arc::default(),
            checked_in_generation: generation,
            master,
        })
    }

    async fn recycle(&self, pooled: &mut Pooled, metrics: &Metrics) -> RecycleResult<StoreError> {
        if let (Source::Sentinel(sentinel), Some(master)) = (&self.source, &pooled.master)
            && !sentinel.is_current(master)
        {
            // The sentinels switched masters: the old one may still accept
            // writes for a while, which its demotion then throws away.
            return Err(RecycleError::message("the master has changed"));
        }
        if pooled.unusable.load(Ordering::Relaxed) {
            return Err(RecycleError::message(
                "a call found the connection unusable",
            ));
        }
        let generation = self.failures.load(Ordering::Relaxed);
        if pooled.checked_in_generation == generation && metrics.last_used() < IDLE_BEFORE_PING {
            return Ok(());
        }
        if pooled.master.is_some() {
            ensure_master(&mut pooled.connection)
                .await
                .map_err(RecycleError::Backend)?;
        } else {
            let pong: String = redis::cmd("PING")
                .query_async(&mut pooled.connection)
                .await
                .map_err(|e| RecycleError::Backend(classify(e)))?;
            if pong != "PONG" {
                return Err(RecycleError::message("unexpected PING reply"));
            }
        }
        pooled.checked_in_generation = generation;
        Ok(())
    }
}

/// `ROLE` says `master`, or the connection is not used.
async fn ensure_master(connection: &mut MultiplexedConnection) -> Result<(), StoreError> {
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(connection)
        .await
        .map_err(classify)?;
    match role.first() {
        Some(redis::Value::BulkString(role)) if role.as_slice() == b"master" => Ok(()),
        _ => Err(StoreError::Unavailable(
            "the node Sentinel names is not a master (yet): a failover is under way".into(),
        )),
    }
}

/// The pool every script call checks a connection out of.
pub(super) struct Pool(managed::Pool<Connector>);

impl Pool {
    /// Builds the pool; no connection is made yet. `failures` is shared with
    /// whoever else may make every connection suspect (the Sentinel watcher).
    ///
    /// # Errors
    /// When the pool's settings are invalid.
    pub(super) fn new(
        source: Source,
        failures: Arc<AtomicU64>,
        settings: &RedisSettings,
    ) -> Result<Self, StoreError> {
        let connector = Connector {
            source,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.timeout)),
            failures,
        };
        let pool = managed::Pool::builder(connector)
            .max_size(settings.pool_size)
            .timeouts(Timeouts {
                wait: Some(settings.timeout),
                create: Some(settings.connect_timeout),
                recycle: Some(settings.connect_timeout),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Internal(format!("bad Redis pool configuration: {e}")))?;
        Ok(Self(pool))
    }

    /// A connection for one call, opened or recycled (PINGed when suspect)
    /// within the pool's timeouts. Given back to the pool at once, to be
    /// shared, unless `keep`: a call that ends with `WAIT` keeps it out of
    /// the pool until it is done, as `WAIT` blocks the connection until the
    /// replicas answer. Calls that cloned it before may still send on it
    /// meanwhile, but only their retries (a library load after a flush),
    /// which then wait behind the `WAIT`.
    pub(super) async fn checkout(&self, keep: bool) -> Result<Checkout, StoreError> {
        let pooled = self.0.get().await.map_err(classify_pool)?;
        Ok(Checkout {
            connection: pooled.connection.clone(),
            unusable: Arc::clone(&pooled.unusable),
            _held: keep.then_some(pooled),
        })
    }

    /// Classifies a command error; a connection-level one also marks the
    /// connection to be dropped at its next checkout, and makes every other
    /// pooled connection suspect.
    pub(super) fn failed(&self, checkout: &Checkout, e: redis::RedisError) -> StoreError {
        if is_unusable(&e) {
            checkout.unusable.store(true, Ordering::Relaxed);
            self.0.manager().failures.fetch_add(1, Ordering::Relaxed);
        }
        classify(e)
    }

    pub(super) fn status(&self) -> PoolStatus {
        let status = self.0.status();
        PoolStatus {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        }
    }
}

fn classify_pool(e: PoolError<StoreError>) -> StoreError {
    match e {
        PoolError::Backend(e) => e,
        PoolError::Timeout(_) => StoreError::Unavailable("no Redis connection in time".into()),
        other => StoreError::Unavailable(other.to_string()),
    }
}
