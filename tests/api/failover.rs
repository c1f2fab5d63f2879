//! Failovers on real ones: `CLUSTER FAILOVER` and `kill -9` of a cluster
//! master, `SENTINEL FAILOVER` and `kill -9` of the Sentinel master, each
//! under concurrent acquires and waiters, without restarting permitd; the
//! node a cluster subscriber used killed; a promoted replica that missed
//! the last writes (fencing tokens stay monotonic). Each test has a private
//! cluster or Sentinel setup, since it breaks it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::cluster::RedisCluster;
use crate::helpers::sentinel::SentinelSetup;
use crate::helpers::{ApiClient, Harness, RedisServer, Reply, TestApp, Waited};

/// How long after the new master takes its role permitd must serve again.
const BACK_WITHIN: Duration = Duration::from_millis(2_500);

/// What one request of the load saw.
struct Seen {
    request: &'static str,
    status: u16,
    retry_after: bool,
    took: Duration,
}

/// Acquire/hold/release cycles from several tasks until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Seen>>>,
}

impl Load {
    fn start(apps: &[TestApp], name: &str, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|i| {
                let api: ApiClient = (*apps[i % apps.len()]).clone();
                let (stop, name) = (stop.clone(), name.to_owned());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let body = json!({ "limit": 2, "wait_ms": 1_000, "ttl_ms": 5_000 });
                        let response = api.acquire(&name, body).await;
                        let status = response.status().as_u16();
                        let retry_after = response.headers().contains_key("retry-after");
                        let location = response
                            .headers()
                            .get("location")
                            .map(|l| l.to_str().unwrap().to_owned());
                        seen.push(Seen {
                            request: "acquire",
                            status,
                            retry_after,
                            took: started.elapsed(),
                        });
                        if let Some(location) = location {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            let started = Instant::now();
                            let response = api.delete(&location).await;
                            seen.push(Seen {
                                request: "release",
                                status: response.status().as_u16(),
                                retry_after: response.headers().contains_key("retry-after"),
                                took: started.elapsed(),
                            });
                        } else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    seen
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops the load and checks every answer: a success, a refusal the
    /// contract allows, or a 503 with `Retry-After`; none slow, none a 500.
    async fn stop_and_check(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut unavailable = 0;
        let mut granted = 0;
        for worker in self.workers {
            for seen in worker.await.unwrap() {
                let allowed: &[u16] = match seen.request {
                    "acquire" => &[201, 429, 503],
                    // A release lost with the old master's last writes is a 404.
                    _ => &[204, 404, 503],
                };
                assert!(
                    allowed.contains(&seen.status),
                    "{} answered {}",
                    seen.request,
                    seen.status
                );
                if seen.status == 503 {
                    assert!(seen.retry_after, "a 503 without Retry-After");
                    unavailable += 1;
                }
                granted += usize::from(seen.status == 201);
                // wait_ms plus a store call's bound twice, and slack: no hang.
                assert!(
                    seen.took < Duration::from_secs(6),
                    "{} took {:?}",
                    seen.request,
                    seen.took
                );
            }
        }
        assert!(granted > 0, "the load never got a permit");
        unavailable
    }
}

/// Waits until `replica` has every write `master` had when asked.
fn until_replicated(master: &RedisServer, replica: &RedisServer) {
    let offset = |node: &RedisServer, field: &str| -> u64 {
        node.info_field("replication", field)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let wanted = offset(master, "master_repl_offset");
    let deadline = Instant::now() + Duration::from_secs(10);
    while offset(replica, "slave_repl_offset") < wanted {
        assert!(Instant::now() < deadline, "the replica did not catch up");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A holder and three waiters queued behind it, in order, on `name`.
struct Queue {
    holder: String,
    waiters: Vec<JoinHandle<Waited>>,
}

async fn queue_behind_a_holder(api: &ApiClient, name: &str) -> Queue {
    let response = api
        .acquire(
            name,
            json!({ "limit": 1, "ttl_ms": 60_000, "holder": "first" }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let holder = response.headers()["location"].to_str().unwrap().to_owned();
    let mut waiters = Vec::new();
    for i in 0..3 {
        let body = json!({ "wait_ms": 25_000, "ttl_ms": 60_000, "holder": format!("w{i}") });
        waiters.push(api.acquire_in_background(name, body));
        api.until_waiting(name, i + 1).await;
    }
    Queue { holder, waiters }
}

/// Releases (retrying 503s) and checks the waiters are served in order,
/// each promptly after the release before it: a waiter whose attempts failed
/// during the failover is listening again.
async fn served_in_order(api: &ApiClient, queue: Queue) {
    let mut release = queue.holder;
    for (i, waiter) in queue.waiters.into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = api.delete(&release).await.status().as_u16();
            if status == 204 {
                break;
            }
            assert_eq!(status, 503, "release answered {status}");
            assert!(Instant::now() < deadline, "release kept failing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let released_at = Instant::now();
        let waited = waiter.await.unwrap();
        assert_eq!(waited.status, 201, "waiter {i}: {}", waited.body);
        // By push (the re-check is 30 s), not at the end of the wait.
        assert!(
            released_at.elapsed() < Duration::from_secs(2),
            "waiter {i} granted {:?} after the release",
            released_at.elapsed()
        );
        assert_eq!(
            waited.body["holder"],
            format!("w{i}"),
            "served out of order"
        );
        release = format!(
            "/semaphores/{}/permits/{}",
            waited.body["semaphore"].as_str().unwrap(),
            waited.body["id"].as_str().unwrap()
        );
    }
}

/// A semaphore name whose slot `master` serves.
fn name_on(cluster: &RedisCluster, master: &RedisServer, stem: &str) -> String {
    (0..)
        .map(|i| format!("{stem}-{i}"))
        .find(|name| cluster.master_of(&format!("{{{name}}}")).port() == master.port())
        .unwrap()
}

/// A long re-check, so that only push wakes explain prompt grants.
fn quiet(harness: Harness) -> Harness {
    harness.configure(|s| s.wait_recheck_ms = 30_000)
}

/// The whole scenario: load and a queue on the failing master, the failover
/// itself (`fail` returns when the new master took its role), then permitd
/// serving again promptly, the waiters in order, every answer well-formed.
async fn under_load(
    harness: &Harness,
    [load_name, queue_name, probe_name]: [&str; 3],
    fail: impl FnOnce() -> Instant,
) {
    let apps = harness.spawn_many(2).await;
    let (_, _, _) = until_name_serves(&apps[1], probe_name, Instant::now()).await;
    let queue = queue_behind_a_holder(&apps[0], queue_name).await;
    let load = Load::start(&apps, load_name, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let promoted = tokio::task::block_in_place(fail);
    let (back, longest, probe_503s) = until_name_serves(&apps[1], probe_name, promoted).await;
    eprintln!(
        "{probe_name}: serving again {back:?} after the promotion, longest probe {longest:?}, \
         {probe_503s} probes 503"
    );
    assert!(
        back < BACK_WITHIN,
        "served again only {back:?} after the promotion"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unavailable = load.stop_and_check().await;
    eprintln!("{unavailable} answers were 503 during the failover");
    served_in_order(&apps[0], queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_under_load() {
    let cluster = Arc::new(RedisCluster::start());
    let harness = quiet(Harness::on_cluster(cluster.clone()));
    let master = cluster.master_of("{load}");
    let queue = name_on(&cluster, master, "queue");
    let probe = name_on(&cluster, master, "probe");
    let replica = cluster.replica_of(master);
    under_load(&harness, ["load", &queue, &probe], || {
        cluster.failover_to(replica)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_under_load() {
    let cluster = Arc::new(RedisCluster::start());
    let harness = quiet(Harness::on_cluster(cluster.clone()));
    let master = cluster.master_of("{load}");
    let queue = name_on(&cluster, master, "queue");
    let probe = name_on(&cluster, master, "probe");
    let replica = cluster.replica_of(master);
    under_load(&harness, ["load", &queue, &probe], || {
        until_replicated(master, replica);
        master.kill();
        cluster.until_master(replica)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load() {
    let setup = Arc::new(SentinelSetup::start());
    let harness = quiet(Harness::on_sentinel(setup.clone()));
    under_load(&harness, ["load", "queue", "probe"], || setup.failover()).await;
    // Writes went to the new master at once, not to the old one that still
    // accepted them for a while after the switch.
    let apps = harness.spawn_many(1).await;
    assert_eq!(
        apps[0]
            .acquire("after", json!({ "limit": 1 }))
            .await
            .status(),
        201
    );
    let key = format!("{}{{after}}:meta", harness.key_prefix());
    assert_eq!(setup.master().command(&["EXISTS", &key]).integer(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed_under_load() {
    let setup = Arc::new(SentinelSetup::start());
    let harness = quiet(Harness::on_sentinel(setup.clone()));
    under_load(&harness, ["load", "queue", "probe"], || {
        let (master, replica) = (setup.master(), setup.replica());
        until_replicated(master, replica);
        master.kill();
        setup.until_master(replica)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cluster_node_carries_the_wake_subscription_also_after_a_master_dies() {
    let cluster = Arc::new(RedisCluster::start());
    let harness = quiet(Harness::on_cluster(cluster.clone()));
    let app = harness.spawn().await;
    // Nodes with a subscriber (only this app subscribes on this cluster).
    let subscribed = || -> Vec<u16> {
        cluster
            .topology()
            .into_iter()
            .filter(|n| {
                let clients = cluster.node(n.port).try_command(
                    &["CLIENT", "LIST", "TYPE", "pubsub"],
                    Duration::from_secs(1),
                );
                matches!(clients, Ok(Reply::Bulk(ref list)) if list.contains("sub=1"))
            })
            .map(|n| n.port)
            .collect()
    };
    // On every node: a wake comes straight from the master that ran the
    // script, not relayed over the cluster bus.
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribed().len() < 6 {
        assert!(
            Instant::now() < deadline,
            "subscribed on {:?}",
            subscribed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let master = cluster.master_of("{woken}");
    let replica = cluster.replica_of(master);
    tokio::task::block_in_place(|| {
        until_replicated(master, replica);
        master.kill();
        cluster.until_master(replica);
        cluster.until_healthy(false);
    });
    // The promoted replica was subscribed all along: a release wakes by push.
    let response = loop {
        let response = app.acquire("woken", json!({ "limit": 1 })).await;
        if response.status() != 503 {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(response.status(), 201);
    let held = response.headers()["location"].to_str().unwrap().to_owned();
    let waiter = app.acquire_in_background("woken", json!({ "wait_ms": 20_000 }));
    app.until_waiting("woken", 1).await;
    let released_at = Instant::now();
    assert_eq!(app.delete(&held).await.status(), 204);
    assert_eq!(waiter.await.unwrap().status, 201);
    assert!(
        released_at.elapsed() < Duration::from_millis(500),
        "woken {:?} after the release",
        released_at.elapsed()
    );
    assert_eq!(
        subscribed().len(),
        5,
        "the live nodes keep their subscriptions"
    );
}

/// The leases of the lagging-replica test: longer than the failover takes,
/// so the lost writes' over-limit window is seen.
const LEASE: Duration = Duration::from_secs(6);

fn token(permit: &Value) -> u64 {
    permit["fencing_token"].as_u64().unwrap()
}

async fn grant(api: &ApiClient, name: &str, holder: &str) -> Value {
    let body = json!({ "limit": 2, "ttl_ms": LEASE.as_millis() as u64, "holder": holder });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = api.acquire(name, body.clone()).await;
        match response.status().as_u16() {
            201 => return response.json().await.unwrap(),
            429 | 503 => assert!(Instant::now() < deadline, "never granted"),
            other => panic!("acquire answered {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stay_monotonic_when_the_promoted_replica_missed_the_last_writes() {
    let setup = Arc::new(SentinelSetup::start());
    let harness = Harness::on_sentinel(setup.clone());
    let app = harness.spawn().await;
    let (master, replica) = (setup.master(), setup.replica());

    // Two permits the replica has; then, with the replica stopped, both
    // released and two more granted: writes only the old master has.
    let first = [
        grant(&app, "fence", "a").await,
        grant(&app, "fence", "b").await,
    ];
    tokio::task::block_in_place(|| until_replicated(master, replica));
    replica.pause();
    // Cut the link too: a stopped replica's socket would still buffer what
    // the master sends, and it would read it all once resumed.
    let cut = master.command(&["CLIENT", "KILL", "TYPE", "replica"]);
    assert_eq!(cut.integer(), 1, "{cut:?}");
    // Not a race being hidden: the lost writes come a second after the
    // last replicated ones, so that the over-limit window they open shows.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for permit in &first {
        let path = format!(
            "/semaphores/fence/permits/{}",
            permit["id"].as_str().unwrap()
        );
        assert_eq!(app.delete(&path).await.status(), 204);
    }
    let lost_at = Instant::now();
    let lost = [
        grant(&app, "fence", "c").await,
        grant(&app, "fence", "d").await,
    ];
    let before = first.iter().chain(&lost).map(token).max().unwrap();

    master.kill();
    replica.resume();
    tokio::task::block_in_place(|| setup.until_master(replica));
    // The writes really were lost: the promoted replica holds the first two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let holders = loop {
        let response = app.get("/semaphores/fence").await;
        if response.status() == 200 {
            let status: Value = response.json().await.unwrap();
            break status["holders"].as_array().unwrap().clone();
        }
        assert!(Instant::now() < deadline, "never served after the failover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let held: Vec<&str> = holders
        .iter()
        .map(|h| h["holder"].as_str().unwrap())
        .collect();
    assert_eq!(
        held,
        ["a", "b"],
        "the promoted replica should hold what it had"
    );

    // The promoted replica still counts the first two as held (their
    // releases are lost) until their leases end; then two newcomers get in
    // while the lost permits' holders still believe they hold: over the
    // limit until those leases end.
    let after = [
        grant(&app, "fence", "e").await,
        grant(&app, "fence", "f").await,
    ];
    let newcomers_in = lost_at.elapsed();
    for permit in &after {
        assert!(
            token(permit) > before,
            "token {} handed out after the failover is not above {before}",
            token(permit)
        );
    }
    // The lost permits' leases run from `lost_at`; the newcomers got in
    // once the first two leases ended on the promoted replica.
    let over_limit_for = LEASE.saturating_sub(newcomers_in);
    eprintln!(
        "lost writes: {} holders above the limit of 2 for about {over_limit_for:?}, \
         until the lost permits' leases ended",
        if over_limit_for.is_zero() {
            0
        } else {
            lost.len()
        }
    );
    for permit in &lost {
        let path = format!(
            "/semaphores/fence/permits/{}",
            permit["id"].as_str().unwrap()
        );
        assert_eq!(
            app.get(&path).await.status(),
            404,
            "a lost permit came back"
        );
    }
}

/// Try-once acquires of one unit on `name` (and its release) every 20 ms
/// from `since` until one is granted: how long after `since` that was, the
/// longest request, and how many answered 503. `name` lives on the node that
/// fails over: fresh names would mostly land on the other masters and see
/// nothing of the failover.
async fn until_name_serves(
    api: &ApiClient,
    name: &str,
    since: Instant,
) -> (Duration, Duration, usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut longest, mut unavailable) = (Duration::ZERO, 0);
    loop {
        let started = Instant::now();
        let response = api
            .acquire(name, json!({ "limit": 5, "ttl_ms": 5_000 }))
            .await;
        let took = started.elapsed();
        longest = longest.max(took);
        match response.status().as_u16() {
            201 => {
                let location = response.headers()["location"].to_str().unwrap().to_owned();
                assert_eq!(api.delete(&location).await.status(), 204);
                return (since.elapsed(), longest, unavailable);
            }
            503 => unavailable += 1,
            other => panic!("{name} answered {other}"),
        }
        assert!(Instant::now() < deadline, "{name} never served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The measured case of a planned failover: a semaphore on the master that
/// fails over, untouched for seconds, then probed as soon as the replica is
/// promoted (targets: served again within 200 ms, no request over 500 ms,
/// nothing lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_after_idle_seconds_serves_the_failing_masters_semaphores() {
    let cluster = Arc::new(RedisCluster::start());
    let harness = Harness::on_cluster(cluster.clone());
    let app = harness.binary().start().await;
    let master = cluster.master_of("{idle}");
    let replica = cluster.replica_of(master);
    assert_eq!(
        app.acquire("idle", json!({ "limit": 5 })).await.status(),
        201
    );
    let held = app
        .acquire("idle", json!({ "limit": 5, "ttl_ms": 60_000 }))
        .await;
    assert_eq!(held.status(), 201);
    let held = held.headers()["location"].to_str().unwrap().to_owned();
    // Idle seconds: nothing keeps permitd's view of the slots fresh.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let promoted = tokio::task::block_in_place(|| cluster.failover_to(replica));
    let (back, longest, unavailable) = until_name_serves(&app, "idle", promoted).await;
    eprintln!(
        "idle: {{idle}} served again {back:?} after the promotion, longest request {longest:?}, \
         {unavailable} 503s"
    );
    assert!(
        back <= Duration::from_millis(200),
        "served again only after {back:?}"
    );
    assert!(
        longest <= Duration::from_millis(500),
        "a request took {longest:?}"
    );
    // A planned failover loses nothing: the permit granted before is there.
    assert_eq!(app.get(&held).await.status(), 200, "the permit held before");
}

/// A planned `SENTINEL FAILOVER` loses no permit it acknowledged: try-once
/// acquires every 50 ms on one semaphore all through it, then, once the old
/// master was demoted and follows the new one, every permit answered 201 is
/// looked up (a permit written to the old master after the promotion is
/// thrown away by its demotion). Also reports the outage and the 503s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_sentinel_failover_loses_no_acknowledged_permit() {
    let setup = Arc::new(SentinelSetup::start());
    let harness = Harness::on_sentinel(setup.clone());
    let app = harness.spawn().await;
    let old = setup.master().port();
    let created = app
        .put_json("/semaphores/planned", json!({ "limit": 10_000 }))
        .await;
    assert_eq!(created.status(), 201);
    let stop = Arc::new(AtomicBool::new(false));
    let probing = {
        let (api, stop): (ApiClient, _) = ((*app).clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let response = api.acquire("planned", json!({ "ttl_ms": 120_000 })).await;
                let status = response.status().as_u16();
                let location = response
                    .headers()
                    .get("location")
                    .map(|l| l.to_str().unwrap().to_owned());
                seen.push((started, started.elapsed(), status, location));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let promoted = tokio::task::block_in_place(|| setup.failover());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = probing.await.unwrap();
    // The old master demoted and following the new one: nothing it alone
    // still had survives.
    let demoted = setup.replica();
    assert_eq!(demoted.port(), old, "the old master is the replica now");
    let deadline = Instant::now() + Duration::from_secs(30);
    while demoted
        .info_field("replication", "master_link_status")
        .as_deref()
        != Some("up")
    {
        assert!(
            Instant::now() < deadline,
            "the old master never followed the new one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lost = 0;
    let mut granted = 0;
    for (_, _, status, location) in &seen {
        assert!([201, 503].contains(status), "answered {status}");
        if let Some(location) = location {
            granted += 1;
            if app.get(location).await.status() == 404 {
                lost += 1;
            }
        }
    }
    let longest = seen.iter().map(|s| s.1).max().unwrap();
    let unavailable = seen.iter().filter(|s| s.2 == 503).count();
    // When the last 503 was answered, in ms after the replica took the
    // master role (negative: before).
    let last_503_ms = seen
        .iter()
        .filter(|s| s.2 == 503)
        .map(|s| s.0 + s.1)
        .max()
        .map(|at| match at.checked_duration_since(promoted) {
            Some(after) => after.as_millis() as i64,
            None => -(promoted.duration_since(at).as_millis() as i64),
        });
    eprintln!(
        "planned Sentinel failover: {granted} granted, {lost} lost, {unavailable} answered 503 \
         (the last at {last_503_ms:?} ms from the promotion), longest request {longest:?}"
    );
    assert_eq!(lost, 0, "acknowledged permits lost");
}

/// `kill -9` of a cluster master, then, once it has rejoined as a replica,
/// of the master that replaced it: the semaphore on that slot is served
/// again both times, each within node timeout plus 1.5 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_twice_in_a_row_is_served_again_both_times() {
    let cluster = Arc::new(RedisCluster::start());
    let harness = Harness::on_cluster(cluster.clone());
    let app = harness.spawn().await;
    let first = cluster.master_of("{twice}");
    let second = cluster.replica_of(first);
    for (round, (dying, taking_over)) in [(first, second), (second, first)].into_iter().enumerate()
    {
        let (_, _, _) = until_name_serves(&app, "twice", Instant::now()).await;
        tokio::task::block_in_place(|| until_replicated(dying, taking_over));
        let killed = Instant::now();
        dying.kill();
        // The promotion, watched beside the probes: Redis's own part.
        let watcher = {
            let cluster = cluster.clone();
            let port = taking_over.port();
            tokio::task::spawn_blocking(move || cluster.until_master(cluster.node(port)))
        };
        let (back, longest, unavailable) = until_name_serves(&app, "twice", killed).await;
        let promoted = watcher.await.unwrap().duration_since(killed);
        eprintln!(
            "kill -9 round {round}: promoted {promoted:?} after the kill, {{twice}} served again \
             {back:?} after the kill ({:?} after the promotion), longest request {longest:?}, \
             {unavailable} answered 503",
            back.saturating_sub(promoted)
        );
        // Served within half a second of the promotion; how long Redis takes
        // to promote (node timeout, the failure report's gossip, the replica
        // election's delay) is Redis's.
        assert!(
            back <= promoted + Duration::from_millis(500),
            "round {round}: promoted after {promoted:?}, served again only after {back:?}"
        );
        tokio::task::block_in_place(|| {
            // Back as a replica of the node that took over.
            dying.restart();
            cluster.until_healthy(true);
        });
    }
}

/// `kill -9` of the Sentinel master with `--redis-wait-replicas 1` and one
/// replica: every permit answered 201 was acknowledged by that replica, the
/// one promoted, so none is lost. (Once it is master it has no replica, and
/// writes answer 503 until one follows it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sentinel_master_loses_no_permit_acknowledged_with_wait() {
    let setup = Arc::new(SentinelSetup::start());
    let harness = Harness::on_sentinel(setup.clone()).configure(|s| {
        s.redis_wait_replicas = 1;
        s.redis_timeout_ms = 1_000;
    });
    let app = harness.spawn().await;
    let created = app
        .put_json("/semaphores/acked", json!({ "limit": 10_000 }))
        .await;
    assert_eq!(created.status(), 201);
    let stop = Arc::new(AtomicBool::new(false));
    let probing = {
        let (api, stop): (ApiClient, _) = ((*app).clone(), stop.clone());
        tokio::spawn(async move {
            let mut granted = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = api.acquire("acked", json!({ "ttl_ms": 120_000 })).await;
                if let Some(location) = response.headers().get("location") {
                    granted.push(location.to_str().unwrap().to_owned());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            granted
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    let promoted = tokio::task::block_in_place(|| {
        let (master, replica) = (setup.master(), setup.replica());
        master.kill();
        setup.until_master(replica)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let granted = probing.await.unwrap();
    let mut lost = 0;
    for location in &granted {
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let status = app.get(location).await.status().as_u16();
            if status != 503 || Instant::now() > deadline {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        lost += usize::from(status == 404);
    }
    eprintln!(
        "kill -9 of the Sentinel master with WAIT 1: promoted {:?} after the kill, {} granted, \
         {lost} lost",
        promoted.duration_since(killed),
        granted.len()
    );
    assert!(!granted.is_empty());
    assert_eq!(lost, 0, "permits acknowledged by the replica were lost");
}

/// A `SENTINEL FAILOVER` that Sentinel gives up: the replica refuses
/// `REPLICAOF NO ONE` (an ACL rule here; in production, a sentinel that lost
/// its link to the replica), so after the failover timeout (5 s) the leading
/// sentinel announces `-failover-abort-slave-timeout` and the old master, which
/// never stopped being one, stays. permitd stopped writing to it the moment the
/// promotion was announced (those writes could have been lost), and must use
/// it again once the promotion is given up: not 503 until its handover times
/// out (15 s) or the next failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_given_up_serves_from_the_old_master_again() {
    let setup = Arc::new(SentinelSetup::start());
    let harness = Harness::on_sentinel(setup.clone());
    let app = harness.spawn().await;
    let master = setup.master().port();
    let refused = setup
        .replica()
        .command(&["ACL", "SETUSER", "default", "-replicaof", "-slaveof"]);
    assert!(
        matches!(refused, Reply::Status(_)),
        "ACL SETUSER: {refused:?}"
    );
    let created = app
        .put_json("/semaphores/given-up", json!({ "limit": 10_000 }))
        .await;
    assert_eq!(created.status(), 201);
    let asked = Instant::now();
    let failover = setup.sentinels()[0].command(&["SENTINEL", "FAILOVER", "permitd-data"]);
    assert!(
        matches!(failover, Reply::Status(_)),
        "SENTINEL FAILOVER: {failover:?}"
    );
    // Probes every 50 ms: when the handover began (the first 503) and when
    // permitd served from the old master again (the first 201 after it).
    let mut first_503 = None;
    let mut back = None;
    while back.is_none() && asked.elapsed() < Duration::from_secs(20) {
        let response = app.acquire("given-up", json!({ "ttl_ms": 60_000 })).await;
        match response.status().as_u16() {
            503 if first_503.is_none() => first_503 = Some(asked.elapsed()),
            201 if first_503.is_some() => back = Some(asked.elapsed()),
            201 | 503 => {}
            other => panic!("answered {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(setup.master().port(), master, "the promotion was given up");
    eprintln!(
        "SENTINEL FAILOVER given up: writes stopped {first_503:?} after the command, \
         served from the old master again {back:?} after it (failover timeout 5 s)"
    );
    let first_503 = first_503.expect("the promotion was acted on (a 503)");
    let back = back.expect("never served again within 20 s");
    assert!(
        back <= Duration::from_millis(7_000),
        "served again only {back:?} after the command ({first_503:?} after the first 503)"
    );
}
