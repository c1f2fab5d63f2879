//! Capacity that never drifts: the units held are exactly the units of live
//! permits, through a retried acquire whose first answer was lost, an
//! idempotent retry after the limit changed, many leases ending together,
//! and withdrawals that a late attempt must still find.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use permitd::semaphore::{
    AcquireOutcome, AcquireRequest, Count, IdleTtl, Limit, PermitId, SemaphoreName, Ttl, WaitTime,
};
use permitd::store::{Attempt, SemaphoreStore};
use serde_json::{Value, json};

use crate::helpers::{Harness, RedisServer, Store, on_each_store, permit_path, spawn_app};

on_each_store!(
    an_idempotent_retry_after_a_limit_change_replays_its_permit,
    leases_ending_together_never_count_against_an_acquire,
);

/// The semaphore's `held` as the scripts keep it in its meta hash: what
/// every decision reads, not what a status call recounts.
fn meta_held(redis: &RedisServer, prefix: &str, name: &str) -> i64 {
    let key = format!("{prefix}{{{name}}}:meta");
    match redis.command(&["HGET", &key, "held"]) {
        crate::helpers::Reply::Bulk(held) => held.parse().unwrap(),
        other => panic!("no held in {key}: {other:?}"),
    }
}

/// A waiting acquire whose calls fail after the script ran (`WAIT` finds
/// no replica: the write was made, the answer is a 503) is retried by its
/// instance with the same ticket. The retry must get the permit that ticket
/// already holds, counted once; the old scripts granted again and added its
/// count to `held` a second time, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_waiting_acquire_holds_one_permit_counted_once() {
    let master = RedisServer::start();
    let replica = RedisServer::replica_of(&master);
    let harness = Harness::on(master).configure(|s| {
        s.redis_wait_replicas = 1;
        s.redis_timeout_ms = 1_000;
    });
    let app = harness.spawn().await;
    let prefix = harness.key_prefix();
    let created = app
        .put_json("/semaphores/retried", json!({ "limit": 2 }))
        .await;
    assert_eq!(created.status(), 201);

    // Every write is made on the master and then answered 503 while the
    // replica is stopped; the waiting acquire tries again until it resumes.
    replica.pause();
    // The lease outlasts the fault, so the permit answered is still live.
    let waiter = app.acquire_in_background("retried", json!({ "wait_ms": 6_000, "ttl_ms": 4_000 }));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    replica.resume();
    let waited = waiter.await.unwrap();
    assert_eq!(waited.status, 201, "{}", waited.body);

    let status = app.status("retried").await;
    assert_eq!(status["held"], 1, "{status}");
    assert_eq!(status["holders"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(meta_held(harness.redis(), &prefix, "retried"), 1);

    // Once the lease ends, every unit is free again.
    let ends = &waited.body["expires_at"];
    let ends = humantime::parse_rfc3339(ends.as_str().unwrap()).unwrap();
    let left = ends
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(100)).await;
    let both = app.acquire("retried", json!({ "count": 2 })).await;
    assert_eq!(both.status(), 201, "{}", both.text().await.unwrap());
    assert_eq!(meta_held(harness.redis(), &prefix, "retried"), 2);
}

/// The Rust client resends `limit` with the same key on every retry: after
/// a limit change the retry must replay the permit (200), not answer 409
/// while that permit keeps its unit for the whole lease. Another body with
/// the key is still a 422.
async fn an_idempotent_retry_after_a_limit_change_replays_its_permit(store: Store) {
    let app = spawn_app(store).await;
    let body = json!({ "limit": 2, "ttl_ms": 60_000 });
    let keyed = |body: &Value| {
        app.client
            .post(app.url("/semaphores/orders/permits"))
            .header("Idempotency-Key", "order-42")
            .json(body)
            .send()
    };
    let first = keyed(&body).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let raised = app
        .put_json("/semaphores/orders", json!({ "limit": 3 }))
        .await;
    assert_eq!(raised.status(), 200);

    let retry = keyed(&body).await.unwrap();
    assert_eq!(retry.status(), 200, "the replay, whatever the limit is now");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["id"], first["id"]);
    assert_eq!(retry["fencing_token"], first["fencing_token"]);

    let other = keyed(&json!({ "limit": 2, "ttl_ms": 60_000, "count": 2 }))
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    let status = app.status("orders").await;
    assert_eq!(
        (status["limit"].clone(), status["held"].clone()),
        (json!(3), json!(1))
    );
    assert_eq!(app.delete(&permit_path(&first)).await.status(), 204);
}

