//! Waiting acquires (`wait_ms`): FIFO order, push wakes, time-outs, clients
//! that leave, instances that die, lost notifications, shutdown. The shared
//! scenarios run on both stores; the crash and pub/sub ones need Redis.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{RedisServer, TestApp, expect_problem, spawn_app_with};
use permitd::config::Settings;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

struct Backend {
    apps: Vec<TestApp>,
    _redis: Option<RedisServer>,
}

/// `instances` apps on one store (several only make sense on Redis), each
/// with `recheck_ms` as its re-check interval.
async fn backend(redis: bool, instances: usize, recheck_ms: u64) -> Backend {
    let server = redis.then(RedisServer::start);
    let mut apps = Vec::new();
    for _ in 0..instances {
        let mut settings = Settings::for_tests(server.as_ref().map(RedisServer::url));
        settings.wait_recheck_ms = recheck_ms;
        apps.push(spawn_app_with(settings).await);
    }
    Backend {
        apps,
        _redis: server,
    }
}

macro_rules! both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(false).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(true).await;
                }
            )*
        }
    };
}

both_stores!(
    a_waiter_is_granted_when_a_permit_is_released,
    a_waiter_is_granted_when_a_lease_expires_without_any_recheck,
    a_wait_that_runs_out_is_429_after_about_wait_ms,
    waiters_are_served_in_arrival_order,
    a_newcomer_never_overtakes_a_queued_waiter,
    raising_the_limit_wakes_waiters_at_once,
    a_client_that_disconnects_leaves_the_queue,
    shutdown_answers_waiting_requests_with_503,
);

struct Waited {
    status: u16,
    body: Value,
    took: Duration,
}

/// Starts a waiting acquire in the background.
fn wait_for(app: &TestApp, name: &str, body: Value) -> JoinHandle<Waited> {
    let request = app
        .client
        .post(app.url(&format!("/semaphores/{name}/permits")))
        .json(&body);
    tokio::spawn(async move {
        let started = Instant::now();
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Waited {
            status,
            body,
            took: started.elapsed(),
        }
    })
}

