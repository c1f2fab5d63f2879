//! An operator's first week, the store side: idle semaphores forgotten (on
//! Redis by key expiry), the listing, permit ids for admins, and
//! Idempotency-Keys as the IETF draft has them (422 another body, 409 while
//! the first request waits, 410 once its permit ended). On both stores, the
//! listing also on a cluster, and the idle TTL also on the real binary.

use std::time::{Duration, Instant};

use permitd::semaphore::{PermitId, SemaphoreName};
use serde_json::{Value, json};

use crate::helpers::cluster::RedisCluster;
use crate::helpers::{
    ApiClient, Harness, Reply, Store, expect_problem, on_each_store, permit_path, spawn_app,
};

on_each_store!(
    a_key_used_with_another_body_is_422,
    a_retry_while_the_first_request_waits_is_409_and_then_the_same_permit,
    a_retry_after_the_permit_ended_is_410_never_a_second_permit,
    a_key_is_forgotten_after_the_retention,
    an_idle_semaphore_is_forgotten_and_its_tokens_keep_increasing,
    emptied_early_a_semaphore_is_forgotten_within_a_quarter_past_its_idle_ttl,
    a_held_or_awaited_semaphore_is_not_forgotten,
    an_idle_ttl_of_null_keeps_a_semaphore_forever,
    bad_idle_ttls_are_400,
    the_listing_pages_through_every_semaphore_of_a_prefix_once,
    bad_listing_queries_are_400,
    an_admin_sees_permit_ids_and_revokes_one,
    leases_ending_together_wake_every_waiter_they_let_in,
);

/// One lease of two units ends with two waiters of one unit each queued
/// behind it: the first waiter's attempt sweeps the lease and must wake the
/// second, who would otherwise wait for its 30 s re-check.
async fn leases_ending_together_wake_every_waiter_they_let_in(store: Store) {
    let harness = Harness::new(store).configure(|s| s.wait_recheck_ms = 30_000);
    let app = harness.spawn().await;
    let held = app
        .acquire("pair", json!({ "limit": 2, "count": 2, "ttl_ms": 1_500 }))
        .await;
    assert_eq!(held.status(), 201);
    let first = app.acquire_in_background("pair", json!({ "wait_ms": 5_000 }));
    app.until_waiting("pair", 1).await;
    let second = app.acquire_in_background("pair", json!({ "wait_ms": 5_000 }));
    app.until_waiting("pair", 2).await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!((first.status, second.status), (201, 201));
    assert!(
        second.took < Duration::from_millis(2_800),
        "the second waiter was served {:?} after it asked",
        second.took
    );
}

fn keyed(app: &ApiClient, name: &str, key: &str, body: Value) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(&format!("/semaphores/{name}/permits")))
        .header("Idempotency-Key", key)
        .json(&body)
}

async fn a_key_used_with_another_body_is_422(store: Store) {
    let app = spawn_app(store).await;
    let first = keyed(&app, "k422", "job-1", json!({ "limit": 2, "holder": "a" }))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let other = keyed(&app, "k422", "job-1", json!({ "limit": 2, "holder": "b" }))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(other, 422).await;
    assert_eq!(
        problem["type"],
        "urn:permitd:problem:idempotency-key-reused"
    );
    assert_eq!(app.status("k422").await["held"], 1);
}

