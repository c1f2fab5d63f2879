//! Correct under the faults a real Redis has: a restart from an older
//! snapshot, keys evicted or deleted, a stalled link that delivers an attempt
//! late, a master demoted to a replica, a stall that outlasts a re-check; and
//! what the memory store shares with them (who is head, the clock order).
//! Each scenario failed on the code before the fix it is named for.

use std::time::{Duration, Instant};

use permitd::semaphore::{
    AcquireOutcome, AcquireRequest, Count, Limit, PermitId, SemaphoreName, Ttl, WaitTime,
};
use permitd::store::Attempt;
use serde_json::{Value, json};

use crate::helpers::{
    ApiClient, Harness, RedisServer, Secret, Store, expect_problem, on_each_store, spawn_app,
    spawn_app_with,
};

on_each_store!(
    a_new_head_of_the_queue_is_served_at_the_next_lease_end,
    acquired_at_follows_the_fencing_order_under_contention,
);

/// Acquires until a 201 comes, for up to `within` (the store may answer 503
/// while it comes back); returns the permit.
async fn acquire_when_back(app: &ApiClient, name: &str, body: Value, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let response = app.acquire(name, body.clone()).await;
        match response.status().as_u16() {
            201 => return response.json().await.unwrap(),
            503 => assert!(Instant::now() < deadline, "still 503 after {within:?}"),
            other => panic!("acquire on {name}: {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn token(permit: &Value) -> u64 {
    permit["fencing_token"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_never_repeat_after_a_restart_from_an_older_snapshot() {
    let harness = Harness::new(Store::Redis);
    let app = &harness.spawn().await;
    let body = json!({ "limit": 10, "ttl_ms": 60_000 });
    let t1 = token(&acquire_when_back(app, "snap", body.clone(), Duration::ZERO).await);
    assert!(app.redis().command(&["SAVE"]).is_ok());
    let mut before = vec![t1];
    for _ in 0..3 {
        before.push(token(
            &acquire_when_back(app, "snap", body.clone(), Duration::ZERO).await,
        ));
    }
    // A crash, and a restart from the snapshot taken after t1 only.
    app.redis().restart();
    let after = acquire_when_back(app, "snap", body, Duration::from_secs(5)).await;
    let highest = before.iter().max().unwrap();
    assert!(
        token(&after) > *highest,
        "token {} after the rollback, {before:?} before",
        token(&after)
    );
}

/// The suffixes of a semaphore's keys (the README's data model).
const KEYS: [&str; 8] = [
    "meta", "expiry", "permits", "idem", "queue", "waiters", "wleases", "left",
];

/// How many of `permits` were live at once, at most: at each grant, how many
/// granted leases (this one included) had not ended yet.
fn most_live_at_once(permits: &[Value]) -> usize {
    let time = |p: &Value, field: &str| p[field].as_str().unwrap().to_owned();
    permits
        .iter()
        .map(|granted| {
            let at = time(granted, "acquired_at");
            permits
                .iter()
                .filter(|p| time(p, "acquired_at") <= at && time(p, "expires_at") > at)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_any_key_of_a_semaphore_never_over_grants_nor_fails() {
    let harness = Harness::new(Store::Redis);
    let app = &harness.spawn().await;
    for suffix in KEYS {
        let name = format!("lost-{suffix}");
        let body = json!({ "limit": 2, "ttl_ms": 800 });
        let mut permits = Vec::new();
        // Two holders (one keyed, so `idem` exists) and a waiter (so the queue
        // keys exist).
        let keyed = app
            .client
            .post(app.url(&format!("/semaphores/{name}/permits")))
            .header("Idempotency-Key", format!("key-{suffix}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(keyed.status(), 201);
        permits.push(keyed.json::<Value>().await.unwrap());
        permits.push(acquire_when_back(app, &name, body.clone(), Duration::ZERO).await);
        let waiter = app.acquire_in_background(
            &name,
            json!({ "limit": 2, "wait_ms": 5_000, "ttl_ms": 800 }),
        );
        app.until_waiting(&name, 1).await;

        let key = format!("permitd:{{{name}}}:{suffix}");
        let deleted = app.redis().command(&["DEL", &key]).integer();
        // `left` exists only once a waiter withdrew; every other key is there.
        assert!(deleted == 1 || suffix == "left", "{key} existed");

        // For the next 2.5 s (three times the leases): no 5xx anywhere, and
        // whatever is granted never makes more than 2 live at once.
        let deadline = Instant::now() + Duration::from_millis(2_500);
        while Instant::now() < deadline {
            let response = app.acquire(&name, body.clone()).await;
            let status = response.status().as_u16();
            assert!(
                matches!(status, 201 | 429),
                "{suffix}: acquire answered {status}"
            );
            if status == 201 {
                permits.push(response.json().await.unwrap());
            }
            let status = app.get(&format!("/semaphores/{name}")).await.status();
            assert_eq!(status, 200, "{suffix}: status answered {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let waited = waiter.await.unwrap();
        assert!(
            matches!(waited.status, 201 | 429),
            "{suffix}: the waiter got {}",
            waited.status
        );
        if waited.status == 201 {
            permits.push(waited.body);
        }
        assert!(
            most_live_at_once(&permits) <= 2,
            "{suffix}: more than the limit live at once: {permits:#?}"
        );
        // Capacity came back once the old leases ended: grants were made
        // after the first 800 ms leases ran out.
        assert!(
            permits.len() > 3,
            "{suffix}: capacity never came back ({} grants)",
            permits.len()
        );
        let status = app.status(&name).await;
        assert!(status["held"].as_u64().unwrap() <= 2, "{suffix}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_reaches_redis_after_its_caller_gave_up_grants_nothing() {
    let harness = Harness::new(Store::Redis);
    let app = &harness.spawn().await;
    let created = app
        .put_json("/semaphores/late", json!({ "limit": 1 }))
        .await;
    assert_eq!(created.status(), 201);
    // One acquire first, so Redis has the scripts loaded and the stalled
    // call below runs as soon as it is read.
    acquire_when_back(app, "warm", json!({ "limit": 1 }), Duration::ZERO).await;
    // The instance that sends the attempt gives up on it after 300 ms.
    let mut sender = harness
        .binary()
        .arg("--redis-timeout-ms")
        .arg("300")
        .start()
        .await;
    // The link stalls: Redis reads nothing until it is resumed.
    app.redis().pause();
    let attempt = sender
        .client
        .post(sender.url("/semaphores/late/permits"))
        .json(&json!({ "ttl_ms": 60_000 }))
        .send();
    let attempt = tokio::spawn(attempt);
    // The attempt is on its way; its sender dies before it could withdraw
    // it, as a crashed or partitioned instance would.
    tokio::time::sleep(Duration::from_millis(150)).await;
    sender.kill();
    assert!(attempt.await.unwrap().is_err(), "the sender died");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    app.redis().resume();
    // Delivered now, long after its deadline: it must not make a permit
    // that nobody holds.
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        let response = app.get("/semaphores/late").await;
        if response.status() == 200 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "status never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["held"], 0, "{status}");
    acquire_when_back(app, "late", json!({}), Duration::from_secs(2)).await;
}

async fn a_new_head_of_the_queue_is_served_at_the_next_lease_end(store: Store) {
    // Re-checks 30 s apart: only the head's timer on the lease end can
    // explain a grant in time.
    let app = &spawn_app_with(store, |settings| settings.wait_recheck_ms = 30_000).await;
    let short = json!({ "limit": 1, "ttl_ms": 300 });
    acquire_when_back(app, "heads", short, Duration::ZERO).await;
    let started = Instant::now();
    let body = json!({ "wait_ms": 5_000, "ttl_ms": 300 });
    let first = app.acquire_in_background("heads", body.clone());
    app.until_waiting("heads", 1).await;
    let second = app.acquire_in_background("heads", body);
    app.until_waiting("heads", 2).await;
    // The first waiter is granted when the holder's lease ends, and never
    // releases; the second becomes head then and must be granted when the
    // first one's lease ends, about 0.6 s in.
    assert_eq!(first.await.unwrap().status, 201);
    let second = second.await.unwrap();
    assert_eq!(second.status, 201, "{:?}", second.body);
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "the new head was served {:?} in",
        started.elapsed()
    );
}

async fn acquired_at_follows_the_fencing_order_under_contention(store: Store) {
    let harness = Harness::new(store);
    let semaphores = harness.semaphore_store();
    // Many grants from two threads at once, so that many millisecond
    // boundaries fall between one grant's clock reading and the next.
    let rounds = if store == Store::Memory {
        50_000
    } else {
        1_000
    };
    let request = AcquireRequest {
        name: SemaphoreName::parse("order").unwrap(),
        limit: Some(Limit::new(1_000_000).unwrap()),
        count: Count::ONE,
        ttl: Ttl::new(600_000, 3_600_000).unwrap(),
        wait: WaitTime::NONE,
        holder: None,
        idempotency_key: None,
    };
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (semaphores, request) = (semaphores.clone(), request.clone());
            tokio::spawn(async move {
                let mut permits = Vec::with_capacity(rounds);
                for _ in 0..rounds {
                    match semaphores
                        .attempt(&request, PermitId::random(), false)
                        .await
                    {
                        Ok(Attempt::Done {
                            outcome: AcquireOutcome::Granted(permit),
                            ..
                        }) => permits.push((permit.fencing_token, permit.acquired_at)),
                        other => panic!("expected a grant, got {other:?}"),
                    }
                }
                permits
            })
        })
        .collect();
    let mut permits = Vec::new();
    for task in tasks {
        permits.extend(task.await.unwrap());
    }
    permits.sort();
    for pair in permits.windows(2) {
        assert!(
            pair[0].1 <= pair[1].1,
            "token {} acquired at {:?}, but the later token {} at {:?}",
            pair[0].0,
            pair[0].1,
            pair[1].0,
            pair[1].1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_master_is_a_503_and_serves_again_once_promoted() {
    let other = RedisServer::start();
    let harness = Harness::new(Store::Redis);
    let app = &harness.spawn().await;
    acquire_when_back(app, "demoted", json!({ "limit": 5 }), Duration::ZERO).await;
    let before = app.redis().call_connections();
    assert_eq!(before.len(), 1, "one connection serves sequential calls");
    let port = other.port().to_string();
    assert!(
        app.redis()
            .command(&["REPLICAOF", "127.0.0.1", &port])
            .is_ok()
    );
    // Now a replica: every write is refused with READONLY.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = app.acquire("demoted", json!({ "limit": 5 })).await;
        let status = response.status().as_u16();
        assert_ne!(status, 500, "a demoted master is not an internal error");
        if status == 503 {
            assert!(response.headers().contains_key("retry-after"));
            let problem = expect_problem(response, 503).await;
            assert_eq!(problem["type"], "urn:permitd:problem:store-unavailable");
            break;
        }
        // Until the replication link is up, the old data may still answer.
        assert!(Instant::now() < deadline, "never refused: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app.redis().command(&["REPLICAOF", "NO", "ONE"]).is_ok());
    acquire_when_back(
        app,
        "demoted",
        json!({ "limit": 5 }),
        Duration::from_secs(3),
    )
    .await;
    // A PING passes on a replica: the connection that answered READONLY must
    // have been dropped for it, so that a new one (which, behind a DNS name
    // or a proxy, may reach the new master) serves the calls.
    let kept: Vec<_> = app
        .redis()
        .call_connections()
        .intersection(&before)
        .cloned()
        .collect();
    assert!(kept.is_empty(), "still open after READONLY: {kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_within_its_timeout_costs_no_waiter_its_place() {
    let harness = Harness::new(Store::Redis).configure(|settings| {
        settings.wait_recheck_ms = 100;
        settings.redis_timeout_ms = 2_000;
    });
    let app = &harness.spawn().await;
    let held = acquire_when_back(app, "stall", json!({ "limit": 1 }), Duration::ZERO).await;
    let body = json!({ "wait_ms": 15_000 });
    let mut waiters = Vec::new();
    for n in 1..=6 {
        waiters.push(app.acquire_in_background("stall", body.clone()));
        app.until_waiting("stall", n).await;
    }
    // A stall shorter than the Redis timeout, longer than three re-checks.
    app.redis().pause();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    app.redis().resume();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let location = format!("/semaphores/stall/permits/{}", held["id"].as_str().unwrap());
    assert_eq!(app.delete(&location).await.status(), 204);
    // The first to arrive is the first served.
    let first = waiters.remove(0).await.unwrap();
    assert_eq!(first.status, 201);
    // Everyone else still waits: nobody was dropped by the stall (that
    // would be a 503) nor served out of turn.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (n, waiter) in waiters.into_iter().enumerate() {
        if waiter.is_finished() {
            let waited = waiter.await.unwrap();
            panic!(
                "waiter {} finished: {} {}",
                n + 2,
                waited.status,
                waited.body
            );
        }
        waiter.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_policy_is_named_at_readyz_with_noeviction() {
    let evicting = RedisServer::builder()
        .config("maxmemory-policy", "allkeys-lru")
        .start();
    let app = &Harness::on(evicting).spawn().await;
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    let warnings = ready["warnings"].as_array().expect("warnings listed");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("noeviction")),
        "{ready}"
    );
    let app = &spawn_app(Store::Redis).await;
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert!(
        ready["warnings"].is_null(),
        "no warning by default: {ready}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_scoped_to_the_callers_token() {
    let app = &spawn_app_with(Store::Redis, |settings| {
        settings.api_tokens = vec![
            Secret::new("token-of-team-a"),
            Secret::new("token-of-team-b"),
        ];
    })
    .await;
    let acquire = |token: &'static str| {
        app.client
            .post(app.url("/semaphores/shared/permits"))
            .bearer_auth(token)
            .header("Idempotency-Key", "job-1")
            .json(&json!({ "limit": 5 }))
            .send()
    };
    let a = acquire("token-of-team-a").await.unwrap();
    assert_eq!(a.status(), 201);
    let a: Value = a.json().await.unwrap();
    // The same key from another token is another caller's: a permit of its
    // own, never a replay of (and so never a look at) team A's.
    let b = acquire("token-of-team-b").await.unwrap();
    assert_eq!(b.status(), 201);
    let b: Value = b.json().await.unwrap();
    assert_ne!(a["id"], b["id"]);
    // While each caller's own retry is still a replay.
    let again = acquire("token-of-team-a").await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], a["id"]);
}
