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
//!
//! The sentinels do not learn of a failover at the same moment: for a while
//! the one that led it names the new master and the others the old one,
//! which still answers as a master. Every sentinel is therefore asked, the
//! answer with the highest configuration epoch wins, and a master named
//! under an older epoch than the one in use is not switched back to, unless
//! every sentinel names it (the sentinels were set up anew).
//!
//! `+switch-master` itself comes late: the leading sentinel announces it
//! about a second after the replica it chose took the master role, and
//! until then every write still went to the old master and was lost with
//! its demotion (a planned `SENTINEL FAILOVER` lost 11 of 78 acknowledged
//! permits that way). So every sentinel is watched at once, and the moment
//! any announces that it is promoting a replica of ours
//! (`+failover-state-send-slaveof-noone`, or `+promoted-slave`), that replica
//! is the master in use: nothing is sent to the old master from then on, and
//! calls answer 503 until the replica answers `ROLE` master (the pool checks
//! that before using a connection). Until a sentinel names the new master,
//! that choice is provisional: the old master is not switched back to, even
//! when every sentinel still names it, for [`HANDOVER`], unless the sentinel
//! that promotes gives up (`-failover-abort-slave-timeout`: the replica never
//! took the master role within the failover timeout, often because that
//! sentinel had lost its link to it). The old master then stays the master,
//! with every write it took, so it is used again at once rather than refused
//! until the handover ends or the next failover.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

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

