//! A real Sentinel setup for the tests: a master, a replica and three
//! sentinels (quorum 2, `down-after-milliseconds` 1000), from the same
//! `redis-server` binary on free ports. The data nodes and the sentinels
//! have different passwords, as in production, so the tests show permitd
//! keeps them apart. Ready once the sentinels know the replica and each
//! other, so that a failover can be voted at once.
//! [`SentinelSetup::shared`] is one per test binary; tests that fail the
//! master over start a private one.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::on_a_parked_thread;
use super::redis_server::{RedisServer, Reply};

/// The name the sentinels monitor the master by.
pub const MASTER_NAME: &str = "permitd-data";
/// The data nodes' password (`--redis-password`).
pub const DATA_PASSWORD: &str = "data-secret";
/// The sentinels' own password (in the sentinel URLs).
pub const SENTINEL_PASSWORD: &str = "sentinel-secret";

pub struct SentinelSetup {
    /// The data nodes; which one is master changes with a failover.
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

fn data_node() -> super::redis_server::RedisServerBuilder {
    RedisServer::builder()
        .config("requirepass", DATA_PASSWORD)
        .config("masterauth", DATA_PASSWORD)
}

impl SentinelSetup {
    /// A new setup, ready (see the module docs).
    pub fn start() -> Self {
        let master = data_node().start();
        let replica = data_node()
            .config("replicaof", &format!("127.0.0.1 {}", master.port()))
            .start();
        let lines = [
            format!(
                "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2",
                master.port()
            ),
            format!("sentinel down-after-milliseconds {MASTER_NAME} 1000"),
            format!("sentinel failover-timeout {MASTER_NAME} 5000"),
            format!("sentinel auth-pass {MASTER_NAME} {DATA_PASSWORD}"),
            format!("sentinel sentinel-pass {SENTINEL_PASSWORD}"),
            format!("requirepass {SENTINEL_PASSWORD}"),
        ];
        let sentinels = (0..3)
            .map(|_| {
                RedisServer::builder()
                    .sentinel(&lines)
                    .config("requirepass", SENTINEL_PASSWORD)
                    .start()
            })
            .collect();
        let setup = Self {
            data: vec![master, replica],
            sentinels,
        };
        setup.until_ready();
        setup
    }

    /// The setup every test of this binary may share.
    pub fn shared() -> Arc<Self> {
        static SHARED: OnceLock<Arc<SentinelSetup>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(on_a_parked_thread(Self::start)))
            .clone()
    }

    /// The sentinels' URLs with their password: `--redis-sentinels`.
    pub fn sentinel_urls(&self) -> String {
        self.sentinels
            .iter()
            .map(RedisServer::authed_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The port of the master, as the first sentinel that answers names it.
    pub fn master_port(&self) -> u16 {
        for sentinel in &self.sentinels {
            let asked = sentinel.try_command(
                &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
                Duration::from_secs(1),
            );
            if let Ok(Reply::Array(addr)) = asked
                && let [_, Reply::Bulk(port)] = addr.as_slice()
            {
                return port.parse().expect("a port");
            }
        }
        panic!("no sentinel names the master");
    }

    /// The data node the sentinels name master.
    pub fn master(&self) -> &RedisServer {
        let port = self.master_port();
        self.data
            .iter()
            .find(|n| n.port() == port)
            .expect("a data node")
    }

    /// The data node that is not the master.
    pub fn replica(&self) -> &RedisServer {
        let port = self.master_port();
        self.data
            .iter()
            .find(|n| n.port() != port)
            .expect("a data node")
    }

    /// `SENTINEL FAILOVER`, and the moment the replica it promotes reports
    /// the master role.
    pub fn failover(&self) -> Instant {
        let promoted = self.replica();
        let asked = self.sentinels[0].command(&["SENTINEL", "FAILOVER", MASTER_NAME]);
        assert!(asked.is_ok(), "SENTINEL FAILOVER: {asked:?}");
        self.until_master(promoted)
    }

    /// Waits until `node` reports the master role and the sentinels name it;
    /// when it took the role.
    pub fn until_master(&self, node: &RedisServer) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut promoted = None;
        loop {
            if promoted.is_none()
                && node.info_field("replication", "role").as_deref() == Some("master")
            {
                promoted = Some(Instant::now());
            }
            if let Some(at) = promoted
                && self.master_port() == node.port()
            {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "node :{} was never promoted",
                node.port()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until each sentinel knows the replica (in sync) and the two
    /// other sentinels.
    pub fn until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self.sentinels.iter().all(|sentinel| {
                let count = |what: &str| match sentinel.command(&["SENTINEL", what, MASTER_NAME]) {
                    Reply::Array(items) => items.len(),
                    _ => 0,
                };
                count("replicas") >= 1 && count("sentinels") == self.sentinels.len() - 1
            }) && self
                .replica()
                .info_field("replication", "master_link_status")
                .as_deref()
                == Some("up");
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not find each other"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
