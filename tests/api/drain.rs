//! A clean drain, on the real binary: on SIGTERM `/readyz` turns 503 at
//! once while requests in flight finish, then waiting acquires are answered
//! 503 with `Retry-After` and leave the queue (a second instance on the same
//! Redis sees nobody stranded), and the process exits 0. With a shutdown
//! delay, new connections are accepted and served as usual first.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::helpers::{ApiClient, BinaryApp, Harness, Store, expect_problem};

/// An upstream whose one call is held open until the test lets it go: while
/// it is held, the demo request calling it is certainly in flight.
struct HeldUpstream {
    addr: std::net::SocketAddr,
    arrived: mpsc::Receiver<()>,
    release: oneshot::Sender<()>,
}

async fn held_upstream() -> HeldUpstream {
    type Shared = std::sync::Arc<(mpsc::Sender<()>, Mutex<Option<oneshot::Receiver<()>>>)>;
    let (arrived_tx, arrived) = mpsc::channel(1);
    let (release, release_rx) = oneshot::channel();
    let shared: Shared = std::sync::Arc::new((arrived_tx, Mutex::new(Some(release_rx))));
    let app = axum::Router::new()
        .route(
            "/hold",
            get(|State(shared): State<Shared>| async move {
                let _ = shared.0.send(()).await;
                if let Some(release) = shared.1.lock().await.take() {
                    let _ = release.await;
                }
                "released"
            }),
        )
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    HeldUpstream {
        addr,
        arrived,
        release,
    }
}

/// A waiting acquire sent in the background, answered with its headers.
fn wait_for_permit(api: &ApiClient, name: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let request = api
        .client
        .post(api.url(&format!("/semaphores/{name}/permits")))
        .json(&json!({ "wait_ms": 60_000 }));
    tokio::spawn(async move { request.send().await.unwrap() })
}

/// The binary with `grace_ms` to drain in, allowed to call `upstream`.
async fn draining_binary(harness: &Harness, upstream: &HeldUpstream, grace_ms: &str) -> BinaryApp {
    harness
        .binary()
        .arg("--shutdown-grace-ms")
        .arg(grace_ms)
        .arg("--demo-allowed-hosts")
        .arg(&upstream.addr.to_string())
        .start()
        .await
}