/// The master a promotion replaces: not to be switched back to until
/// `until`, or until the promotion is given up (then it is the master again,
/// under the epoch it had).
struct Handover {
    replaced: NodeAddr,
    epoch: u64,
    until: Instant,
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
    /// The master in use and the configuration epoch it was named under.
    current: RwLock<Option<(NodeAddr, u64)>>,
    /// A replica taken as master on a sentinel's word that it promotes it,
    /// before any sentinel names it (see the module docs).
    handover: RwLock<Option<Handover>>,
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
            handover: RwLock::new(None),
            switches: watch::Sender::new(0),
            failures,
        })
    }

    /// The master as the sentinels name it now, and a client for it.
    ///
    /// # Errors
    /// `Unavailable` when no sentinel answers or none knows the master.
    pub(super) async fn master(&self) -> Result<(redis::Client, NodeAddr), StoreError> {
        let named = self.resolve().await?;
        let addr = self.set_current(named);
        Ok((self.client_for(&addr)?, addr))
    }

    /// Whether `addr` is the master in use (or none was chosen yet).
    pub(super) fn is_current(&self, addr: &NodeAddr) -> bool {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().is_none_or(|(c, _)| c == addr)
    }

    /// Changes whenever the master does.
    pub(super) fn switches(&self) -> watch::Receiver<u64> {
        self.switches.subscribe()
    }

    /// Takes a master the sentinels named, unless one named under a newer
    /// epoch is in use already, or it is the master a handover replaced;
    /// the master in use after.
    fn set_current(&self, named: Named) -> NodeAddr {
        let mut handover = self.handover.write().unwrap_or_else(|e| e.into_inner());
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if let Some(Handover {
            replaced, until, ..
        }) = handover.as_ref()
        {
            if Instant::now() >= *until
                || current
                    .as_ref()
                    .is_some_and(|(addr, _)| *addr == named.addr)
            {
                // Named at last (or given up on): the usual rules again.
                *handover = None;
            } else if *replaced == named.addr {
                // A sentinel that has not announced the switch yet.
                if let Some((addr, _)) = current.as_ref() {
                    return addr.clone();
                }
            }
        }
        drop(handover);
        match current.as_mut() {
            // An older epoch is a sentinel that has not heard of the last
            // failover yet, unless every sentinel says so: then the sentinels
            // were set up anew (their epochs start again) and are followed.
            Some((addr, epoch)) if *epoch > named.epoch && !named.unanimous => {
                return addr.clone();
            }
            Some((addr, epoch)) if *addr == named.addr => {
                *epoch = named.epoch;
                return addr.clone();
            }
            _ => {}
        }
        let previous = current.replace((named.addr.clone(), named.epoch));
        drop(current);
        if let Some((previous, _)) = previous {
            tracing::warn!(from = %previous, to = %named.addr, epoch = named.epoch,
                master = %self.master_name, "Sentinel switched masters; moving every connection");
            self.switched();
        }
        named.addr
    }

    /// A sentinel announced that it promotes `replica` of `master`: if that
    /// is the master in use, the replica is from now on (see the module docs).
    fn hand_over(&self, master: &NodeAddr, replica: NodeAddr) {
        let mut handover = self.handover.write().unwrap_or_else(|e| e.into_inner());
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let Some((addr, epoch)) = current.as_mut() else {
            return;
        };
        if addr != master {
            return;
        }
        tracing::warn!(from = %master, to = %replica, master = %self.master_name,
            "Sentinel promotes a replica; no more writes to the old master");
        *handover = Some(Handover {
            replaced: master.clone(),
            epoch: *epoch,
            until: Instant::now() + HANDOVER,
        });
        *addr = replica;
        *epoch += 1;
        drop((current, handover));
        self.switched();
    }

    /// A sentinel gave up promoting a replica of `master`: if that promotion
    /// is the one in use, `master` is the master again (see the module docs).
    /// Returns whether it was.
    fn abort_handover(&self, master: &NodeAddr) -> bool {
        let mut handover = self.handover.write().unwrap_or_else(|e| e.into_inner());
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let Some(given_up) = handover.take_if(|h| h.replaced == *master) else {
            return false;
        };
        let promoted = current.replace((given_up.replaced, given_up.epoch));
        drop((current, handover));
        tracing::warn!(master = %self.master_name, to = %master,
            from = %promoted.map(|(addr, _)| addr.to_string()).unwrap_or_default(),
            "Sentinel gave up the promotion; writes go to the master again");
        self.switched();
        true
    }

    /// Every connection to the master before is dropped at its next checkout,
    /// and the wake subscriber moves.
    fn switched(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.switches.send_modify(|n| *n += 1);
    }

    /// Asks every sentinel at once; of those that answer in time, the one
    /// with the highest configuration epoch names the master (see the module
    /// docs), the earlier-listed one on a tie.
    async fn resolve(&self) -> Result<Named, StoreError> {
        let asked = self
            .sentinels
            .iter()
            .map(|sentinel| tokio::time::timeout(self.connect_timeout, self.ask(sentinel)));
        let mut newest: Option<Named> = None;
        let mut last_error = None;
        let mut addresses = Vec::new();
        for answer in futures::future::join_all(asked).await {
            match answer {
                Ok(Ok(named)) => {
                    addresses.push(named.addr.clone());
                    if newest.as_ref().is_none_or(|n| named.epoch > n.epoch) {
                        newest = Some(named);
                    }
                }
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => {
                    last_error = Some(StoreError::Unavailable(
                        "a sentinel did not answer in time".into(),
                    ));
                }
            }
        }
        let unanimous = addresses.len() == self.sentinels.len()
            && addresses.windows(2).all(|pair| pair[0] == pair[1]);
        newest
            .map(|named| Named { unanimous, ..named })
            .ok_or_else(|| {
                last_error.unwrap_or_else(|| StoreError::Unavailable("no sentinel answered".into()))
            })
    }

    /// One sentinel's view of the master: `SENTINEL MASTER <name>`.
    async fn ask(&self, sentinel: &redis::Client) -> Result<Named, StoreError> {
        let mut connection = sentinel
            .get_multiplexed_async_connection()
            .await
            .map_err(classify)?;
        let fields: Vec<String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.master_name)
            .query_async(&mut connection)
            .await
            .map_err(|e| match e.kind() {
                // "No such master with that name".
                redis::ErrorKind::Server(_) => StoreError::Unavailable(format!(
                    "the sentinel knows no master named {:?}",
                    self.master_name
                )),
                _ => classify(e),
            })?;
        Named::from_fields(&fields).ok_or_else(|| {
            StoreError::Unavailable(
                "a sentinel's SENTINEL MASTER reply lacks ip, port or epoch".into(),
            )
        })
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

    /// Follows every sentinel at once, for as long as the store lives: the
    /// first to announce a promotion or a switch is acted on (see the module
    /// docs). On every (re)connection it also asks for the master, in case a
    /// switch was announced while nobody listened.
    pub(super) async fn watch(self: Arc<Self>) {
        let followers = self.sentinels.iter().map(|sentinel| self.follow(sentinel));
        futures::future::join_all(followers).await;
    }

    /// One sentinel's announcements, subscribed again whenever the
    /// subscription is lost.
    async fn follow(&self, sentinel: &redis::Client) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let subscribed = tokio::time::timeout(self.connect_timeout, async {
                let mut pubsub = sentinel.get_async_pubsub().await?;
                for channel in WATCHED {
                    pubsub.subscribe(channel).await?;
                }
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            let Ok(Ok(pubsub)) = subscribed else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            };
            backoff = Duration::from_millis(50);
            if let Ok(named) = self.resolve().await {
                self.set_current(named);
            }
            // A switch message names no epoch; the sentinel that sent it has
            // the new one, so asking them all again finds the switch, and a
            // stale message changes nothing.
            let (switched, mut on_switched) = tokio::sync::mpsc::unbounded_channel();
            let on_message = |channel: &str, payload: &[u8]| {
                let text = String::from_utf8_lossy(payload);
                if channel == SWITCH {
                    if switched_to(&text, &self.master_name).is_some() {
                        let _ = switched.send(());
                    }
                } else if channel == ABORT {
                    // Asked again too: the sentinels' word settles it.
                    if let Some(master) = given_up(&text, &self.master_name)
                        && self.abort_handover(&master)
                    {
                        let _ = switched.send(());
                    }
                } else if let Some((master, replica)) = promoting(&text, &self.master_name) {
                    self.hand_over(&master, replica);
                }
            };
            let follow_switches = async {
                while on_switched.recv().await.is_some() {
                    if let Ok(named) = self.resolve().await {
                        self.set_current(named);
                    }
                }
            };
            let forever = std::future::pending();
            tokio::select! {
                () = pubsub::follow(pubsub, self.connect_timeout, on_message, forever) => {}
                () = follow_switches => {}
            }
            tracing::debug!("lost the watch on a sentinel; subscribing again");
        }
    }
}

