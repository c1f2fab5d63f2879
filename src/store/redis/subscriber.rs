//! The wake subscription: one dedicated connection per instance, outside the
//! pool, subscribed to this instance's wake channel. Scripts publish a ticket
//! there when it may proceed, or with the time of the soonest lease end when
//! it is a new head of the queue that does not fit; this task passes either
//! to `Wakeups`. Messages
//! published while unsubscribed are lost, so every local waiter re-checks
//! whenever the subscription comes back.
//!
//! Where it subscribes: the one Redis; behind Sentinel, the current master
//! (and again on the new one after a switch); on a cluster, every node. A
//! classic `PUBLISH` does reach every node over the cluster bus, but the bus
//! links a node opens run with Nagle's algorithm on, so a relayed wake waited
//! up to 40 ms for a delayed ACK (measured: handoff p99 47 ms, a quarter of
//! one Redis's contended throughput). Subscribed on every node, a wake
//! arrives at once from the master that ran the script; the relayed copies
//! come later and are dropped as duplicates (`Wakeups::wake`). The nodes are
//! read from `CLUSTER NODES` every few seconds, so a failover, a new node or
//! a removed one moves the subscriptions with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;
use tokio::task::JoinHandle;

use super::cluster::Cluster;
use super::pubsub;
use super::sentinel::Sentinel;
use crate::semaphore::{Millis, PermitId};
use crate::store::{Handoff, Wakeups};
use crate::telemetry;

/// Which node the subscription goes to.
pub(super) enum WakeSource {
    Direct(Box<redis::Client>),
    Sentinel(Arc<Sentinel>),
}

/// How often the cluster's node list is read again.
const DISCOVER_EVERY: Duration = Duration::from_secs(5);

/// One subscription per cluster node, each ended when the node leaves the
/// cluster, and all of them when the store is dropped (this task aborted).
struct NodeSubscriptions(HashMap<(String, u16), JoinHandle<()>>);