async fn a_retry_while_the_first_request_waits_is_409_and_then_the_same_permit(store: Store) {
    let app = spawn_app(store).await;
    let blocker = app.acquire("k409", json!({ "limit": 1 })).await;
    assert_eq!(blocker.status(), 201);
    let blocker: Value = blocker.json().await.unwrap();
    let body = json!({ "limit": 1, "wait_ms": 10_000, "holder": "w" });
    let request = keyed(&app, "k409", "job-2", body.clone());
    let first = tokio::spawn(async move { request.send().await.unwrap() });
    app.until_waiting("k409", 1).await;

    let retry = keyed(&app, "k409", "job-2", body.clone())
        .send()
        .await
        .unwrap();
    let problem = expect_problem(retry, 409).await;
    assert_eq!(
        problem["type"],
        "urn:permitd:problem:idempotency-key-in-use"
    );
    let other = keyed(&app, "k409", "job-2", json!({ "limit": 1, "holder": "x" }))
        .send()
        .await
        .unwrap();
    expect_problem(other, 422).await;
    assert_eq!(
        app.status("k409").await["waiting"],
        1,
        "the first kept its place"
    );

    assert_eq!(app.delete(&permit_path(&blocker)).await.status(), 204);
    let first = first.await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let replay = keyed(&app, "k409", "job-2", body).send().await.unwrap();
    assert_eq!(replay.status(), 200, "now the retry is the same permit");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["id"], first["id"]);
}

