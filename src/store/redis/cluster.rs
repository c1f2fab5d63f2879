//! Redis Cluster: one multiplexed cluster connection (it keeps a connection
//! per node and routes each command by its first key), opened on first use
//! and kept for the store's life, so a cluster that is down at start is
//! reached as soon as it answers.
//!
//! It also says which nodes the cluster has (`nodes`), and how to reach one
//! of them alone (`node_client`), for the wake subscriptions.
//!
//! Its retries are bounded well inside `--redis-timeout-ms`: the client's
//! own default (16 retries, waits growing to over a second) would outlast
//! every request timeout and turn a failover into hanging requests instead
//! of 503s. Redirections (`MOVED`, `ASK`) and a demoted master's `READONLY`
//! make it refresh its slot map.

use std::time::Duration;

use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{
    self, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates,
};
use tokio::sync::OnceCell;

use super::failure::classify;
use super::tls;
use crate::secret::Secret;
use crate::store::StoreError;

/// Retries of one command after a redirection or a node failure.
const RETRIES: u32 = 3;

pub(super) struct Cluster {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
    /// The first seed's settings (credentials, TLS), for one node alone.
    template: ConnectionInfo,
    certificates: Option<TlsCertificates>,
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
        let template = seeds
            .first()
            .ok_or_else(|| StoreError::Internal("--redis-cluster is empty".into()))?
            .expose()
            .into_connection_info()
            .map_err(|e| StoreError::Internal(format!("bad --redis-cluster: {e}")))?;
        let wait_ms = u64::try_from((timeout / 8).as_millis()).unwrap_or(u64::MAX);
        let mut builder = ClusterClientBuilder::new(seeds.iter().map(|s| s.expose().to_owned()))
            .retries(RETRIES)
            .min_retry_wait(wait_ms.min(50))
            .max_retry_wait(wait_ms)
            .connection_timeout(connect_timeout)
            .response_timeout(timeout)
            .overall_response_timeout(Some(timeout));
        if let Some(certificates) = certificates.clone() {
            builder = builder.certs(certificates);
        }
        let client = builder
            .build()
            .map_err(|e| StoreError::Internal(format!("bad --redis-cluster: {e}")))?;
        Ok(Self {
            client,
            connection: OnceCell::new(),
            template,
            certificates,
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

    /// `CLUSTER NODES`, as one node sees the cluster.
    async fn cluster_nodes(&self) -> Result<String, StoreError> {
        let mut connection = self.connection().await?;
        redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut connection)
            .await
            .map_err(classify)
    }

    /// The addresses of the nodes that are not failed, as one node sees them
    /// (`CLUSTER NODES`).
    pub(super) async fn nodes(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let text = self.cluster_nodes().await?;
        let seed_host = match self.template.addr() {
            ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.as_str(),
            _ => "",
        };
        Ok(text
            .lines()
            .filter_map(|line| parse_node(line, seed_host))
            .collect())
    }

    /// One slot of each master that serves slots, in slot order: a stable
    /// way to name the masters one after another (the listing's SCAN).
    pub(super) async fn master_slots(&self) -> Result<Vec<u16>, StoreError> {
        let text = self.cluster_nodes().await?;
        let mut slots: Vec<u16> = text.lines().filter_map(first_slot_of_master).collect();
        slots.sort_unstable();
        Ok(slots)
    }

    /// A client for one node alone, with the seed's credentials and TLS.
    ///
    /// # Errors
    /// When the TLS settings do not fit the address.
    pub(super) fn node_client(&self, host: &str, port: u16) -> Result<redis::Client, StoreError> {
        let mut addr = self.template.addr().clone();
        if let ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } = &mut addr
        {
            *h = host.to_owned();
            *p = port;
        }
        tls::client_for(
            self.template.clone().set_addr(addr),
            self.certificates.as_ref(),
        )
    }
}

/// `<id> <ip:port@bus[,hostname]> <flags> ...`: the address, unless the
/// node is failed or not yet part of the cluster. The announced hostname,
/// when there is one, wins over the ip (TLS certificates name hosts); a node
/// that does not know its own ip (an empty one, a cluster of one) is taken to
/// be at the seed's host.
fn parse_node(line: &str, seed_host: &str) -> Option<(String, u16)> {
    let mut fields = line.split_whitespace();
    let endpoint = fields.nth(1)?;
    let flags = fields.next()?;
    if flags
        .split(',')
        .any(|f| matches!(f, "fail" | "fail?" | "handshake" | "noaddr"))
    {
        return None;
    }
    let (endpoint, hostname) = endpoint.split_once(',').unwrap_or((endpoint, ""));
    let (host, port) = endpoint.split('@').next()?.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = [hostname, host, seed_host]
        .into_iter()
        .find(|h| !h.is_empty())?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// The lowest slot a master line of `CLUSTER NODES` serves, if it is a live
/// master serving any (`... master - 0 0 1 connected 0-5460 10923`).
fn first_slot_of_master(line: &str) -> Option<u16> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let flags = fields.get(2)?;
    if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
        return None;
    }
    fields
        .iter()
        .skip(8)
        .filter(|range| !range.starts_with('['))
        .filter_map(|range| range.split('-').next()?.parse::<u16>().ok())
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_is_named_by_its_lowest_slot_and_replicas_not_at_all() {
        let master =
            "07c3 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 5461 0-10 [12->-ab]";
        assert_eq!(first_slot_of_master(master), Some(0));
        let replica = "07c4 127.0.0.1:30004@40004 slave 07c3 0 0 1 connected";
        assert_eq!(first_slot_of_master(replica), None);
        let failed = "07c5 127.0.0.1:30005@40005 master,fail - 0 0 1 connected 11-20";
        assert_eq!(first_slot_of_master(failed), None);
        let empty = "07c6 127.0.0.1:30006@40006 master - 0 0 1 connected";
        assert_eq!(first_slot_of_master(empty), None);
    }

    #[test]
    fn failed_nodes_are_left_out_and_an_empty_ip_is_the_seeds_host() {
        let seed = "10.0.0.9";
        let line = |rest: &str| parse_node(&format!("07c37dfeb235213a {rest}"), seed);
        assert_eq!(
            line("127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460"),
            Some(("127.0.0.1".into(), 30001))
        );
        assert_eq!(
            line("10.0.0.2:30002@40002,node-2.internal slave 07c3 0 0 2 connected"),
            Some(("node-2.internal".into(), 30002))
        );
        assert_eq!(
            line("10.0.0.2:30002@40002, slave 07c3 0 0 2 connected"),
            Some(("10.0.0.2".into(), 30002))
        );
        assert_eq!(
            line(":30003@40003 myself,master - 0 0 3 connected"),
            Some((seed.into(), 30003))
        );
        assert_eq!(
            line("[::1]:30004@40004 master - 0 0 4 connected"),
            Some(("::1".into(), 30004))
        );
        assert_eq!(
            line("127.0.0.1:30005@40005 master,fail - 0 0 5 connected"),
            None
        );
        assert_eq!(line("garbage"), None);
    }
}