/// A request in flight: the demo calling the held upstream, which it has
/// reached when this returns.
async fn demo_in_flight(
    app: &ApiClient,
    upstream: &mut HeldUpstream,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    // ':' and '/' may stand unescaped in a query.
    let demo_path = format!("/demo?requests=1&url=http://{}/hold", upstream.addr);
    let demo = tokio::spawn(app.client.get(app.url(&demo_path)).send());
    upstream
        .arrived
        .recv()
        .await
        .expect("the demo called the upstream");
    demo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_answers_waiters_and_exits_0() {
    let harness = Harness::new(Store::Redis);
    let observer = harness.spawn().await;
    let mut upstream = held_upstream().await;
    let mut app = draining_binary(&harness, &upstream, "30000").await;

    // One unit, held elsewhere; a waiter queued on the instance to stop.
    let held = observer.acquire("drained", json!({ "limit": 1 })).await;
    assert_eq!(held.status(), 201);
    let waiter = wait_for_permit(&app, "drained");
    observer.until_waiting("drained", 1).await;
    let demo = demo_in_flight(&app, &mut upstream).await;

    app.terminate();
    let signalled = Instant::now();
    // Readiness turns 503 while the request is in flight; the server still
    // answers, and the waiter still waits.
    let deadline = Instant::now() + Duration::from_secs(5);
    let not_ready = loop {
        let response = app.get("/readyz").await;
        if response.status() == 503 {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let problem = expect_problem(not_ready, 503).await;
    assert_eq!(problem["type"], "urn:permitd:problem:shutting-down");
    assert!(
        !waiter.is_finished(),
        "the waiter was answered before the drain"
    );
    assert_eq!(observer.status("drained").await["waiting"], 1);

    // The request in flight finishes normally.
    upstream.release.send(()).unwrap();
    let demo = demo.await.unwrap().unwrap();
    assert_eq!(demo.status(), 200);
    let report: Value = demo.json().await.unwrap();
    assert_eq!(report["results"][0]["status"], 200, "{report}");

    // Then the waiter gets 503 with Retry-After, long before the 30 s grace.
    let answered = waiter.await.unwrap();
    assert_eq!(answered.status(), 503);
    assert!(answered.headers().contains_key("retry-after"));
    let problem = expect_problem(answered, 503).await;
    assert_eq!(problem["type"], "urn:permitd:problem:shutting-down");
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "held for the grace"
    );

    // It left the queue: nobody is stranded in front of the next acquire.
    assert_eq!(observer.status("drained").await["waiting"], 0);
    let status = app.exit_status(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_outlives_the_grace_does_not_hold_the_exit() {
    let harness = Harness::new(Store::Memory);
    let mut upstream = held_upstream().await;
    let mut app = draining_binary(&harness, &upstream, "500").await;
    let held = app.acquire("outlived", json!({ "limit": 1 })).await;
    assert_eq!(held.status(), 201);
    let waiter = wait_for_permit(&app, "outlived");
    app.until_waiting("outlived", 1).await;
    let _demo = demo_in_flight(&app, &mut upstream).await;

    app.terminate();
    let signalled = Instant::now();
    // The upstream is never released: the grace ends it.
    let answered = waiter.await.unwrap();
    assert_eq!(answered.status(), 503);
    assert!(answered.headers().contains_key("retry-after"));
    assert!(
        signalled.elapsed() >= Duration::from_millis(450),
        "before the grace"
    );
    let status = app.exit_status(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_shutdown_delay_a_new_connection_is_served_and_only_readyz_is_503() {
    let harness = Harness::new(Store::Redis);
    let observer = harness.spawn().await;
    let mut app = harness
        .binary()
        .arg("--shutdown-delay-ms")
        .arg("1500")
        .start()
        .await;
    let held = observer.acquire("delayed", json!({ "limit": 1 })).await;
    assert_eq!(held.status(), 201);
    let waiter = wait_for_permit(&app, "delayed");
    observer.until_waiting("delayed", 1).await;

    app.terminate();
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A client that arrives now, on a connection of its own (what a proxy
    // that has not heard of the endpoint's removal opens).
    let late = ApiClient::new(app.addr);
    let problem = expect_problem(late.get("/readyz").await, 503).await;
    assert_eq!(problem["type"], "urn:permitd:problem:shutting-down");
    let permit = late.acquire("late", json!({ "limit": 1 })).await;
    assert_eq!(permit.status(), 201);
    let path = crate::helpers::permit_path(&permit.json().await.unwrap());
    assert_eq!(late.delete(&path).await.status(), 204);
    assert!(
        !waiter.is_finished(),
        "the waiter was answered in the delay"
    );
    assert_eq!(observer.status("delayed").await["waiting"], 1);

    // Then the drain: the waiter gets 503 and leaves the queue, and the
    // process exits 0.
    let answered = waiter.await.unwrap();
    assert_eq!(answered.status(), 503);
    assert!(
        signalled.elapsed() >= Duration::from_millis(1400),
        "answered {:?} after the signal, within the delay",
        signalled.elapsed()
    );
    assert_eq!(observer.status("delayed").await["waiting"], 0);
    assert_eq!(observer.status("late").await["held"], 0);
    let status = app.exit_status(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_kubernetes_pod_the_delay_is_on_and_a_second_signal_ends_it() {
    let harness = Harness::new(Store::Memory);
    // Every pod has it; no --shutdown-delay-ms: the default.
    let mut app = harness
        .binary()
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .start()
        .await;
    app.terminate();
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let late = ApiClient::new(app.addr);
    expect_problem(late.get("/readyz").await, 503).await;
    assert_eq!(
        late.get("/healthz").await.status(),
        200,
        "still serving 1 s in"
    );

    app.terminate();
    let status = app.exit_status(Duration::from_secs(3)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
    assert!(
        signalled.elapsed() < Duration::from_millis(4_000),
        "held for the 5 s default after the second signal: {:?}",
        signalled.elapsed()
    );
}