/// Polls status until `waiting` is `n` (waiters are queued asynchronously).
async fn until_waiting(app: &TestApp, name: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting = app.status(name).await["waiting"].as_u64().unwrap();
        if waiting == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waiting stayed {waiting}, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn hold(app: &TestApp, name: &str, body: Value) -> String {
    let response = app.acquire(name, body).await;
    assert_eq!(response.status(), 201);
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn a_waiter_is_granted_when_a_permit_is_released(redis: bool) {
    // A long re-check, so only the push wake can explain a prompt grant.
    let b = backend(redis, 1, 30_000).await;
    let app = &b.apps[0];
    let held = hold(app, "rel", json!({ "limit": 1 })).await;
    let waiter = wait_for(app, "rel", json!({ "wait_ms": 10_000, "holder": "next" }));
    until_waiting(app, "rel", 1).await;
    let released_at = Instant::now();
    assert_eq!(app.delete(&held).await.status(), 204);
    let waited = waiter.await.unwrap();
    assert_eq!(waited.status, 201);
    assert_eq!(waited.body["holder"], "next");
    let after_release = released_at.elapsed();
    assert!(
        after_release < Duration::from_millis(500),
        "granted {after_release:?} after release"
    );
    let status = app.status("rel").await;
    assert_eq!(
        (status["held"].as_u64(), status["waiting"].as_u64()),
        (Some(1), Some(0))
    );
}

async fn a_waiter_is_granted_when_a_lease_expires_without_any_recheck(redis: bool) {
    let b = backend(redis, 1, 30_000).await;
    let app = &b.apps[0];
    hold(app, "exp", json!({ "limit": 1, "ttl_ms": 400 })).await;
    let waited = wait_for(app, "exp", json!({ "wait_ms": 10_000 }))
        .await
        .unwrap();
    assert_eq!(waited.status, 201);
    assert!(
        waited.took >= Duration::from_millis(300) && waited.took < Duration::from_millis(1500),
        "granted after {:?}, the lease ran out at 400 ms",
        waited.took
    );
}

async fn a_wait_that_runs_out_is_429_after_about_wait_ms(redis: bool) {
    let b = backend(redis, 1, 1_000).await;
    let app = &b.apps[0];
    hold(app, "tmo", json!({ "limit": 1, "ttl_ms": 60_000 })).await;
    let started = Instant::now();
    let response = app.acquire("tmo", json!({ "wait_ms": 400 })).await;
    let took = started.elapsed();
    assert!(response.headers().contains_key("retry-after"));
    let problem = expect_problem(response, 429).await;
    assert_eq!(
        (problem["limit"].as_u64(), problem["held"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    assert_eq!(
        app.status("tmo").await["waiting"],
        0,
        "the waiter left the queue"
    );
}

async fn waiters_are_served_in_arrival_order(redis: bool) {
    // On Redis the waiters alternate between two instances.
    let b = backend(redis, if redis { 2 } else { 1 }, 1_000).await;
    let first = &b.apps[0];
    let held = hold(first, "fifo", json!({ "limit": 1 })).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..6u64 {
        let app = &b.apps[i as usize % b.apps.len()];
        let (client, url) = (app.client.clone(), app.url("/semaphores/fifo/permits"));
        let base = app.url("");
        let order = order.clone();
        waiters.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({ "wait_ms": 15_000, "holder": format!("w{i}") }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201, "waiter {i}");
            let location = response.headers()["location"].to_str().unwrap().to_owned();
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let released = client
                .delete(format!("{base}{location}"))
                .send()
                .await
                .unwrap();
            assert_eq!(released.status(), 204);
        }));
        until_waiting(first, "fifo", i + 1).await;
    }
    assert_eq!(first.delete(&held).await.status(), 204);
    for waiter in waiters {
        waiter.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
}

async fn a_newcomer_never_overtakes_a_queued_waiter(redis: bool) {
    let b = backend(redis, 1, 1_000).await;
    let app = &b.apps[0];
    let held = hold(app, "fair", json!({ "limit": 2 })).await;
    // Needs both units: queued although one is free.
    let big = wait_for(app, "fair", json!({ "count": 2, "wait_ms": 10_000 }));
    until_waiting(app, "fair", 1).await;
    let problem = expect_problem(app.acquire("fair", json!({})).await, 429).await;
    assert_eq!(
        problem["available"], 1,
        "a unit is free, but the queue comes first"
    );
    let also_waiting = wait_for(app, "fair", json!({ "wait_ms": 10_000 }));
    until_waiting(app, "fair", 2).await;
    assert_eq!(app.delete(&held).await.status(), 204);
    let big = big.await.unwrap();
    assert_eq!((big.status, big.body["count"].as_u64()), (201, Some(2)));
    let big_path = format!(
        "/semaphores/fair/permits/{}",
        big.body["id"].as_str().unwrap()
    );
    assert_eq!(app.delete(&big_path).await.status(), 204);
    assert_eq!(also_waiting.await.unwrap().status, 201);
}

async fn raising_the_limit_wakes_waiters_at_once(redis: bool) {
    let b = backend(redis, 1, 30_000).await;
    let app = &b.apps[0];
    hold(app, "grow", json!({ "limit": 1 })).await;
    let one = wait_for(app, "grow", json!({ "wait_ms": 10_000 }));
    until_waiting(app, "grow", 1).await;
    let two = wait_for(app, "grow", json!({ "wait_ms": 10_000 }));
    until_waiting(app, "grow", 2).await;
    let raised_at = Instant::now();
    let raised = app
        .put_json("/semaphores/grow", json!({ "limit": 3 }))
        .await;
    assert_eq!(raised.status(), 200);
    assert_eq!(one.await.unwrap().status, 201);
    assert_eq!(two.await.unwrap().status, 201);
    assert!(raised_at.elapsed() < Duration::from_millis(500));
}

async fn a_client_that_disconnects_leaves_the_queue(redis: bool) {
    let b = backend(redis, 1, 30_000).await;
    let app = &b.apps[0];
    let held = hold(app, "gone", json!({ "limit": 1 })).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = impatient
        .post(app.url("/semaphores/gone/permits"))
        .json(&json!({ "wait_ms": 20_000 }))
        .send()
        .await;
    assert!(result.is_err(), "the client gave up");
    until_waiting(app, "gone", 0).await;
    assert_eq!(app.delete(&held).await.status(), 204);
    // Nobody left in the queue holds up a newcomer.
    assert_eq!(app.acquire("gone", json!({})).await.status(), 201);
}

async fn shutdown_answers_waiting_requests_with_503(redis: bool) {
    let mut b = backend(redis, 1, 30_000).await;
    hold(&b.apps[0], "stop", json!({ "limit": 1 })).await;
    let waiter = wait_for(&b.apps[0], "stop", json!({ "wait_ms": 30_000 }));
    until_waiting(&b.apps[0], "stop", 1).await;
    let stopped_at = Instant::now();
    b.apps[0].shut_down();
    let waited = waiter.await.unwrap();
    assert_eq!(waited.status, 503);
    assert!(stopped_at.elapsed() < Duration::from_secs(2));
}

/// A permitd process, killed (SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_binary(redis: &RedisServer, port: u16, recheck_ms: u64) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_permitd"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", &redis.url()])
        .args(["--wait-recheck-ms", &recheck_ms.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_killed_instance_leave_the_queue_within_the_bound() {
    let b = backend(true, 1, 30_000).await;
    let app = &b.apps[0];
    let redis = b._redis.as_ref().unwrap();
    let held = hold(app, "crash", json!({ "limit": 1 })).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let doomed = start_binary(redis, port, 200);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the second instance did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two waiters on the doomed instance, then one here behind them.
    let mut doomed_waiters = Vec::new();
    for n in 1..=2 {
        let request = client
            .post(format!("{base}/semaphores/crash/permits"))
            .json(&json!({ "wait_ms": 30_000 }));
        doomed_waiters.push(tokio::spawn(async move { request.send().await }));
        until_waiting(app, "crash", n).await;
    }
    let survivor = wait_for(app, "crash", json!({ "wait_ms": 20_000 }));
    until_waiting(app, "crash", 3).await;

    drop(doomed); // SIGKILL: no goodbye, nobody leaves the queue on its behalf
    for waiter in doomed_waiters {
        assert!(waiter.await.unwrap().is_err());
    }
    let released_at = Instant::now();
    assert_eq!(app.delete(&held).await.status(), 204);
    let survivor = survivor.await.unwrap();
    assert_eq!(survivor.status, 201);
    // Their leases (3 x 200 ms) end; the survivor's own re-checks are 30 s
    // apart, so the release or the lease sweep must have woken it.
    assert!(
        released_at.elapsed() < Duration::from_secs(3),
        "served {:?} after the release",
        released_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscriber_connection_does_not_strand_waiters() {
    let b = backend(true, 1, 30_000).await;
    let app = &b.apps[0];
    let redis = b._redis.as_ref().unwrap();
    let held = hold(app, "sub", json!({ "limit": 1 })).await;
    let waiter = wait_for(app, "sub", json!({ "wait_ms": 20_000 }));
    until_waiting(app, "sub", 1).await;

    let killed = redis.command("CLIENT KILL TYPE pubsub").unwrap();
    assert!(killed.starts_with(":1"), "killed {killed}");
    // Released at once: the wake may be published while nobody listens.
    assert_eq!(app.delete(&held).await.status(), 204);
    let waited = waiter.await.unwrap();
    assert_eq!(waited.status, 201);
    assert!(
        waited.took < Duration::from_secs(5),
        "took {:?}",
        waited.took
    );
    // And the subscription is back: a later release wakes promptly again.
    let second = wait_for(app, "sub", json!({ "wait_ms": 20_000 }));
    until_waiting(app, "sub", 1).await;
    let path = format!(
        "/semaphores/sub/permits/{}",
        waited.body["id"].as_str().unwrap()
    );
    let released_at = Instant::now();
    assert_eq!(app.delete(&path).await.status(), 204);
    assert_eq!(second.await.unwrap().status, 201);
    assert!(released_at.elapsed() < Duration::from_millis(500));
}