/// How long a replica taken as master on a sentinel's announcement stays the
/// master in use although no sentinel names it yet (a failover that stops
/// after the promotion is rare; the sentinels' word wins after this).
const HANDOVER: Duration = Duration::from_secs(15);

const SWITCH: &str = "+switch-master";

/// The leading sentinel gave up after telling a replica to become master (it
/// did not, within the failover timeout). The other aborts come before any
/// promotion, and `-failover-abort-not-elected` from a sentinel that lost the
/// election while another may be promoting: neither ends a handover.
const ABORT: &str = "-failover-abort-slave-timeout";

/// The announcements followed: the switch, the two steps that say a replica
/// is being (or was) promoted, the first sent just before the leading
/// sentinel tells the replica `REPLICAOF NO ONE`, and the abort after them.
const WATCHED: [&str; 4] = [
    SWITCH,
    "+failover-state-send-slaveof-noone",
    "+promoted-slave",
    ABORT,
];

/// A master as one sentinel names it, with the configuration epoch it was
/// named under.
#[derive(Debug, PartialEq, Eq)]
struct Named {
    addr: NodeAddr,
    epoch: u64,
    /// Every sentinel answered and named this master.
    unanimous: bool,
}

impl Named {
    /// From `SENTINEL MASTER`'s field/value list.
    fn from_fields(fields: &[String]) -> Option<Self> {
        let field = |name: &str| {
            fields
                .chunks_exact(2)
                .find(|pair| pair[0] == name)
                .map(|pair| pair[1].as_str())
        };
        Some(Self {
            addr: NodeAddr {
                host: field("ip")?.to_owned(),
                port: field("port")?.parse().ok()?,
            },
            epoch: field("config-epoch")?.parse().ok()?,
            unanimous: false,
        })
    }
}

/// The master and the replica in a promotion announcement of ours
/// (`slave <ip:port> <ip> <port> @ <name> <master-ip> <master-port>`).
fn promoting(message: &str, master_name: &str) -> Option<(NodeAddr, NodeAddr)> {
    let parts: Vec<&str> = message.split_whitespace().collect();
    match parts.as_slice() {
        ["slave", _, host, port, "@", name, master_host, master_port] if *name == master_name => {
            Some((
                NodeAddr {
                    host: (*master_host).to_owned(),
                    port: master_port.parse().ok()?,
                },
                NodeAddr {
                    host: (*host).to_owned(),
                    port: port.parse().ok()?,
                },
            ))
        }
        _ => None,
    }
}

