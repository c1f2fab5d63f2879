//! Redis behind Sentinel: which node is the master now, asked of the
//! sentinels, and a watch on their `+switch-master` announcements so that a
//! failover moves every connection to the new master at once.
//!
//! The pool (`connection`) opens each connection to the master named here
//! and drops pooled ones opened to an earlier master. That matters beyond a
//! crash: after `SENTINEL FAILOVER` the old master keeps accepting writes
//! until the sentinels demote it (seconds), and its demotion throws those
//! writes away. Acting on `+switch-master` instead of waiting for `READONLY`
//! keeps that window to the announcement's delay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_redis::redis::{self, IntoConnectionInfo, TlsCertificates};
use tokio::sync::watch;

use super::failure::classify;
use super::pubsub;
use super::tls;
use crate::secret::Secret;
use crate::store::StoreError;

/// A data node's address, as the sentinels report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeAddr {
    host: String,
    port: u16,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Credentials and TLS for the data nodes, which may differ from the
/// sentinels' own.
pub(super) struct NodeAuth {
    pub(super) username: Option<String>,
    pub(super) password: Option<Secret>,
    pub(super) certificates: Option<TlsCertificates>,
}

/// The sentinels of one monitored master, and the master they name.
pub(super) struct Sentinel {
    sentinels: Vec<redis::Client>,
    master_name: String,
    tls: bool,
    db: i64,
    username: Option<String>,
    password: Option<String>,
    certificates: Option<TlsCertificates>,
    connect_timeout: Duration,
    current: RwLock<Option<NodeAddr>>,
    /// Bumped when the master changes: the wake subscriber moves with it.
    switches: watch::Sender<u64>,
    /// The pool's failure generation: a switch makes every connection suspect.
    failures: Arc<AtomicU64>,
}

impl Sentinel {
    /// # Errors
    /// When a sentinel URL cannot be parsed, or the URLs mix TLS and plain.
    pub(super) fn new(
        urls: &[Secret],
        master_name: &str,
        auth: NodeAuth,
        failures: Arc<AtomicU64>,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let sentinels = urls
            .iter()
            .map(|url| tls::client(url.expose(), auth.certificates.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let first = sentinels
            .first()
            .ok_or_else(|| StoreError::Internal("--redis-sentinels is empty".into()))?
            .get_connection_info();
        let tls = matches!(first.addr(), redis::ConnectionAddr::TcpTls { .. });
        if sentinels.iter().any(|s| {
            matches!(
                s.get_connection_info().addr(),
                redis::ConnectionAddr::TcpTls { .. }
            ) != tls
        }) {
            return Err(StoreError::Internal(
                "--redis-sentinels mixes rediss:// and redis:// URLs".into(),
            ));
        }
        let from_url = first.redis_settings();
        Ok(Self {
            tls,
            db: from_url.db(),
            username: auth
                .username
                .or_else(|| from_url.username().map(str::to_owned)),
            password: match auth.password {
                Some(password) => Some(password.expose().to_owned()),
                None => from_url.password().map(str::to_owned),
            }
            .filter(|p| !p.is_empty()),
            certificates: auth.certificates,
            sentinels,
            master_name: master_name.to_owned(),
            connect_timeout,
            current: RwLock::new(None),
            switches: watch::Sender::new(0),
            failures,
        })
    }

    /// The master as the sentinels name it now, and a client for it.
    ///
    /// # Errors
    /// `Unavailable` when no sentinel answers or none knows the master.
    pub(super) async fn master(&self) -> Result<(redis::Client, NodeAddr), StoreError> {
        let addr = self.resolve().await?;
        self.set_current(&addr);
        Ok((self.client_for(&addr)?, addr))
    }

    /// Whether `addr` is the master as last seen (or nothing was seen yet).
    pub(super) fn is_current(&self, addr: &NodeAddr) -> bool {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().is_none_or(|c| c == addr)
    }

    /// Changes whenever the master does.
    pub(super) fn switches(&self) -> watch::Receiver<u64> {
        self.switches.subscribe()
    }

    fn set_current(&self, addr: &NodeAddr) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_ref() == Some(addr) {
            return;
        }
        let previous = current.replace(addr.clone());
        drop(current);
        if let Some(previous) = previous {
            tracing::warn!(from = %previous, to = %addr, master = %self.master_name,
                "Sentinel switched masters; moving every connection");
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.switches.send_modify(|n| *n += 1);
        }
    }

    /// Asks each sentinel in turn; the first one that names the master wins.
    async fn resolve(&self) -> Result<NodeAddr, StoreError> {
        let mut last_error = None;
        for sentinel in &self.sentinels {
            let asked = tokio::time::timeout(self.connect_timeout, async {
                let mut connection = sentinel
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(classify)?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master_name)
                    .query_async::<Option<(String, u16)>>(&mut connection)
                    .await
                    .map_err(classify)
            })
            .await;
            match asked {
                Ok(Ok(Some((host, port)))) => return Ok(NodeAddr { host, port }),
                Ok(Ok(None)) => {
                    last_error = Some(StoreError::Unavailable(format!(
                        "the sentinel knows no master named {:?}",
                        self.master_name
                    )));
                }
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => {
                    last_error = Some(StoreError::Unavailable(
                        "a sentinel did not answer in time".into(),
                    ));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| StoreError::Unavailable("no sentinel answered".into())))
    }

    fn client_for(&self, addr: &NodeAddr) -> Result<redis::Client, StoreError> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let info = format!("{scheme}://{addr}/{}", self.db)
            .into_connection_info()
            .map_err(|e| StoreError::Internal(format!("bad master address {addr}: {e}")))?;
        let mut node = info.redis_settings().clone();
        if let Some(username) = &self.username {
            node = node.set_username(username);
        }
        if let Some(password) = &self.password {
            node = node.set_password(password);
        }
        tls::client_for(info.set_redis_settings(node), self.certificates.as_ref())
    }

