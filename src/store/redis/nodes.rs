//! The Redis a store talks to, whatever the mode: one master through the
//! pool (standalone, or the one Sentinel names), or a cluster through one
//! cluster connection that routes each script by its semaphore's slot.
//!
//! On Redis 7 scripts run as FCALL of `scripts::LIBRARY`'s functions. A node
//! without the library (a restart without persistence, `FUNCTION FLUSH`)
//! answers that the function is not found, and the same call is sent once
//! more pipelined after `FUNCTION LOAD REPLACE` of the library, to the same
//! node by the same key. A node whose ACL refuses `FUNCTION` or `FCALL` gets
//! EVALSHA instead, and once that works, so does every later call.
//!
//! Before Redis 7 scripts run as EVALSHA. A node that does not have the
//! script (a restart, `SCRIPT FLUSH`, a promoted replica: `SCRIPT LOAD` is
//! not replicated) answers `NOSCRIPT`, and the same call is sent once more as
//! EVAL, to the same node by the same key, which also caches it there.
//!
//! Never load on every node up front: that fails while any node is down,
//! which is exactly when a failover needs the scripts on the new master.
//!
//! With `--redis-wait-replicas N` a write is pipelined with `WAIT N`, so it
//! reaches the semaphore's own master in the same round trip; fewer
//! acknowledgements in time answer 503 (see `StoreError::Unavailable`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use deadpool_redis::redis::{self, FromRedisValue, RedisResult, Value};

use super::cluster::Cluster;
use super::connection::Pool;
use super::failure::classify;
use super::scripts::{LIBRARY, Lua, NamedScript};
use super::sentinel::Sentinel;
use crate::store::{PoolStatus, StoreError};

pub(super) enum Nodes {
    /// One master: standalone, or whichever one Sentinel names.
    Single {
        pool: Pool,
        sentinel: Option<Arc<Sentinel>>,
    },
    Cluster(Arc<Cluster>),
}

/// One SCAN call's answer: the master it ran on (its lowest slot), the
/// cursor it ran from, the next cursor (0: that master is done), the keys.
pub(super) struct ScanStep {
    pub(super) master: u16,
    pub(super) cursor: u64,
    pub(super) next: u64,
    pub(super) keys: Vec<String>,
}

/// How scripts are called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Calling {
    /// FCALL of the library's functions (every master is Redis 7 or newer).
    Functions,
    /// EVALSHA of each script's own text, `#!lua`-flagged when `flags`.
    Scripts { flags: bool },
}

/// Replicas to wait for after a write, and for how long (ms).
#[derive(Clone, Copy)]
pub(super) struct Wait {
    pub(super) replicas: u32,
    pub(super) timeout_ms: u64,
}

impl Nodes {
    /// `standalone`, `sentinel` or `cluster`, for logs and `/readyz`.
    pub(super) fn mode(&self) -> &'static str {
        match self {
            Self::Single { sentinel: None, .. } => "standalone",
            Self::Single {
                sentinel: Some(_), ..
            } => "sentinel",
            Self::Cluster(_) => "cluster",
        }
    }

    /// Runs one script on its keys' node; see the module docs.
    /// `functions_refused` is set once a node refused Functions and EVALSHA
    /// worked instead; the caller then calls scripts from then on.
    pub(super) async fn call<T: FromRedisValue>(
        &self,
        script: &NamedScript,
        calling: Calling,
        functions_refused: &AtomicBool,
        keys: &[String],
        args: &[&str],
        wait: Option<Wait>,
    ) -> Result<T, StoreError> {
        let call = Call {
            script,
            keys,
            args,
            wait,
        };
        let (reply, acked) = match self {
            Self::Single { pool, .. } => {
                let mut checkout = pool.checkout(wait.is_some()).await?;
                let reply = call
                    .on(&mut checkout.connection, calling, functions_refused)
                    .await;
                reply.map_err(|e| pool.failed(&checkout, e))?
            }
            Self::Cluster(cluster) => {
                let mut connection = cluster.connection().await?;
                call.on(&mut connection, calling, functions_refused)
                    .await
                    .map_err(classify)?
            }
        };
        if let (Some(wait), Some(acked)) = (wait, acked)
            && acked < wait.replicas
        {
            return Err(StoreError::Unavailable(format!(
                "only {acked} of {} replicas acknowledged the write in time \
                 (--redis-wait-replicas); it may not survive a failover",
                wait.replicas
            )));
        }
        Ok(reply)
    }

    /// One command without keys (`TIME`): to the master, or any cluster node.
    pub(super) async fn command<T: FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, StoreError> {
        match self {
            Self::Single { pool, .. } => {
                let mut checkout = pool.checkout(false).await?;
                let reply = command.query_async(&mut checkout.connection).await;
                reply.map_err(|e| pool.failed(&checkout, e))
            }
            Self::Cluster(cluster) => {
                let mut connection = cluster.connection().await?;
                command.query_async(&mut connection).await.map_err(classify)
            }
        }
    }

    /// The masters, each named by its lowest slot, in slot order (one
    /// Redis: just 0): what a listing pages through (see `scan`).
    pub(super) async fn masters(&self) -> Result<Vec<u16>, StoreError> {
        match self {
            Self::Single { .. } => Ok(vec![0]),
            Self::Cluster(cluster) => cluster.master_slots().await,
        }
    }

    /// One `SCAN` step on the first of `masters` (see `masters`) whose slot
    /// is `from` or above, from `cursor` when that is the master `from`
    /// names (else from the start: the cluster changed); `None` when no
    /// master is left. Masters are named by slot rather than by position,
    /// so that one that fails or gives up its slots shifts no other.
    pub(super) async fn scan(
        &self,
        masters: &[u16],
        from: u16,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<Option<ScanStep>, StoreError> {
        let Some(&master) = masters.iter().find(|&&slot| slot >= from) else {
            return Ok(None);
        };
        let cursor = if master == from { cursor } else { 0 };
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let (next, keys) = match self {
            Self::Single { .. } => self.command(&scan).await?,
            Self::Cluster(cluster) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::new(master, SlotAddr::Master),
                ));
                let mut connection = cluster.connection().await?;
                let reply = connection
                    .route_command(scan, route)
                    .await
                    .map_err(classify)?;
                FromRedisValue::from_redis_value(reply)
                    .map_err(|e| StoreError::Internal(format!("unexpected SCAN reply: {e}")))?
            }
        };
        Ok(Some(ScanStep {
            master,
            cursor,
            next,
            keys,
        }))
    }

    /// `INFO` of every master: one, or each cluster master's.
    pub(super) async fn infos(&self) -> Result<Vec<String>, StoreError> {
        let reply: Value = self.command(&redis::cmd("INFO")).await?;
        let texts = match reply {
            // The cluster connection asks every master and answers with a
            // map of node address to that node's reply.
            Value::Map(nodes) => nodes.into_iter().map(|(_, info)| info).collect(),
            one => vec![one],
        };
        texts
            .into_iter()
            .map(|info| {
                String::from_redis_value(info)
                    .map_err(|e| StoreError::Internal(format!("unexpected INFO reply: {e}")))
            })
            .collect()
    }

    pub(super) fn pool_status(&self) -> Option<PoolStatus> {
        match self {
            Self::Single { pool, .. } => Some(pool.status()),
            Self::Cluster(_) => None,
        }
    }
}

