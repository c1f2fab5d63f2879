//! Waiting acquires (`wait_ms`): FIFO order, push wakes, time-outs, clients
//! that leave, instances that die, lost notifications, shutdown. The shared
//! scenarios run on both stores; the crash and pub/sub ones need Redis.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{
    ApiClient, Harness, Store, TestApp, expect_problem, on_each_store, on_every_deployment,
};
use serde_json::{Value, json};

/// `instances` apps on one fresh store (several only make sense on Redis),
/// each with `recheck_ms` as its re-check interval.
async fn apps(store: Store, instances: usize, recheck_ms: u64) -> Vec<TestApp> {
    Harness::new(store)
        .configure(move |settings| settings.wait_recheck_ms = recheck_ms)
        .spawn_many(instances)
        .await
}

/// Push wakes, on a cluster (the wake is published on the semaphore's master
/// and relayed to the subscriber's node) and behind Sentinel too.
mod push {
    use super::*;

    on_every_deployment!(
        a_waiter_is_granted_when_a_permit_is_released,
        waiters_are_served_in_arrival_order,
        raising_the_limit_wakes_waiters_at_once,
    );
}

/// Direct handoff: the change that frees the units grants the waiters their
/// permits, in order, from the requests they made.
mod handoff {
    use super::*;

    on_each_store!(
        a_release_hands_the_head_waiter_the_permit_it_asked_for,
        a_raise_past_one_scripts_handoffs_serves_every_waiter_in_order,
    );
}

on_each_store!(
    a_waiter_is_granted_when_a_lease_expires_without_any_recheck,
    a_wait_that_runs_out_is_429_after_about_wait_ms,
    a_newcomer_never_overtakes_a_queued_waiter,
    a_client_that_disconnects_leaves_the_queue,
    shutdown_answers_waiting_requests_with_503,
);