    /// Follows `+switch-master` on one sentinel after another, for as long
    /// as the store lives; on every (re)connection it also asks for the
    /// master, in case a switch was announced while nobody listened.
    pub(super) async fn watch(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        for sentinel in self.sentinels.iter().cycle() {
            let subscribed = tokio::time::timeout(self.connect_timeout, async {
                let mut pubsub = sentinel.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            let Ok(Ok(pubsub)) = subscribed else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            };
            backoff = Duration::from_millis(50);
            if let Ok(addr) = self.resolve().await {
                self.set_current(&addr);
            }
            let on_switch = |payload: &[u8]| {
                let text = String::from_utf8_lossy(payload);
                if let Some(addr) = switched_to(&text, &self.master_name) {
                    self.set_current(&addr);
                }
            };
            let forever = std::future::pending();
            pubsub::follow(pubsub, self.connect_timeout, on_switch, forever).await;
            tracing::debug!("lost the watch on a sentinel; trying the next");
        }
    }
}

/// The new master in a `+switch-master` message
/// (`<name> <old-ip> <old-port> <new-ip> <new-port>`), if it is ours.
fn switched_to(message: &str, master_name: &str) -> Option<NodeAddr> {
    let parts: Vec<&str> = message.split_whitespace().collect();
    match parts.as_slice() {
        [name, _, _, host, port] if *name == master_name => Some(NodeAddr {
            host: (*host).to_owned(),
            port: port.parse().ok()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_message_names_the_new_master_of_ours_only() {
        let ours = switched_to("mymaster 127.0.0.1 6379 127.0.0.1 6380", "mymaster");
        assert_eq!(
            ours,
            Some(NodeAddr {
                host: "127.0.0.1".into(),
                port: 6380
            })
        );
        assert_eq!(
            switched_to("other 127.0.0.1 6379 127.0.0.1 6380", "mymaster"),
            None
        );
        assert_eq!(switched_to("mymaster garbage", "mymaster"), None);
    }

    #[test]
    fn an_ipv6_address_is_bracketed_in_urls() {
        let addr = NodeAddr {
            host: "::1".into(),
            port: 6379,
        };
        assert_eq!(addr.to_string(), "[::1]:6379");
    }
}