/// One script call: the script, its keys and arguments, and the replicas to
/// wait for.
struct Call<'a> {
    script: &'a NamedScript,
    keys: &'a [String],
    args: &'a [&'a str],
    wait: Option<Wait>,
}

impl Call<'_> {
    /// The call on `connection` (see the module docs). The second value is
    /// the replicas' acknowledgements when `wait` asked for them.
    async fn on<C: ConnectionLike + Send, T: FromRedisValue>(
        &self,
        connection: &mut C,
        calling: Calling,
        functions_refused: &AtomicBool,
    ) -> RedisResult<(T, Option<u32>)> {
        if let Calling::Scripts { flags } = calling {
            return self.scripts(connection, flags).await;
        }
        let function = &self.script.function;
        let mut reply = self.invoke(connection, "FCALL", function, false).await;
        if matches!(&reply, Err(e) if function_missing(e)) {
            reply = self.invoke(connection, "FCALL", function, true).await;
        }
        let refusal = match reply {
            Err(e) if e.code() == Some("NOPERM") => e,
            other => return other,
        };
        // Functions are refused (an ACL without them); scripts may not be.
        // Only once they work are Functions given up.
        let reply = self.scripts(connection, true).await;
        if reply.is_ok() && !functions_refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %refusal,
                "Redis refuses FUNCTION or FCALL to this user: \
                 scripts run as EVALSHA instead (more Redis CPU per call)"
            );
        }
        reply
    }

    /// EVALSHA, then EVAL when the node does not have the script.
    async fn scripts<C: ConnectionLike + Send, T: FromRedisValue>(
        &self,
        connection: &mut C,
        flags: bool,
    ) -> RedisResult<(T, Option<u32>)> {
        let lua: &Lua = self.script.lua(flags);
        match self.invoke(connection, "EVALSHA", &lua.hash, false).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                self.invoke(connection, "EVAL", &lua.source, false).await
            }
            other => other,
        }
    }

    /// `verb` (EVALSHA, EVAL or FCALL) of `script`, after loading the
    /// library when `load`, and followed by WAIT when the call asks for it.
    async fn invoke<C: ConnectionLike + Send, T: FromRedisValue>(
        &self,
        connection: &mut C,
        verb: &str,
        script: &str,
        load: bool,
    ) -> RedisResult<(T, Option<u32>)> {
        let mut command = redis::cmd(verb);
        command
            .arg(script)
            .arg(self.keys.len())
            .arg(self.keys)
            .arg(self.args);
        if !load && self.wait.is_none() {
            return Ok((command.query_async(connection).await?, None));
        }
        // A pipeline goes where its first keyed command goes: FUNCTION LOAD
        // and WAIT have no key, so they run on the node that runs the call.
        let mut pipe = redis::pipe();
        if load {
            // REPLACE: another call may have loaded it meanwhile; the text
            // is the same, as the library's name says.
            pipe.cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(&LIBRARY.source)
                .ignore();
        }
        pipe.add_command(command);
        let Some(wait) = self.wait else {
            let (reply,): (T,) = pipe.query_async(connection).await?;
            return Ok((reply, None));
        };
        pipe.cmd("WAIT").arg(wait.replicas).arg(wait.timeout_ms);
        let (reply, acked): (T, u32) = pipe.query_async(connection).await?;
        Ok((reply, Some(acked)))
    }
}

/// FCALL's answer when the node has no such function.
fn function_missing(e: &redis::RedisError) -> bool {
    e.code() == Some("ERR") && e.to_string().contains("Function not found")
}
