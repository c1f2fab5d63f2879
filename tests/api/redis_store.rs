//! Redis-only behaviour: outages and recovery, several permitd instances on one
//! Redis, and the key layout the scripts promise.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::helpers::{Harness, Secret, Store, expect_problem, spawn_app, spawn_app_with};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_503_quickly_and_recovers_without_restart() {
    let app = spawn_app(Store::Redis).await;
    assert_eq!(
        app.acquire("svc", json!({ "limit": 1 })).await.status(),
        201
    );

    app.redis().kill();
    for path in ["/semaphores/svc/permits", "/semaphores/other/permits"] {
        let started = Instant::now();
        let response = app
            .client
            .post(app.url(path))
            .json(&json!({ "limit": 1 }))
            .send()
            .await
            .unwrap();
        assert!(response.headers().contains_key("retry-after"));
        expect_problem(response, 503).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
    expect_problem(app.get("/readyz").await, 503).await;
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "liveness ignores Redis"
    );

    app.redis().restart();
    // The restarted Redis is empty (nothing was saved), so the semaphore is created again.
    let response = app.acquire("svc", json!({ "limit": 1 })).await;
    assert_eq!(
        response.status(),
        201,
        "recovered with no restart of permitd"
    );
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_gives_503_within_the_configured_timeout() {
    // Accepts connections and never replies: the worst case for a client.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    // The memory harness, pointed at a Redis URL of the test's own.
    let app = spawn_app_with(Store::Memory, move |settings| {
        settings.redis_url = Some(Secret::new(url.clone()));
        settings.redis_timeout_ms = 500;
        settings.redis_connect_timeout_ms = 300;
    })
    .await;
    let started = Instant::now();
    expect_problem(app.acquire("svc", json!({ "limit": 1 })).await, 503).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_grant_exactly_the_limit() {
    let harness = Harness::new(Store::Redis);
    let (a, b) = (harness.spawn().await, harness.spawn().await);
    let attempts = (0..200).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.acquire("shared", json!({ "limit": 10, "ttl_ms": 60000 }))
    });
    let responses = futures::future::join_all(attempts).await;
    let mut tokens = HashSet::new();
    let mut by_status = std::collections::BTreeMap::new();
    for response in responses {
        *by_status.entry(response.status().as_u16()).or_insert(0) += 1;
        if response.status() == 201 {
            let permit: Value = response.json().await.unwrap();
            tokens.insert(permit["fencing_token"].as_u64().unwrap());
        }
    }
    assert_eq!(by_status, [(201, 10), (429, 190)].into_iter().collect());
    assert_eq!(tokens.len(), 10);
    assert_eq!(a.status("shared").await["held"], 10);
    assert_eq!(b.status("shared").await["held"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_from_one_instance_is_released_through_another() {
    let harness = Harness::new(Store::Redis);
    let (a, b) = (harness.spawn().await, harness.spawn().await);
    let permit: Value = a
        .acquire("hop", json!({ "limit": 1 }))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/semaphores/hop/permits/{}", permit["id"].as_str().unwrap());
    expect_problem(b.acquire("hop", json!({})).await, 429).await;
    assert_eq!(b.get(&path).await.status(), 200);
    assert_eq!(b.delete(&path).await.status(), 204);
    assert_eq!(a.acquire("hop", json!({})).await.status(), 201);
}

// One thread, as permitd serves by default (`--worker-threads 1`): a
// checkout and its return then never interleave with another's, and the
// connection count is exact. On more threads two checkouts may meet in that
// moment, and open another connection.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_calls_share_a_connection() {
    let app = spawn_app(Store::Redis).await;
    assert_eq!(
        app.acquire("shared", json!({ "limit": 64 })).await.status(),
        201
    );
    // 63 more at once: each checked a connection of its own out of the pool
    // before (16 opened), now they go on the one open already.
    let acquires = (1..64).map(|_| app.acquire("shared", json!({ "limit": 64 })));
    for response in futures::future::join_all(acquires).await {
        assert_eq!(response.status(), 201);
    }
    let open = app.redis().call_connections();
    assert_eq!(open.len(), 1, "connections for 64 calls: {open:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_of_a_semaphore_shares_one_hash_tag_under_the_prefix() {
    let app = spawn_app_with(Store::Redis, |settings| {
        settings.key_prefix = "team-a:".into();
    })
    .await;
    let response = app
        .client
        .post(app.url("/semaphores/jobs/permits"))
        .header("Idempotency-Key", "k1")
        .json(&json!({ "limit": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let keys = app.redis().command(&["KEYS", "*"]).strings();
    for suffix in ["meta", "expiry", "permits", "idem"] {
        assert!(
            keys.contains(&format!("team-a:{{jobs}}:{suffix}")),
            "missing {suffix} in {keys:?}"
        );
    }
    let tagged = keys.iter().filter(|k| k.starts_with("team-a:{jobs}:"));
    assert_eq!(tagged.count(), 4, "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_as_functions_and_the_library_is_loaded_again_after_a_flush() {
    let app = spawn_app(Store::Redis).await;
    assert!(app.redis().command(&["CONFIG", "RESETSTAT"]).is_ok());
    assert_eq!(app.acquire("s", json!({ "limit": 5 })).await.status(), 201);
    // As on a Redis restarted without persistence.
    assert!(app.redis().command(&["FUNCTION", "FLUSH"]).is_ok());
    assert!(app.redis().command(&["SCRIPT", "FLUSH"]).is_ok());
    assert_eq!(app.acquire("s", json!({})).await.status(), 201);
    assert_eq!(app.status("s").await["held"], 2);
    let libraries = format!("{:?}", app.redis().command(&["FUNCTION", "LIST"]));
    assert!(libraries.contains("_acquire"), "{libraries}");
    // Two acquires and a status, each one FCALL (and the library's loads
    // went with an FCALL too): no script ran as EVAL.
    assert!(app.redis().calls("fcall") >= 3);
    assert_eq!(app.redis().calls("evalsha") + app.redis().calls("eval"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_whose_acl_refuses_functions_gets_the_scripts_by_evalsha() {
    serves_by_evalsha_when_the_acl_says("-function").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_whose_acl_refuses_fcall_gets_the_scripts_by_evalsha() {
    serves_by_evalsha_when_the_acl_says("-fcall").await;
}

/// A fresh app (one that fell back already would never try Functions
/// again) on a Redis without the library, whose ACL then gets `rule`.
async fn serves_by_evalsha_when_the_acl_says(rule: &str) {
    let app = spawn_app(Store::Redis).await;
    assert!(app.redis().command(&["FUNCTION", "FLUSH"]).is_ok());
    assert!(
        app.redis()
            .command(&["ACL", "SETUSER", "default", rule])
            .is_ok()
    );
    assert_eq!(app.acquire("s", json!({ "limit": 5 })).await.status(), 201);
    assert_eq!(app.acquire("s", json!({})).await.status(), 201);
    assert_eq!(app.status("s").await["held"], 2);
    assert!(app.redis().calls("evalsha") + app.redis().calls("eval") >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_arrives_after_its_withdrawal_neither_grants_nor_queues() {
    use permitd::semaphore::{
        AcquireOutcome, AcquireRequest, Count, Limit, PermitId, SemaphoreName, Ttl, WaitTime,
    };
    use permitd::store::Attempt;

    // At the store, without HTTP: the race is between two Redis connections.
    let harness = Harness::new(Store::Redis);
    let store = harness.semaphore_store();
    let name = SemaphoreName::parse("late").unwrap();
    let request = AcquireRequest {
        name: name.clone(),
        limit: Some(Limit::new(1).unwrap()),
        count: Count::ONE,
        ttl: Ttl::new(60_000, 60_000).unwrap(),
        wait: WaitTime::new(10_000, 60_000).unwrap(),
        holder: None,
        idempotency_key: None,
    };
    // The caller gave up (timeout, disconnect) and withdrew its ticket, while
    // its attempt was still on the way on another connection.
    let ticket = PermitId::random();
    store.leave(&name, ticket).await.unwrap();
    let late = store.attempt(&request, ticket, true).await.unwrap();
    assert!(
        matches!(
            late,
            Attempt::Done {
                outcome: AcquireOutcome::Unavailable { .. },
                ..
            }
        ),
        "{late:?}"
    );
    // Nothing was taken or queued for nobody: a fresh ticket gets the unit.
    let fresh = store
        .attempt(&request, PermitId::random(), false)
        .await
        .unwrap();
    assert!(
        matches!(
            fresh,
            Attempt::Done {
                outcome: AcquireOutcome::Granted(_),
                ..
            }
        ),
        "{fresh:?}"
    );
    let status = store.status(&name).await.unwrap().unwrap();
    assert_eq!((status.held, status.waiting), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_raise_wakes_each_waiter_once_and_at_most_100_per_script() {
    use permitd::semaphore::{
        AcquireRequest, Count, IdleTtl, Limit, PermitId, SemaphoreName, Ttl, WaitTime,
    };
    use permitd::store::Attempt;

    const WAITERS: u64 = 500;
    let harness = Harness::new(Store::Redis);
    let store = harness.semaphore_store();
    let name = SemaphoreName::parse("raise").unwrap();
    store
        .set_limit(&name, Limit::new(1).unwrap(), IdleTtl::Keep)
        .await
        .unwrap();
    let request = AcquireRequest {
        name: name.clone(),
        limit: None,
        count: Count::ONE,
        ttl: Ttl::new(60_000, 3_600_000).unwrap(),
        wait: WaitTime::NONE,
        holder: None,
        idempotency_key: None,
    };
    let holder = store
        .attempt(&request, PermitId::random(), false)
        .await
        .unwrap();
    assert!(matches!(holder, Attempt::Done { .. }));
    let tickets: Vec<PermitId> = (0..WAITERS).map(|_| PermitId::random()).collect();
    for ticket in &tickets {
        let queued = store.attempt(&request, *ticket, true).await.unwrap();
        assert!(matches!(queued, Attempt::Queued { .. }), "{queued:?}");
    }

    let redis = harness.redis();
    assert!(redis.command(&["CONFIG", "RESETSTAT"]).is_ok());
    store
        .set_limit(&name, Limit::new(WAITERS + 1).unwrap(), IdleTtl::Keep)
        .await
        .unwrap();
    // The first 100 at once (so the script stays short), then each grant
    // wakes the next ones: one wake per waiter in all, not one per waiter
    // per grant.
    assert_eq!(redis.calls("publish"), 100, "the raise wakes the first 100");
    for ticket in &tickets {
        let granted = store.attempt(&request, *ticket, true).await.unwrap();
        assert!(matches!(granted, Attempt::Done { .. }), "{granted:?}");
    }
    assert_eq!(
        redis.calls("publish"),
        WAITERS,
        "one wake per waiter in all"
    );
}