/// One unit for a minute, try-once, creating the semaphore with `limit`.
fn one_unit(name: &SemaphoreName, limit: Option<u64>) -> AcquireRequest {
    AcquireRequest {
        name: name.clone(),
        limit: limit.map(|l| Limit::new(l).unwrap()),
        count: Count::ONE,
        ttl: Ttl::new(60_000, 3_600_000).unwrap(),
        wait: WaitTime::NONE,
        holder: None,
        idempotency_key: None,
    }
}

/// How many leases end together in `leases_ending_together_…`: ten times
/// what one Redis call sweeps. `PERMITD_MASS_EXPIRY=100000` measures the
/// README's figure.
fn mass_expiry() -> u32 {
    std::env::var("PERMITD_MASS_EXPIRY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

/// Many leases ending at once are never counted against a decision: an
/// acquire of every unit right after is granted (the Redis scripts swept
/// 500 a call and judged capacity on the half-swept count: 429 with
/// `held: 500`), and on Redis no script runs 10 ms or longer while they are
/// swept (SLOWLOG).
async fn leases_ending_together_never_count_against_an_acquire(store: Store) {
    let n = mass_expiry();
    let harness = Harness::new(store);
    let semaphores = harness.semaphore_store();
    let name = SemaphoreName::parse("mass").unwrap();
    let limit = Limit::new(n.into()).unwrap();
    semaphores
        .set_limit(&name, limit, IdleTtl::Keep)
        .await
        .unwrap();
    let one = one_unit(&name, None);
    if store == Store::Redis {
        let redis = harness.redis();
        assert!(
            redis
                .command(&["CONFIG", "SET", "slowlog-log-slower-than", "1000"])
                .is_ok()
        );
        assert!(redis.command(&["SLOWLOG", "RESET"]).is_ok());
    }
    // Every lease ends at the same moment, whenever it was granted.
    let granting = Instant::now();
    let end = granting + Duration::from_millis(500 + u64::from(n) / 5);
    grant_all(&semaphores, &one, n, end).await;
    let granted_in = granting.elapsed();
    // Past the latest end (a lease is at least 100 ms).
    tokio::time::sleep_until((end.max(Instant::now()) + Duration::from_millis(150)).into()).await;

    // A status first: it is read-only, and must look past every ended lease.
    let reading = Instant::now();
    let status = semaphores.status(&name).await.unwrap().unwrap();
    let read_in = reading.elapsed();
    assert_eq!(
        (status.held, status.holders.len()),
        (0, 0),
        "{n} granted in {granted_in:?}"
    );
    let every_unit = AcquireRequest {
        count: Count::new(n.into()).unwrap(),
        ..one
    };
    let deciding = Instant::now();
    let attempt = semaphores
        .attempt(&every_unit, PermitId::random(), false)
        .await
        .unwrap();
    let decided_in = deciding.elapsed();
    let Attempt::Done {
        outcome: AcquireOutcome::Granted(permit),
        ..
    } = attempt
    else {
        panic!("every unit after {n} leases ended: {attempt:?}");
    };
    assert_eq!(permit.count, n);
    let mut slowest = String::new();
    if store == Store::Redis {
        // Every call of 1 ms or more since the grants began (SLOWLOG keeps
        // the last 128; a sweep of 200,000 takes 400).
        let logged = harness.redis().command(&["SLOWLOG", "GET", "-1"]);
        let took_us: Vec<(i64, String)> = match &logged {
            crate::helpers::Reply::Array(entries) => entries
                .iter()
                .map(|entry| match entry {
                    crate::helpers::Reply::Array(fields) => {
                        let function = fields[3].strings().get(1).cloned().unwrap_or_default();
                        let script = function.rsplit('_').next().unwrap_or_default().to_owned();
                        (fields[2].integer(), script)
                    }
                    other => panic!("a SLOWLOG entry: {other:?}"),
                })
                .collect(),
            other => panic!("SLOWLOG GET: {other:?}"),
        };
        let mut sorted = took_us.clone();
        sorted.sort();
        let median = sorted.get(sorted.len() / 2).map_or(0, |(us, _)| *us);
        let (max, script) = sorted.last().cloned().unwrap_or_default();
        assert!(max < 10_000, "a script ran {max} µs: {logged:?}");
        slowest = format!(
            "; {} calls of 1 ms or more, their median {median} µs, the slowest {max} µs ({script})",
            took_us.len()
        );
    }
    println!(
        "{store:?}: {n} leases granted in {granted_in:?}, all ending at once; then a status \
         took {read_in:?} (it sweeps on Redis) and an acquire of every unit {decided_in:?}\
         {slowest}"
    );
}

/// `n` one-unit permits whose leases all end at `end` (the shortest lease is
/// 100 ms: a batch granted later than that ends that late), 200 at a time.
async fn grant_all(store: &Arc<dyn SemaphoreStore>, one: &AcquireRequest, n: u32, end: Instant) {
    let mut left = n;
    while left > 0 {
        let batch = left.min(200);
        let ms = end.saturating_duration_since(Instant::now()).as_millis() as u64;
        let request = AcquireRequest {
            ttl: Ttl::new(ms.max(Ttl::MIN_MS), 3_600_000).unwrap(),
            ..one.clone()
        };
        let request = &request;
        let attempts = (0..batch).map(|_| store.attempt(request, PermitId::random(), false));
        for attempt in join_all(attempts).await {
            let attempt = attempt.unwrap();
            assert!(
                matches!(
                    attempt,
                    Attempt::Done {
                        outcome: AcquireOutcome::Granted(_),
                        ..
                    }
                ),
                "{attempt:?}"
            );
        }
        left -= batch;
    }
}

/// An attempt of `ticket` arriving late, after its caller withdrew it, must
/// find the withdrawal: it grants nothing and creates nothing.
async fn a_late_attempt_finds_its_withdrawal(store: &Arc<dyn SemaphoreStore>, ticket: PermitId) {
    let late = one_unit(&SemaphoreName::parse("withdrawn").unwrap(), Some(1));
    let attempt = store.attempt(&late, ticket, true).await.unwrap();
    assert!(
        matches!(
            attempt,
            Attempt::Done {
                outcome: AcquireOutcome::Unavailable { .. },
                ..
            }
        ),
        "a withdrawn ticket's late attempt: {attempt:?}"
    );
    let status = store.status(&late.name).await.unwrap();
    assert!(status.as_ref().is_none_or(|s| s.held == 0), "{status:?}");
}

/// Emptied long before its keys' expiry (a long lease released early), a
/// semaphore's idle time restarts and every key gets the new expiry; the
/// withdrawal memory (10 s by default) used to get it too, and went with
/// the rest after about one idle TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_is_remembered_past_the_idle_end_of_its_semaphore() {
    let harness = Harness::new(Store::Redis);
    let store = harness.semaphore_store();
    let name = SemaphoreName::parse("withdrawn").unwrap();
    let idle = IdleTtl::After(Duration::from_secs(1));
    store
        .set_limit(&name, Limit::new(1).unwrap(), idle)
        .await
        .unwrap();
    let long = one_unit(&name, None);
    let held = store
        .attempt(&long, PermitId::random(), false)
        .await
        .unwrap();
    let Attempt::Done {
        outcome: AcquireOutcome::Granted(permit),
        ..
    } = held
    else {
        panic!("{held:?}");
    };
    let ticket = PermitId::random();
    store.leave(&name, ticket).await.unwrap();
    store.release(&name, permit.id).await.unwrap();
    // Forgotten as idle: its meta is gone.
    let meta = format!("{}{{withdrawn}}:meta", harness.key_prefix());
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.redis().command(&["EXISTS", &meta]).integer() == 1 {
        assert!(Instant::now() < deadline, "never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a_late_attempt_finds_its_withdrawal(&store, ticket).await;
}

/// DELETE used to remove the withdrawal memory with the rest, so a late
/// attempt carrying a limit created the semaphore again and was granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_is_remembered_past_a_delete() {
    let harness = Harness::new(Store::Redis);
    let store = harness.semaphore_store();
    let name = SemaphoreName::parse("withdrawn").unwrap();
    store
        .set_limit(&name, Limit::new(1).unwrap(), IdleTtl::Keep)
        .await
        .unwrap();
    let ticket = PermitId::random();
    store.leave(&name, ticket).await.unwrap();
    assert!(store.delete(&name).await.unwrap());
    a_late_attempt_finds_its_withdrawal(&store, ticket).await;
}
