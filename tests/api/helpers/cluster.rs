//! A real Redis Cluster for the tests: 3 masters and 3 replicas from the
//! same `redis-server` binary on free ports, made with `redis-cli --cluster
//! create` and ready once every node reports `cluster_state:ok` and every
//! replica is in sync. [`RedisCluster::shared`] is one per test binary, for
//! tests that only need a cluster (each harness on it gets its own key
//! prefix); tests that fail nodes over start a private one.

use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::on_a_parked_thread;
use super::redis_server::{RedisServer, Reply};

/// `cluster-node-timeout`: how long a silent master takes to be failed over.
pub const NODE_TIMEOUT_MS: u64 = 2000;

const MASTERS: usize = 3;

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges served, for a master.
    pub slots: Vec<(u16, u16)>,
}

pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// A new cluster, ready (see the module docs).
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..MASTERS * 2)
            .map(|_| RedisServer::builder().cluster_node(NODE_TIMEOUT_MS).start())
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let created = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli (Debian package redis-tools) runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Self { nodes };
        cluster.until_healthy(true);
        cluster
    }

    /// The cluster every test of this binary may share (see the module docs).
    pub fn shared() -> Arc<Self> {
        static SHARED: OnceLock<Arc<RedisCluster>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(on_a_parked_thread(Self::start)))
            .clone()
    }

    /// Every node's URL, comma-separated: the `--redis-cluster` seeds.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("a node of this cluster")
    }

    /// The topology as a node that answers sees it.
    pub fn topology(&self) -> Vec<NodeLine> {
        for node in &self.nodes {
            if let Ok(Reply::Bulk(text)) =
                node.try_command(&["CLUSTER", "NODES"], Duration::from_secs(1))
            {
                return text.lines().filter_map(parse_node_line).collect();
            }
        }
        panic!("no cluster node answers CLUSTER NODES");
    }

    /// The master serving `key`'s slot now.
    pub fn master_of(&self, key: &str) -> &RedisServer {
        let slot = self
            .live_node()
            .command(&["CLUSTER", "KEYSLOT", key])
            .integer();
        let slot = u16::try_from(slot).expect("a slot");
        let line = self
            .topology()
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })
            .expect("a master serves every slot");
        self.node(line.port)
    }

    /// A replica of `master`.
    pub fn replica_of(&self, master: &RedisServer) -> &RedisServer {
        let topology = self.topology();
        let id = &topology
            .iter()
            .find(|n| n.port == master.port())
            .expect("the master is known")
            .id;
        let replica = topology
            .iter()
            .find(|n| !n.master && !n.failed && n.master_id.as_ref() == Some(id))
            .expect("the master has a replica");
        self.node(replica.port)
    }

    /// `CLUSTER FAILOVER` on `replica`, and the moment it is a master.
    pub fn failover_to(&self, replica: &RedisServer) -> Instant {
        assert!(replica.command(&["CLUSTER", "FAILOVER"]).is_ok());
        self.until_master(replica)
    }

    /// Waits until `node` reports the master role; when that was seen.
    pub fn until_master(&self, node: &RedisServer) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if node.info_field("replication", "role").as_deref() == Some("master") {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "node :{} never became a master",
                node.port()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until every node that answers reports `cluster_state:ok` and
    /// sees three masters serving all slots; with `replicas`, also until
    /// each master has a replica in sync.
    pub fn until_healthy(&self, replicas: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.healthy(replicas) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self, replicas: bool) -> bool {
        let live: Vec<&RedisServer> = self
            .nodes
            .iter()
            .filter(|n| n.try_command(&["PING"], Duration::from_millis(500)).is_ok())
            .collect();
        let all_ok = live.iter().all(|n| {
            matches!(n.command(&["CLUSTER", "INFO"]),
                Reply::Bulk(ref info) if info.contains("cluster_state:ok"))
        });
        if !all_ok {
            return false;
        }
        let topology = self.topology();
        let masters: Vec<&NodeLine> = topology
            .iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .collect();
        let slots: u32 = masters
            .iter()
            .flat_map(|m| &m.slots)
            .map(|&(a, b)| u32::from(b - a) + 1)
            .sum();
        if masters.len() != MASTERS || slots != 16384 {
            return false;
        }
        !replicas
            || masters.iter().all(|m| {
                topology.iter().any(|r| {
                    !r.master
                        && !r.failed
                        && r.master_id.as_ref() == Some(&m.id)
                        && self
                            .node(r.port)
                            .info_field("replication", "master_link_status")
                            .as_deref()
                            == Some("up")
                })
            })
    }

    fn live_node(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.try_command(&["PING"], Duration::from_millis(500)).is_ok())
            .expect("a live cluster node")
    }
}

/// `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return None;
    }
    let address = fields[1].split('@').next()?;
    let port = address.rsplit(':').next()?.parse().ok()?;
    let flags: Vec<&str> = fields[2].split(',').collect();
    let slots = fields[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    Some(NodeLine {
        id: fields[0].to_owned(),
        port,
        master: flags.contains(&"master"),
        failed: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
        master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
    })
}