/// The master in an abort message of ours (`master <name> <ip> <port>`).
fn given_up(message: &str, master_name: &str) -> Option<NodeAddr> {
    let parts: Vec<&str> = message.split_whitespace().collect();
    match parts.as_slice() {
        ["master", name, host, port] if *name == master_name => Some(NodeAddr {
            host: (*host).to_owned(),
            port: port.parse().ok()?,
        }),
        _ => None,
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
    fn a_promotion_names_our_master_and_the_replica_promoted() {
        let message = "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379";
        let addr = |port| NodeAddr {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(
            promoting(message, "mymaster"),
            Some((addr(6379), addr(6380)))
        );
        assert_eq!(promoting(message, "other"), None);
        assert_eq!(
            promoting("master mymaster 127.0.0.1 6379", "mymaster"),
            None
        );
    }

    #[test]
    fn sentinel_master_fields_give_the_address_and_epoch() {
        let fields: Vec<String> = [
            "name",
            "m",
            "ip",
            "10.0.0.2",
            "port",
            "6380",
            "flags",
            "master",
            "config-epoch",
            "7",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            Named::from_fields(&fields),
            Some(Named {
                addr: NodeAddr {
                    host: "10.0.0.2".into(),
                    port: 6380
                },
                epoch: 7,
                unanimous: false
            })
        );
        assert_eq!(Named::from_fields(&fields[..8]), None);
    }

    fn named(port: u16, epoch: u64, unanimous: bool) -> Named {
        Named {
            addr: NodeAddr {
                host: "127.0.0.1".into(),
                port,
            },
            epoch,
            unanimous,
        }
    }

    #[test]
    fn an_older_epoch_is_followed_only_when_every_sentinel_names_it() {
        let auth = NodeAuth {
            username: None,
            password: None,
            certificates: None,
        };
        let urls = [Secret::new("redis://127.0.0.1:1")];
        let sentinel = Sentinel::new(
            &urls,
            "m",
            auth,
            Arc::new(AtomicU64::new(0)),
            Duration::from_secs(1),
        )
        .unwrap();
        let port = |named| sentinel.set_current(named).port;
        assert_eq!(port(named(6380, 5, false)), 6380);
        // A sentinel that missed the failover names the old master.
        assert_eq!(port(named(6379, 4, false)), 6380);
        assert_eq!(port(named(6381, 6, false)), 6381);
        // Sentinels set up anew: every one of them, epoch 0.
        assert_eq!(port(named(6390, 0, true)), 6390);
        // Promoting 6391: the old master is not gone back to, even when every
        // sentinel still names it, until a sentinel names the new one.
        let old = NodeAddr {
            host: "127.0.0.1".into(),
            port: 6390,
        };
        let new = NodeAddr {
            port: 6391,
            ..old.clone()
        };
        sentinel.hand_over(&old, new.clone());
        assert!(!sentinel.is_current(&old) && sentinel.is_current(&new));
        assert_eq!(port(named(6390, 0, true)), 6391);
        assert_eq!(port(named(6391, 1, false)), 6391);
        // Named now: a later failover back is followed as usual.
        assert_eq!(port(named(6390, 2, false)), 6390);
        // A promotion given up: the master it replaced, under its epoch, is
        // the master again at once; an abort of another master's promotion
        // changes nothing.
        let other = NodeAddr {
            port: 6392,
            ..old.clone()
        };
        sentinel.hand_over(&old, new.clone());
        assert!(!sentinel.abort_handover(&other) && sentinel.is_current(&new));
        assert!(sentinel.abort_handover(&old) && sentinel.is_current(&old));
        assert_eq!(port(named(6390, 2, false)), 6390);
        assert!(!sentinel.abort_handover(&old));
    }

    #[test]
    fn an_abort_names_our_master() {
        assert_eq!(
            given_up("master mymaster 127.0.0.1 6379", "mymaster"),
            Some(NodeAddr {
                host: "127.0.0.1".into(),
                port: 6379
            })
        );
        assert_eq!(given_up("master other 127.0.0.1 6379", "mymaster"), None);
        assert_eq!(given_up("slave x 1 2 @ mymaster 1 2", "mymaster"), None);
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
