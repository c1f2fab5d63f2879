//! Connections to one Redis: a deadpool pool of multiplexed connections with
//! our own manager (see the module docs of `store::redis` for when it PINGs),
//! and the classification of what Redis answers into `StoreError`.
//!
//! The one place that opens connections, so the other ways of reaching
//! Redis (Sentinel, Cluster, TLS) slot in here behind the same `Pool`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, ClientTlsConfig, RetryMethod, TlsCertificates,
};

use super::RedisSettings;
use crate::store::{PoolStatus, StoreError};

/// Connections idle longer than this are PINGed before reuse: Redis may have
/// restarted, or a middlebox dropped the connection, while nobody used it.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

/// One pooled connection and the failure generation it was last checked in.
pub(super) struct Pooled {
    pub(super) connection: MultiplexedConnection,
    checked_in_generation: u64,
}

/// Opens multiplexed connections with our timeouts; see the module docs for
/// when it PINGs.
pub(super) struct Connector {
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

/// Certificate files for TLS (`rediss://`), beyond the system's roots.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// The CA that signed the server's certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for `tls-auth-clients yes`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl RedisTls {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

fn read_pem(flag: &str, path: &PathBuf) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|e| StoreError::Internal(format!("cannot read {flag} {}: {e}", path.display())))
}

/// The client for `url`, with the TLS certificates when given.
///
/// # Errors
/// When the URL cannot be parsed, certificate files are given for a URL
/// that is not `rediss://`, only one of the client certificate and key is
/// given, or a file cannot be read or parsed.
pub(super) fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, StoreError> {
    if !tls.is_set() {
        return redis::Client::open(url)
            .map_err(|e| StoreError::Internal(format!("bad Redis URL: {e}")));
    }
    if !url.starts_with("rediss://") {
        return Err(StoreError::Internal(
            "--redis-tls-* files are for TLS: use a rediss:// URL".into(),
        ));
    }
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_pem("--redis-tls-cert-file", cert)?,
            client_key: read_pem("--redis-tls-key-file", key)?,
        }),
        _ => {
            return Err(StoreError::Internal(
                "--redis-tls-cert-file and --redis-tls-key-file go together".into(),
            ));
        }
    };
    let root_cert = match &tls.ca_file {
        Some(ca) => Some(read_pem("--redis-tls-ca-file", ca)?),
        None => None,
    };
    redis::Client::build_with_tls(
        url,
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| StoreError::Internal(format!("bad Redis TLS configuration: {e}")))
}

/// The pool every script call checks a connection out of.
pub(super) struct Pool(managed::Pool<Connector>);

/// A checked-out connection; back in the pool when dropped.
pub(super) type Connection = Object<Connector>;

impl Pool {
    /// Builds the pool; no connection is made yet.
    ///
    /// # Errors
    /// When the URL cannot be parsed.
    pub(super) fn new(client: redis::Client, settings: &RedisSettings) -> Result<Self, StoreError> {
        let connector = Connector {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.timeout)),
            failures: AtomicU64::new(0),
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

    /// A connection, opened or recycled within the pool's timeouts.
    pub(super) async fn get(&self) -> Result<Connection, StoreError> {
        self.0.get().await.map_err(classify_pool)
    }

    /// Classifies a command error; a connection-level one also drops the
    /// connection and makes every other pooled connection suspect.
    pub(super) fn failed(&self, pooled: Connection, e: redis::RedisError) -> StoreError {
        if is_unusable(&e) {
            self.0.manager().failures.fetch_add(1, Ordering::Relaxed);
            drop(Object::take(pooled));
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

/// Server answers that mean "not now" rather than "never": a demoted master
/// (`READONLY`), a restart loading its data (`LOADING`), a long script
/// (`BUSY`), a full or unwritable Redis (`OOM`, `MISCONF`), too few replicas
/// for `min-replicas-to-write` (`NOREPLICAS`), a replica without its master
/// (`MASTERDOWN`) and a cluster between states (`CLUSTERDOWN`, `TRYAGAIN`).
/// Each is a 503 with `Retry-After`, never a 500.
const TRANSIENT_CODES: [&str; 9] = [
    "READONLY",
    "LOADING",
    "BUSY",
    "OOM",
    "MISCONF",
    "NOREPLICAS",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
];

/// Whether this connection must not be used again: it broke, or it reaches a
/// Redis that is no longer the master (`READONLY`), so a new connection may
/// find the current one.
fn is_unusable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.code() == Some("READONLY")
}

fn classify(e: redis::RedisError) -> StoreError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return StoreError::Refused(format!("{e}; check the user and password of the Redis URL"));
    }
    // rustls says why it does not trust the server's certificate in its
    // message (UnknownIssuer, NotValidForName, Expired, ...).
    let text = e.to_string();
    if text.contains("certificate") {
        return StoreError::Refused(format!(
            "{text}; the Redis server's TLS certificate is not trusted: give the CA that \
             signed it with --redis-tls-ca-file"
        ));
    }
    if e.code().is_some_and(|code| TRANSIENT_CODES.contains(&code)) {
        return StoreError::Unavailable(e.to_string());
    }
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
