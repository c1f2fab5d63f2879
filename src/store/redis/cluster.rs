//! Redis Cluster: one multiplexed cluster connection (it keeps a connection
//! per node and routes each command by its first key), opened on first use
//! and kept for the store's life, so a cluster that is down at start is
//! reached as soon as it answers.
//!
//! Its retries are bounded well inside `--redis-timeout-ms`: the client's
//! own default (16 retries, waits growing to over a second) would outlast
//! every request timeout and turn a failover into hanging requests instead
//! of 503s. Redirections (`MOVED`, `ASK`) and a demoted master's `READONLY`
//! make it refresh its slot map.

use std::time::Duration;

use deadpool_redis::redis::TlsCertificates;
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use tokio::sync::OnceCell;

use super::failure::classify;
use crate::secret::Secret;
use crate::store::StoreError;

/// Retries of one command after a redirection or a node failure.
const RETRIES: u32 = 3;

pub(super) struct Cluster {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl Cluster {
    /// # Errors
    /// When a seed URL cannot be parsed.
    pub(super) fn new(
        seeds: &[Secret],
        certificates: Option<TlsCertificates>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let wait_ms = u64::try_from((timeout / 8).as_millis()).unwrap_or(u64::MAX);
        let mut builder = ClusterClientBuilder::new(seeds.iter().map(|s| s.expose().to_owned()))
            .retries(RETRIES)
            .min_retry_wait(wait_ms.min(50))
            .max_retry_wait(wait_ms)
            .connection_timeout(connect_timeout)
            .response_timeout(timeout)
            .overall_response_timeout(Some(timeout));
        if let Some(certificates) = certificates {
            builder = builder.certs(certificates);
        }
        let client = builder
            .build()
            .map_err(|e| StoreError::Internal(format!("bad --redis-cluster: {e}")))?;
        Ok(Self {
            client,
            connection: OnceCell::new(),
        })
    }

    /// The cluster connection, opened now if it is not yet (a failed
    /// attempt leaves it unopened for the next call to try again).
    pub(super) async fn connection(&self) -> Result<ClusterConnection, StoreError> {
        self.connection
            .get_or_try_init(|| async {
                self.client.get_async_connection().await.map_err(classify)
            })
            .await
            .cloned()
    }
}