async fn a_retry_after_the_permit_ended_is_410_never_a_second_permit(store: Store) {
    let app = spawn_app(store).await;
    // Released.
    let body = json!({ "limit": 3 });
    let granted = keyed(&app, "k410", "released", body.clone())
        .send()
        .await
        .unwrap();
    let granted: Value = granted.json().await.unwrap();
    assert_eq!(app.delete(&permit_path(&granted)).await.status(), 204);
    let late = keyed(&app, "k410", "released", body.clone())
        .send()
        .await
        .unwrap();
    let problem = expect_problem(late, 410).await;
    assert_eq!(problem["type"], "urn:permitd:problem:permit-ended");

    // Expired.
    let short = json!({ "limit": 3, "ttl_ms": 200 });
    let granted = keyed(&app, "k410", "expired", short.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = keyed(&app, "k410", "expired", short).send().await.unwrap();
    expect_problem(late, 410).await;
    assert_eq!(app.status("k410").await["held"], 0, "never a second permit");
}

async fn a_key_is_forgotten_after_the_retention(store: Store) {
    let harness = Harness::new(store).configure(|s| s.idempotency_retention_ms = 300);
    let app = harness.spawn().await;
    let body = json!({ "limit": 3 });
    let granted: Value = keyed(&app, "kret", "job", body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(app.delete(&permit_path(&granted)).await.status(), 204);
    let within = keyed(&app, "kret", "job", body.clone())
        .send()
        .await
        .unwrap();
    expect_problem(within, 410).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = keyed(&app, "kret", "job", body).send().await.unwrap();
    assert_eq!(after.status(), 201, "after the retention the key is new");
}

/// The semaphore's Redis keys, if any (an empty list on the memory store).
fn keys_of(harness: &Harness, store: Store, name: &str) -> Vec<String> {
    if store != Store::Redis {
        return Vec::new();
    }
    let pattern = format!("{}{{{name}}}:*", harness.key_prefix());
    match harness.redis().command(&["KEYS", &pattern]) {
        Reply::Array(keys) => keys
            .iter()
            .map(|k| match k {
                Reply::Bulk(key) => key.clone(),
                other => panic!("a key: {other:?}"),
            })
            .collect(),
        other => panic!("KEYS answered {other:?}"),
    }
}

/// Polls until the semaphore is gone (404); how long that took.
async fn until_forgotten(app: &ApiClient, name: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = app.get(&format!("/semaphores/{name}")).await.status();
        if status == 404 {
            return started.elapsed();
        }
        assert_eq!(status, 200);
        assert!(started.elapsed() < within, "{name} was never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_idle_semaphore_is_forgotten_and_its_tokens_keep_increasing(store: Store) {
    let harness = Harness::new(store);
    let app = harness.spawn().await;
    let created = app
        .put_json(
            "/semaphores/idle",
            json!({ "limit": 2, "idle_ttl_ms": 1_000 }),
        )
        .await;
    assert_eq!(created.status(), 201);
    let status: Value = created.json().await.unwrap();
    assert_eq!(status["idle_ttl_ms"], 1_000);
    let permit: Value = app
        .acquire("idle", json!({ "ttl_ms": 100 }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(app.delete(&permit_path(&permit)).await.status(), 204);
    let idle_from = Instant::now();
    assert_eq!(
        keys_of(&harness, store, "idle").is_empty(),
        store != Store::Redis
    );

    // Still there well within its idle TTL; gone once it passed (and an
    // eighth more at most, on Redis).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.status("idle").await["limit"], 2);
    until_forgotten(&app, "idle", Duration::from_secs(5)).await;
    assert!(idle_from.elapsed() >= Duration::from_millis(1_000));
    assert_eq!(keys_of(&harness, store, "idle"), Vec::<String>::new());

    let again: Value = app
        .acquire("idle", json!({ "limit": 2 }))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        again["fencing_token"].as_u64() > permit["fencing_token"].as_u64(),
        "{again} after {permit}"
    );
}

/// A long lease released early: idle time counts from the release, and
/// the keys, set long past it for that lease, are set again once they would
/// outlive the idle TTL by more than a quarter of it (README, idle
/// semaphores).
async fn emptied_early_a_semaphore_is_forgotten_within_a_quarter_past_its_idle_ttl(store: Store) {
    let app = spawn_app(store).await;
    let created = app
        .put_json(
            "/semaphores/early",
            json!({ "limit": 1, "idle_ttl_ms": 1_000 }),
        )
        .await;
    assert_eq!(created.status(), 201);
    let permit: Value = app
        .acquire("early", json!({ "ttl_ms": 60_000 }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(app.delete(&permit_path(&permit)).await.status(), 204);
    let idle_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(app.status("early").await["limit"], 1);
    until_forgotten(&app, "early", Duration::from_secs(5)).await;
    let idle = idle_from.elapsed();
    // A quarter past, and one poll of 50 ms plus a status call of slack.
    assert!(
        idle >= Duration::from_millis(1_000) && idle <= Duration::from_millis(1_250 + 150),
        "forgotten after {idle:?}"
    );
}

async fn a_held_or_awaited_semaphore_is_not_forgotten(store: Store) {
    let harness = Harness::new(store).configure(|s| s.semaphore_idle_ttl_ms = 500);
    let app = harness.spawn().await;
    // A lease longer than the idle TTL, and a waiter behind it.
    let held = app
        .acquire("busy", json!({ "limit": 1, "ttl_ms": 1_500 }))
        .await;
    assert_eq!(held.status(), 201);
    let waiter = app.acquire_in_background("busy", json!({ "wait_ms": 1_000 }));
    app.until_waiting("busy", 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = app.status("busy").await;
    assert_eq!(status["held"], 1, "held past the idle TTL: kept");
    assert_eq!(status["idle_ttl_ms"], 500, "the server's default");
    // The waiter times out, the lease ends, then the idle TTL runs.
    assert_eq!(waiter.await.unwrap().status, 429);
    until_forgotten(&app, "busy", Duration::from_secs(5)).await;
}

async fn an_idle_ttl_of_null_keeps_a_semaphore_forever(store: Store) {
    let harness = Harness::new(store).configure(|s| s.semaphore_idle_ttl_ms = 300);
    let app = harness.spawn().await;
    let kept = app
        .put_json(
            "/semaphores/kept",
            json!({ "limit": 1, "idle_ttl_ms": null }),
        )
        .await;
    assert_eq!(kept.status(), 201);
    let status: Value = kept.json().await.unwrap();
    assert_eq!(status["idle_ttl_ms"], Value::Null);
    let gone = app
        .put_json("/semaphores/gone", json!({ "limit": 1 }))
        .await;
    assert_eq!(gone.status(), 201);
    until_forgotten(&app, "gone", Duration::from_secs(5)).await;
    assert_eq!(app.status("kept").await["limit"], 1);
    if store == Store::Redis {
        let meta = format!("{}{{kept}}:meta", harness.key_prefix());
        assert_eq!(harness.redis().command(&["PTTL", &meta]).integer(), -1);
        // Switched from an idle TTL to never: the keys lose their expiry,
        // but a withdrawal's memory (`left`) keeps its own short one.
        let created = app
            .put_json(
                "/semaphores/switched",
                json!({ "limit": 1, "idle_ttl_ms": 60_000 }),
            )
            .await;
        assert_eq!(created.status(), 201);
        let switched = SemaphoreName::parse("switched").unwrap();
        let store = harness.semaphore_store();
        store.leave(&switched, PermitId::random()).await.unwrap();
        let changed = app
            .put_json(
                "/semaphores/switched",
                json!({ "limit": 1, "idle_ttl_ms": null }),
            )
            .await;
        assert_eq!(changed.status(), 200);
        let key = |suffix: &str| format!("{}{{switched}}:{suffix}", harness.key_prefix());
        assert_eq!(
            harness.redis().command(&["PTTL", &key("meta")]).integer(),
            -1
        );
        let ttl = harness.redis().command(&["PTTL", &key("left")]).integer();
        assert!(ttl > 0, "left has PTTL {ttl}");
    }
    // Given a TTL later, it is forgotten after it.
    let changed = app
        .put_json(
            "/semaphores/kept",
            json!({ "limit": 1, "idle_ttl_ms": 1_000 }),
        )
        .await;
    assert_eq!(changed.status(), 200);
    until_forgotten(&app, "kept", Duration::from_secs(5)).await;
}

async fn bad_idle_ttls_are_400(store: Store) {
    let app = spawn_app(store).await;
    for bad in [
        json!(0),
        json!(999),
        json!(-5),
        json!("1000"),
        json!(31_536_000_001_u64),
    ] {
        let response = app
            .put_json(
                "/semaphores/bad-idle",
                json!({ "limit": 1, "idle_ttl_ms": bad }),
            )
            .await;
        expect_problem(response, 400).await;
    }
}

async fn list_all(app: &ApiClient, prefix: &str, page: usize) -> Vec<Value> {
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut query = format!("/semaphores?prefix={prefix}&limit={page}");
        if let Some(cursor) = &cursor {
            query.push_str(&format!("&cursor={cursor}"));
        }
        let response = app.get(&query).await;
        assert_eq!(response.status(), 200, "{query}");
        let body: Value = response.json().await.unwrap();
        let lines = body["semaphores"].as_array().unwrap();
        assert!(lines.len() <= page, "{} on a page of {page}", lines.len());
        listed.extend(lines.iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return listed,
        }
    }
    panic!("the listing never ended");
}

async fn the_listing_pages_through_every_semaphore_of_a_prefix_once(store: Store) {
    let app = spawn_app(store).await;
    for i in 0..7 {
        let response = app
            .put_json(&format!("/semaphores/ls-a-{i}"), json!({ "limit": i + 1 }))
            .await;
        assert_eq!(response.status(), 201);
    }
    app.put_json("/semaphores/ls-b-0", json!({ "limit": 1 }))
        .await;
    let held = app.acquire("ls-a-3", json!({})).await;
    assert_eq!(held.status(), 201);

    let listed = list_all(&app, "ls-a-", 3).await;
    let mut names: Vec<&str> = listed.iter().map(|l| l["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "ls-a-0", "ls-a-1", "ls-a-2", "ls-a-3", "ls-a-4", "ls-a-5", "ls-a-6"
        ]
    );
    let three = listed.iter().find(|l| l["name"] == "ls-a-3").unwrap();
    assert_eq!(
        three,
        &json!({ "name": "ls-a-3", "limit": 4, "held": 1, "waiting": 0 })
    );
    assert!(
        listed
            .iter()
            .all(|l| l.get("holders").is_none() && l.get("id").is_none())
    );
    // Without a prefix, everything; a prefix nobody has, nothing.
    assert_eq!(list_all(&app, "", 1000).await.len(), 8);
    assert!(list_all(&app, "zz", 10).await.is_empty());
}

async fn bad_listing_queries_are_400(store: Store) {
    let app = spawn_app(store).await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "prefix=a%20b",
        "cursor=not-a-cursor!",
        "cursor=",
        "other=1",
    ] {
        expect_problem(app.get(&format!("/semaphores?{query}")).await, 400).await;
    }
}

async fn an_admin_sees_permit_ids_and_revokes_one(store: Store) {
    let app = spawn_app(store).await;
    let stuck: Value = app
        .acquire("revoke", json!({ "limit": 2, "holder": "stuck" }))
        .await
        .json()
        .await
        .unwrap();
    app.acquire("revoke", json!({ "holder": "fine" })).await;
    let plain = app.status("revoke").await;
    assert!(
        plain["holders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h.get("id").is_none())
    );

    let with_ids: Value = app
        .get("/semaphores/revoke?include=ids")
        .await
        .json()
        .await
        .unwrap();
    let holders = with_ids["holders"].as_array().unwrap();
    let listed = holders.iter().find(|h| h["holder"] == "stuck").unwrap();
    assert_eq!(listed["id"], stuck["id"]);
    let path = format!(
        "/semaphores/revoke/permits/{}",
        listed["id"].as_str().unwrap()
    );
    assert_eq!(app.delete(&path).await.status(), 204);
    assert_eq!(app.status("revoke").await["held"], 1);
    expect_problem(app.get("/semaphores/revoke?include=everything").await, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_goes_through_every_cluster_master() {
    let cluster = RedisCluster::shared();
    let harness = Harness::on_cluster(cluster.clone());
    let app = harness.spawn().await;
    let names: Vec<String> = (0..30).map(|i| format!("spread-{i}")).collect();
    for name in &names {
        let response = app
            .put_json(&format!("/semaphores/{name}"), json!({ "limit": 1 }))
            .await;
        assert_eq!(response.status(), 201);
    }
    let masters: std::collections::HashSet<u16> = names
        .iter()
        .map(|n| cluster.master_of(&format!("{{{n}}}")).port())
        .collect();
    assert_eq!(masters.len(), 3, "the names spread over every master");
    let mut listed: Vec<String> = list_all(&app, "spread-", 7)
        .await
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_forgets_idle_semaphores_after_its_default_idle_ttl() {
    let harness = Harness::new(Store::Redis);
    let app = harness
        .binary()
        .arg("--semaphore-idle-ttl-ms")
        .arg("1000")
        .start()
        .await;
    let response = app
        .acquire("bin-idle", json!({ "limit": 1, "ttl_ms": 100 }))
        .await;
    assert_eq!(response.status(), 201);
    let pattern = format!("{}{{bin-idle}}:*", harness.key_prefix());
    let ttl_ms = harness
        .redis()
        .command(&["PTTL", &pattern.replace('*', "meta")])
        .integer();
    assert!(
        (1_000..=1_300).contains(&ttl_ms),
        "meta expires in {ttl_ms} ms"
    );
    until_forgotten(&app, "bin-idle", Duration::from_secs(5)).await;
    assert_eq!(
        harness.redis().command(&["KEYS", &pattern]),
        Reply::Array(Vec::new())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_mark_goes_once_its_waiter_left_the_queue() {
    // A short waiter lease (re-check plus two Redis timeouts), so the mark
    // is looked at again soon after the waiter gave up.
    let harness = Harness::new(Store::Redis).configure(|s| {
        s.wait_recheck_ms = 100;
        s.redis_timeout_ms = 500;
    });
    let app = harness.spawn().await;
    assert_eq!(
        app.acquire("marks", json!({ "limit": 1 })).await.status(),
        201
    );
    let timed_out = keyed(&app, "marks", "gave-up", json!({ "wait_ms": 200 }))
        .send()
        .await
        .unwrap();
    expect_problem(timed_out, 429).await;
    let idem = format!("{}{{marks}}:idem", harness.key_prefix());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Any write sweeps what is due; this one is refused, as the unit is held.
        app.acquire("marks", json!({})).await;
        if harness
            .redis()
            .command(&["HEXISTS", &idem, "gave-up"])
            .integer()
            == 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "the waiting mark stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