async fn hold(app: &ApiClient, name: &str, body: Value) -> String {
    let response = app.acquire(name, body).await;
    assert_eq!(response.status(), 201);
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn a_waiter_is_granted_when_a_permit_is_released(store: Store) {
    // A long re-check, so only the push wake can explain a prompt grant.
    let apps = apps(store, 1, 30_000).await;
    let app = &apps[0];
    let held = hold(app, "rel", json!({ "limit": 1 })).await;
    let waiter = app.acquire_in_background("rel", json!({ "wait_ms": 10_000, "holder": "next" }));
    app.until_waiting("rel", 1).await;
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

async fn a_waiter_is_granted_when_a_lease_expires_without_any_recheck(store: Store) {
    let apps = apps(store, 1, 30_000).await;
    let app = &apps[0];
    hold(app, "exp", json!({ "limit": 1, "ttl_ms": 400 })).await;
    let waited = app
        .acquire_in_background("exp", json!({ "wait_ms": 10_000 }))
        .await
        .unwrap();
    assert_eq!(waited.status, 201);
    assert!(
        waited.took >= Duration::from_millis(300) && waited.took < Duration::from_millis(1500),
        "granted after {:?}, the lease ran out at 400 ms",
        waited.took
    );
}

async fn a_wait_that_runs_out_is_429_after_about_wait_ms(store: Store) {
    let apps = apps(store, 1, 1_000).await;
    let app = &apps[0];
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

async fn waiters_are_served_in_arrival_order(store: Store) {
    // On Redis the waiters alternate between two instances.
    let apps = apps(store, if store == Store::Redis { 2 } else { 1 }, 1_000).await;
    let first = &apps[0];
    let held = hold(first, "fifo", json!({ "limit": 1 })).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..6u64 {
        let app = &apps[i as usize % apps.len()];
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
        first.until_waiting("fifo", i + 1).await;
    }
    assert_eq!(first.delete(&held).await.status(), 204);
    for waiter in waiters {
        waiter.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
}

async fn a_newcomer_never_overtakes_a_queued_waiter(store: Store) {
    let apps = apps(store, 1, 1_000).await;
    let app = &apps[0];
    let held = hold(app, "fair", json!({ "limit": 2 })).await;
    // Needs both units: queued although one is free.
    let big = app.acquire_in_background("fair", json!({ "count": 2, "wait_ms": 10_000 }));
    app.until_waiting("fair", 1).await;
    let problem = expect_problem(app.acquire("fair", json!({})).await, 429).await;
    assert_eq!(
        problem["available"], 1,
        "a unit is free, but the queue comes first"
    );
    let also_waiting = app.acquire_in_background("fair", json!({ "wait_ms": 10_000 }));
    app.until_waiting("fair", 2).await;
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

async fn raising_the_limit_wakes_waiters_at_once(store: Store) {
    let apps = apps(store, 1, 30_000).await;
    let app = &apps[0];
    hold(app, "grow", json!({ "limit": 1 })).await;
    let one = app.acquire_in_background("grow", json!({ "wait_ms": 10_000 }));
    app.until_waiting("grow", 1).await;
    let two = app.acquire_in_background("grow", json!({ "wait_ms": 10_000 }));
    app.until_waiting("grow", 2).await;
    let raised_at = Instant::now();
    let raised = app
        .put_json("/semaphores/grow", json!({ "limit": 3 }))
        .await;
    assert_eq!(raised.status(), 200);
    assert_eq!(one.await.unwrap().status, 201);
    assert_eq!(two.await.unwrap().status, 201);
    assert!(raised_at.elapsed() < Duration::from_millis(500));
}

async fn a_client_that_disconnects_leaves_the_queue(store: Store) {
    let apps = apps(store, 1, 30_000).await;
    let app = &apps[0];
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
    app.until_waiting("gone", 0).await;
    assert_eq!(app.delete(&held).await.status(), 204);
    // Nobody left in the queue holds up a newcomer.
    assert_eq!(app.acquire("gone", json!({})).await.status(), 201);
}

async fn shutdown_answers_waiting_requests_with_503(store: Store) {
    let mut apps = apps(store, 1, 30_000).await;
    hold(&apps[0], "stop", json!({ "limit": 1 })).await;
    let waiter = apps[0].acquire_in_background("stop", json!({ "wait_ms": 30_000 }));
    apps[0].until_waiting("stop", 1).await;
    let stopped_at = Instant::now();
    apps[0].shut_down();
    let waited = waiter.await.unwrap();
    assert_eq!(waited.status, 503);
    assert_eq!(waited.body["type"], "urn:permitd:problem:shutting-down");
    assert!(stopped_at.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_killed_instance_leave_the_queue_within_the_bound() {
    let harness =
        Harness::new(Store::Redis).configure(|settings| settings.wait_recheck_ms = 30_000);
    let app = &harness.spawn().await;
    let held = hold(app, "crash", json!({ "limit": 1 })).await;

    // The real binary, so it can be killed like a crashed process.
    let mut doomed = harness
        .binary()
        .arg("--wait-recheck-ms")
        .arg("200")
        .arg("--redis-timeout-ms")
        .arg("300")
        .start()
        .await;
    // Two waiters on the doomed instance, then one here behind them.
    let mut doomed_waiters = Vec::new();
    for n in 1..=2 {
        let request = doomed
            .client
            .post(doomed.url("/semaphores/crash/permits"))
            .json(&json!({ "wait_ms": 30_000 }));
        doomed_waiters.push(tokio::spawn(async move { request.send().await }));
        app.until_waiting("crash", n).await;
    }
    let survivor = app.acquire_in_background("crash", json!({ "wait_ms": 20_000 }));
    app.until_waiting("crash", 3).await;

    doomed.kill(); // SIGKILL: no goodbye, nobody leaves the queue on its behalf
    for waiter in doomed_waiters {
        assert!(waiter.await.unwrap().is_err());
    }
    let released_at = Instant::now();
    assert_eq!(app.delete(&held).await.status(), 204);
    let survivor = survivor.await.unwrap();
    assert_eq!(survivor.status, 201);
    // Their leases (200 ms + 2 x 300 ms) end; the survivor's own re-checks are 30 s
    // apart, so the release or the lease sweep must have woken it.
    assert!(
        released_at.elapsed() < Duration::from_secs(3),
        "served {:?} after the release",
        released_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_head_that_does_not_fit_is_told_when_the_lease_ahead_ends_and_attempts_only_then() {
    // A long re-check, so only the timer the notice aims can explain a
    // prompt grant.
    let apps = apps(Store::Redis, 1, 30_000).await;
    let app = &apps[0];
    let held = hold(app, "told", json!({ "limit": 1, "ttl_ms": 60_000 })).await;
    let first = app.acquire_in_background("told", json!({ "wait_ms": 10_000, "ttl_ms": 500 }));
    app.until_waiting("told", 1).await;
    let second = app.acquire_in_background("told", json!({ "wait_ms": 10_000 }));
    app.until_waiting("told", 2).await;
    until_listening(app, Store::Redis).await;
    let calls_before = app.redis().calls("fcall");

    assert_eq!(app.delete(&held).await.status(), 204);
    // The first is granted a 500 ms lease; the second, now head, is told
    // it does not fit and when that lease ends.
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    let first_granted = Instant::now();
    let second = second.await.unwrap();
    assert_eq!(second.status, 201);
    let after = first_granted.elapsed();
    assert!(
        after >= Duration::from_millis(300) && after < Duration::from_millis(1500),
        "granted {after:?} after the 500 ms lease ahead began"
    );
    // The release (which handed the first its permit) and the second's
    // attempt at the lease end: being told it is head cost the second no
    // attempt, and the handoff cost the first none.
    assert_eq!(app.redis().calls("fcall") - calls_before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_costs_the_waiter_no_script_call() {
    let apps = apps(Store::Redis, 1, 30_000).await;
    let app = &apps[0];
    let held = hold(app, "cheap", json!({ "limit": 1 })).await;
    until_listening(app, Store::Redis).await;
    let waiter = app.acquire_in_background("cheap", json!({ "wait_ms": 10_000 }));
    app.until_waiting("cheap", 1).await;
    let calls_before = app.redis().calls("fcall");
    assert_eq!(app.delete(&held).await.status(), 204);
    assert_eq!(waiter.await.unwrap().status, 201);
    // A contended cycle is the waiter's first attempt and the holder's
    // release: the release granted the waiter, which attempted no more.
    assert_eq!(
        app.redis().calls("fcall") - calls_before,
        1,
        "only the release ran a script"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscriber_connection_does_not_strand_waiters() {
    let apps = apps(Store::Redis, 1, 30_000).await;
    let app = &apps[0];
    let held = hold(app, "sub", json!({ "limit": 1 })).await;
    let waiter = app.acquire_in_background("sub", json!({ "wait_ms": 20_000 }));
    app.until_waiting("sub", 1).await;

    let killed = app.redis().command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.integer(), 1, "killed {killed:?}");
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
    let second = app.acquire_in_background("sub", json!({ "wait_ms": 20_000 }));
    app.until_waiting("sub", 1).await;
    let path = format!(
        "/semaphores/sub/permits/{}",
        waited.body["id"].as_str().unwrap()
    );
    let released_at = Instant::now();
    assert_eq!(app.delete(&path).await.status(), 204);
    assert_eq!(second.await.unwrap().status, 201);
    assert!(released_at.elapsed() < Duration::from_millis(500));
}

/// Until the app's wake subscription is up on Redis: a release hands a
/// waiter its permit only while the waiter's instance listens.
async fn until_listening(app: &TestApp, store: Store) {
    if store == Store::Redis {
        // The app's own Redis: any wake channel on it is the app's.
        app.redis().until_subscribed("*wake:*").await;
    }
}

async fn a_release_hands_the_head_waiter_the_permit_it_asked_for(store: Store) {
    let apps = apps(store, 1, 30_000).await;
    let app = &apps[0];
    let held = hold(app, "hand", json!({ "limit": 1 })).await;
    until_listening(app, store).await;
    let body = json!({ "wait_ms": 10_000, "ttl_ms": 45_000, "holder": "next" });
    let send = |body: &Value| {
        app.client
            .post(app.url("/semaphores/hand/permits"))
            .header("Idempotency-Key", "hand-1")
            .json(body)
            .send()
    };
    let waiter = tokio::spawn(send(&body));
    app.until_waiting("hand", 1).await;
    assert_eq!(app.delete(&held).await.status(), 204);

    let waited = waiter.await.unwrap().unwrap();
    assert_eq!(waited.status(), 201);
    let permit: Value = waited.json().await.unwrap();
    assert_eq!(
        (permit["count"].as_u64(), permit["holder"].as_str()),
        (Some(1), Some("next"))
    );
    let at = |field: &str| humantime::parse_rfc3339(permit[field].as_str().unwrap()).unwrap();
    let lease = at("expires_at").duration_since(at("acquired_at")).unwrap();
    assert_eq!(lease, Duration::from_secs(45), "{permit}");
    // A real permit: held, replayed to a retry with its key, released once.
    let status = app.status("hand").await;
    assert_eq!(
        (status["held"].as_u64(), status["waiting"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(status["holders"][0]["holder"], "next");
    let retry = send(&body).await.unwrap();
    assert_eq!(retry.status(), 200);
    let replayed: Value = retry.json().await.unwrap();
    assert_eq!(
        (&replayed["id"], &replayed["fencing_token"]),
        (&permit["id"], &permit["fencing_token"])
    );
    let path = crate::helpers::permit_path(&permit);
    assert_eq!(app.delete(&path).await.status(), 204);
    assert_eq!(app.status("hand").await["held"], 0);
}

async fn a_raise_past_one_scripts_handoffs_serves_every_waiter_in_order(store: Store) {
    // More waiters than one script serves (prelude.lua's WAKE_CAP, 100): the
    // rest are served as the first are, still in arrival order.
    const WAITERS: usize = 230;
    let apps = apps(store, 1, 30_000).await;
    let app = &apps[0];
    hold(app, "wide", json!({ "limit": 1 })).await;
    until_listening(app, store).await;
    let mut waiters = Vec::new();
    for n in 1..=WAITERS {
        waiters.push(app.acquire_in_background("wide", json!({ "wait_ms": 30_000 })));
        app.until_waiting("wide", n as u64).await;
    }
    let raised = app
        .put_json("/semaphores/wide", json!({ "limit": WAITERS + 1 }))
        .await;
    assert_eq!(raised.status(), 200);
    let mut tokens = Vec::new();
    for waiter in waiters {
        let waited = waiter.await.unwrap();
        assert_eq!(waited.status, 201, "{:?}", waited.body);
        tokens.push(waited.body["fencing_token"].as_u64().unwrap());
    }
    let out_of_order = tokens.windows(2).filter(|pair| pair[0] >= pair[1]).count();
    assert_eq!(out_of_order, 0, "tokens out of arrival order: {tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_past_the_descriptor_limit_never_lock_out_the_release() {
    // 256 descriptors, soft and hard: the default --max-waiters is 192.
    let harness = Harness::new(Store::Redis);
    let app = harness
        .binary()
        .descriptor_limit(256)
        .arg("--wait-recheck-ms")
        .arg("30000")
        .start()
        .await;
    let held = app.acquire("fd", json!({ "limit": 1 })).await;
    assert_eq!(held.status(), 201);
    let held = held.headers()["location"].to_str().unwrap().to_owned();
    let head = app.acquire_in_background("fd", json!({ "wait_ms": 20_000 }));
    app.until_waiting("fd", 1).await;

    // 400 more, each on a connection of its own.
    const FLOOD: usize = 400;
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let one = ApiClient::new(app.addr);
            tokio::spawn(async move {
                let answer = one.acquire("fd", json!({ "wait_ms": 8_000 })).await;
                let status = answer.status().as_u16();
                let kind = answer.json::<Value>().await.ok().map(|p| p["type"].clone());
                (status, kind)
            })
        })
        .collect();
    // The queue fills up to the bound and no further; those past it are
    // answered at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut most = 0;
    while flood.iter().filter(|f| f.is_finished()).count() < 100 || most < 150 {
        assert!(
            Instant::now() < deadline,
            "not answered past the bound: {most} waiting"
        );
        most = most.max(app.status("fd").await["waiting"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        most = most.max(app.status("fd").await["waiting"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most <= 192, "{most} waiting, past the bound of 192");

    // A new connection is served, and the holder can release.
    let late = ApiClient::new(app.addr);
    let healthy = tokio::time::timeout(Duration::from_secs(5), late.get("/healthz")).await;
    assert_eq!(healthy.expect("/healthz answered").status(), 200);
    let released = tokio::time::timeout(Duration::from_secs(5), late.delete(&held)).await;
    assert_eq!(released.expect("the release answered").status(), 204);
    // And the head waiter is granted the unit.
    let head = tokio::time::timeout(Duration::from_secs(5), head).await;
    assert_eq!(head.expect("the head was granted").unwrap().status, 201);

    let mut refused = 0;
    for waiter in flood {
        let (status, kind) = waiter.await.unwrap();
        match status {
            503 => {
                assert_eq!(kind, Some(json!("urn:permitd:problem:too-many-waiters")));
                refused += 1;
            }
            201 | 429 => {}
            other => panic!("a waiter was answered {other}"),
        }
    }
    // Places freed by waits that ran out were taken by later ones.
    assert!(refused >= 100, "only {refused} refused past the bound");
}