impl Drop for NodeSubscriptions {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

/// Keeps one wake subscription on every node of the cluster (see the module
/// docs), reading the node list over the store's own cluster connection.
pub(super) async fn subscribe_cluster(
    cluster: Arc<Cluster>,
    channel: String,
    wakeups: Arc<Wakeups>,
    connect_timeout: Duration,
) {
    let mut subscriptions = NodeSubscriptions(HashMap::new());
    let mut rediscover = tokio::time::interval(DISCOVER_EVERY);
    loop {
        rediscover.tick().await;
        // Nobody answered: keep what we have; each subscription retries.
        let Ok(nodes) = cluster.nodes().await else {
            continue;
        };
        subscriptions.0.retain(|addr, task| {
            let keep = nodes.contains(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for (host, port) in nodes {
            if subscriptions.0.contains_key(&(host.clone(), port)) {
                continue;
            }
            let Ok(client) = cluster.node_client(&host, port) else {
                continue;
            };
            let task = tokio::spawn(subscribe(
                WakeSource::Direct(Box::new(client)),
                channel.clone(),
                wakeups.clone(),
                connect_timeout,
            ));
            subscriptions.0.insert((host, port), task);
        }
    }
}

/// Keeps this instance subscribed to its wake channel, reconnecting with
/// backoff, and turns each message ("ticket \n cause µs") into a wake.
pub(super) async fn subscribe(
    source: WakeSource,
    channel: String,
    wakeups: Arc<Wakeups>,
    connect_timeout: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    let mut switches = match &source {
        WakeSource::Sentinel(sentinel) => Some(sentinel.switches()),
        _ => None,
    };
    loop {
        if let Some(switches) = switches.as_mut() {
            switches.mark_unchanged();
        }
        let connected = tokio::time::timeout(connect_timeout, async {
            let client = match &source {
                WakeSource::Direct(client) => client.as_ref().clone(),
                WakeSource::Sentinel(sentinel) => {
                    sentinel.master().await.map_err(to_redis_error)?.0
                }
            };
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
        metrics::gauge!(telemetry::REDIS_WAKE_SUBSCRIBED).increment(1.0);
        // Whatever was published while we were not subscribed is lost.
        wakeups.wake_all();
        let wake = |_: &str, payload: &[u8]| deliver(&wakeups, payload);
        // Sentinel switched masters: what the scripts publish now goes to
        // the new one.
        let switched = async {
            let switch = match switches.as_mut() {
                Some(switches) => switches.changed().await,
                None => std::future::pending().await,
            };
            // The sender lives as long as the Sentinel this task holds.
            if switch.is_err() {
                std::future::pending::<()>().await;
            }
        };
        pubsub::follow(pubsub, connect_timeout, wake, switched).await;
        metrics::gauge!(telemetry::REDIS_WAKE_SUBSCRIBED).decrement(1.0);
        tracing::warn!("wake subscription lost; waiting acquires re-check");
        wakeups.wake_all();
    }
}

/// Passes one message of the wake channel to `Wakeups`: "ticket \n cause
/// µs" (a wake), with a third line "ms until the soonest lease ends" (a head
/// notice), or with "g \n fence \n acquired ms \n expires ms" (a grant:
/// the script that freed the units handed the ticket its permit). See
/// prelude.lua.
fn deliver(wakeups: &Wakeups, payload: &[u8]) {
    let text = String::from_utf8_lossy(payload);
    let mut parts = text.splitn(3, '\n');
    let Some(ticket) = parts.next().and_then(|t| PermitId::parse(t).ok()) else {
        return;
    };
    let cause_us = parts.next().and_then(|us| us.parse().ok());
    match parts.next() {
        None => wakeups.wake(ticket, cause_us),
        Some(rest) => {
            if let Some(grant) = rest.strip_prefix("g\n") {
                let mut fields = grant.split('\n').map(str::parse::<u64>);
                if let (Some(Ok(fence)), Some(Ok(acquired)), Some(Ok(expires)), None) =
                    (fields.next(), fields.next(), fields.next(), fields.next())
                {
                    let handoff = Handoff {
                        fencing_token: fence,
                        acquired_at: Millis(acquired),
                        expires_at: Millis(expires),
                    };
                    wakeups.grant(ticket, cause_us, handoff);
                } else {
                    // Unreadable: its next attempt finds the permit it holds.
                    wakeups.wake(ticket, cause_us);
                }
            } else if let Ok(soonest_ms) = rest.parse() {
                wakeups.tell_head(ticket, cause_us, soonest_ms);
            } else {
                wakeups.wake(ticket, cause_us);
            }
        }
    }
}

fn to_redis_error(e: crate::store::StoreError) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "no master", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Woken;

    #[tokio::test]
    async fn each_kind_of_message_reaches_the_waiter_as_what_it_is() {
        let wakeups = Wakeups::new();
        let ticket = PermitId::random();
        let handle = wakeups.register(ticket);
        let message = |rest: &str| format!("{ticket}\n{rest}").into_bytes();

        deliver(&wakeups, &message("10\n250"));
        handle.notified().await;
        let head = Woken::Head {
            soonest_expiry: Some(Duration::from_millis(250)),
        };
        assert_eq!(handle.woken(), head);
        deliver(&wakeups, &message("11"));
        handle.notified().await;
        assert_eq!(handle.woken(), Woken::Attempt);
        // A grant that cannot be read is a wake: the attempt finds the permit.
        deliver(&wakeups, &message("12\ng\n7\n1000"));
        handle.notified().await;
        assert_eq!(handle.woken(), Woken::Attempt);
        deliver(&wakeups, &message("13\ng\n7\n1000\n31000"));
        handle.notified().await;
        let handoff = Handoff {
            fencing_token: 7,
            acquired_at: Millis(1000),
            expires_at: Millis(31000),
        };
        assert_eq!(handle.woken(), Woken::Granted(handoff));
    }
}
