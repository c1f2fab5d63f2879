//! The three Redis deployments as an operator meets them: `/readyz` and the
//! startup log say which mode (and, on a cluster, how many masters) without
//! showing a password; a semaphore's keys live in one slot and semaphores
//! spread over the masters; `--redis-wait-replicas` waits for replicas.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::cluster::RedisCluster;
use crate::helpers::sentinel::{DATA_PASSWORD, SENTINEL_PASSWORD, SentinelSetup};
use crate::helpers::{ApiClient, Harness, RedisServer, Store, expect_problem, on_every_deployment};

on_every_deployment!(readyz_says_how_the_store_is_deployed);

async fn readyz_says_how_the_store_is_deployed(store: Store) {
    let app = Harness::new(store).spawn().await;
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["store"], store.kind());
    let (mode, masters) = match store {
        Store::Memory => (None, None),
        Store::Redis => (Some("standalone"), None),
        Store::Cluster => (Some("cluster"), Some(3)),
        Store::Sentinel => (Some("sentinel"), None),
    };
    assert_eq!(ready["mode"].as_str(), mode, "{ready}");
    assert_eq!(ready["masters"].as_u64(), masters, "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_log_names_the_mode_and_no_password() {
    for store in [Store::Cluster, Store::Sentinel] {
        let harness = Harness::new(store);
        let path = std::env::temp_dir().join(format!("permitd-log-{}", uuid::Uuid::new_v4()));
        let log = std::fs::File::create(&path).unwrap();
        let mut app = harness.binary().log_to(log).start().await;
        app.kill();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(text.contains("connected to Redis"), "{text}");
        let wanted: &[&str] = match store {
            Store::Cluster => &["mode=\"cluster\"", "masters=3"],
            _ => &["mode=\"sentinel\""],
        };
        for field in wanted {
            assert!(text.contains(field), "{field} not in {text}");
        }
        for password in [DATA_PASSWORD, SENTINEL_PASSWORD] {
            assert!(!text.contains(password), "a password in the log: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphores_spread_over_the_masters_each_in_one_slot() {
    let harness = Harness::new(Store::Cluster);
    let app = harness.spawn().await;
    let cluster: &RedisCluster = harness.cluster();
    let mut per_master = std::collections::HashMap::new();
    for i in 0..30 {
        let name = format!("spread-{i}");
        let response = app.acquire(&name, json!({ "limit": 1 })).await;
        assert_eq!(response.status(), 201);
        let master = cluster.master_of(&format!("{{{name}}}"));
        // Every key of the semaphore is on its slot's master.
        let pattern = format!("{}{{{name}}}:*", harness.key_prefix());
        let keys = master.command(&["KEYS", &pattern]).strings();
        assert!(keys.len() >= 3, "keys of {name} on its master: {keys:?}");
        *per_master.entry(master.port()).or_insert(0) += 1;
    }
    assert_eq!(per_master.len(), 3, "30 semaphores on {per_master:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_replicas_and_a_missing_one_is_a_503() {
    let master = RedisServer::start();
    let replica = RedisServer::replica_of(&master);
    let harness = Harness::on(master).configure(|s| {
        s.redis_wait_replicas = 1;
        s.redis_timeout_ms = 1_000;
    });
    let app = harness.spawn().await;
    let key = format!("{}{{waited}}:meta", harness.key_prefix());

    // Acknowledged by the replica before the answer: it has the semaphore.
    assert_eq!(
        app.acquire("waited", json!({ "limit": 5 })).await.status(),
        201
    );
    assert_eq!(replica.command(&["EXISTS", &key]).integer(), 1);

    replica.pause();
    let started = Instant::now();
    let response = app.acquire("waited", json!({})).await;
    assert!(response.headers().contains_key("retry-after"));
    expect_problem(response, 503).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    replica.resume();
    assert_eq!(app.acquire("waited", json!({})).await.status(), 201);
    // The permit the 503 answered for was granted on the master all the
    // same, and withdrawn: two are held, not three.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.status("waited").await["held"] != 2 {
        assert!(Instant::now() < deadline, "{}", app.status("waited").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A write Redis refuses for now (`NOREPLICAS` from
/// `min-replicas-to-write`, `OOM` over `maxmemory`) is a 503 with
/// `Retry-After` whether or not the script is pipelined with `WAIT`: in the
/// pipeline its code used to be lost, and the answer was a 500 after the
/// `WAIT` (half the Redis timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_is_a_503_with_and_without_wait() {
    let master = RedisServer::start();
    let _replica = RedisServer::replica_of(&master);
    let harness = Harness::on(master).configure(|s| s.redis_timeout_ms = 1_000);
    let plain = harness.spawn().await;
    let waiting = harness
        .binary()
        .arg("--redis-wait-replicas")
        .arg("1")
        .start()
        .await;
    let (plain, waiting): (&ApiClient, &ApiClient) = (&plain, &waiting);
    for app in [plain, waiting] {
        assert_eq!(
            app.acquire("refused", json!({ "limit": 9 })).await.status(),
            201
        );
    }
    for (setting, refusing, accepting) in
        [("min-replicas-to-write", "2", "0"), ("maxmemory", "1", "0")]
    {
        let redis = harness.redis();
        assert!(redis.command(&["CONFIG", "SET", setting, refusing]).is_ok());
        for (form, app) in [("alone", plain), ("with WAIT", waiting)] {
            let started = Instant::now();
            let response = app.acquire("refused", json!({})).await;
            assert!(
                response.headers().contains_key("retry-after"),
                "{setting} {form}"
            );
            let problem = expect_problem(response, 503).await;
            assert_eq!(problem["type"], "urn:permitd:problem:store-unavailable");
            assert!(
                started.elapsed() < Duration::from_millis(300),
                "{setting} {form}: answered after {:?}",
                started.elapsed()
            );
        }
        assert!(
            redis
                .command(&["CONFIG", "SET", setting, accepting])
                .is_ok()
        );
        for app in [plain, waiting] {
            assert_eq!(
                app.acquire("refused", json!({})).await.status(),
                201,
                "{setting}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sentinel_is_skipped() {
    let setup = std::sync::Arc::new(SentinelSetup::start());
    // The first sentinel listed is the first asked.
    setup.sentinels()[0].kill();
    let app = Harness::on_sentinel(setup.clone()).spawn().await;
    assert_eq!(
        app.acquire("skip", json!({ "limit": 1 })).await.status(),
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_without_the_library_gets_it_in_the_retry() {
    let harness = Harness::new(Store::Cluster);
    let app = harness.spawn().await;
    assert_eq!(
        app.acquire("flushed", json!({ "limit": 2 })).await.status(),
        201
    );
    // As after a restart without persistence.
    let master = harness.cluster().master_of("{flushed}");
    assert!(master.command(&["FUNCTION", "FLUSH"]).is_ok());
    assert!(master.command(&["SCRIPT", "FLUSH"]).is_ok());
    assert_eq!(app.acquire("flushed", json!({})).await.status(), 201);
    assert_eq!(app.status("flushed").await["held"], 2);
}
