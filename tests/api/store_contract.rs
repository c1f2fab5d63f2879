//! The store contract: the semantics written on `SemaphoreStore`, checked
//! at the trait itself (no HTTP) on both stores, and on Redis in each of its
//! deployments (standalone, Cluster, Sentinel), so a third store can be held
//! to the same scenarios. What the HTTP layer makes of each outcome is
//! `contract`'s business.

use std::sync::Arc;
use std::time::Duration;

use permitd::semaphore::{
    AcquireOutcome, AcquireRequest, Count, Holder, IdempotencyKey, IdleTtl, Limit, Permit,
    PermitId, ReleaseOutcome, SemaphoreName, SetLimitOutcome, Ttl, WaitTime,
};
use permitd::store::{Attempt, Handoff, SemaphoreStore, WakeHandle, Woken};

use crate::helpers::{Harness, Store, on_every_deployment};

on_every_deployment!(
    set_limit_creates_then_leaves_alone_or_changes,
    status_of_an_unknown_semaphore_is_none,
    attempts_are_granted_until_the_limit_then_unavailable,
    a_multi_unit_attempt_is_all_or_nothing,
    a_count_above_the_limit_exceeds_it_and_takes_nothing,
    a_different_limit_is_a_conflict,
    release_gives_units_back_once_and_tells_what_was_missing,
    refresh_extends_a_live_permit_and_knows_no_unknown_one,
    an_expired_permit_frees_its_units_and_is_gone,
    fencing_tokens_strictly_increase_across_delete_and_recreate,
    an_idempotent_replay_is_the_same_permit_and_another_body_a_mismatch,
    queued_tickets_keep_their_order_and_a_try_once_attempt_does_not_overtake,
    leaving_withdraws_a_queued_ticket_and_releases_a_granted_one,
    delete_says_whether_the_semaphore_existed,
    withdrawing_never_takes_a_permit_a_retry_was_handed,
    a_withdrawn_grant_frees_its_key_for_the_retry,
    an_idle_semaphore_is_forgotten_after_its_idle_ttl,
    a_new_token_is_never_below_the_store_clock,
);

// Direct handoff, on the store that a test can watch subscribe (see
// `until_listening`); the HTTP scenarios in `waiting` run it everywhere.
mod handoff {
    use super::*;
    use crate::helpers::on_each_store;

    on_each_store!(
        a_release_hands_a_ticket_waiting_here_its_permit,
        a_permit_handed_to_a_ticket_that_left_is_released_by_its_withdrawal,
        a_ticket_that_does_not_wait_here_is_woken_not_handed,
    );
}

/// A fresh store of this kind; keep the harness (its Redis) while using it.
fn open(store: Store) -> (Harness, Arc<dyn SemaphoreStore>) {
    let harness = Harness::new(store);
    let semaphores = harness.semaphore_store();
    (harness, semaphores)
}

fn name(raw: &str) -> SemaphoreName {
    SemaphoreName::parse(raw).unwrap()
}

fn limit(n: u64) -> Option<Limit> {
    Some(Limit::new(n).unwrap())
}

fn ttl(ms: u64) -> Ttl {
    Ttl::new(ms, 3_600_000).unwrap()
}

/// One unit on `semaphore` for a minute, try-once, no limit (so it must exist).
fn request(semaphore: &str) -> AcquireRequest {
    AcquireRequest {
        name: name(semaphore),
        limit: None,
        count: Count::ONE,
        ttl: ttl(60_000),
        wait: WaitTime::NONE,
        holder: None,
        idempotency_key: None,
    }
}

fn count(n: u64) -> Count {
    Count::new(n).unwrap()
}

/// The final answer of an attempt; panics if it was queued.
fn done(attempt: Attempt) -> AcquireOutcome {
    match attempt {
        Attempt::Done { outcome, .. } => outcome,
        queued => panic!("expected a final answer, got {queued:?}"),
    }
}

/// A try-once attempt by a new ticket.
async fn try_once(store: &Arc<dyn SemaphoreStore>, request: &AcquireRequest) -> AcquireOutcome {
    done(
        store
            .attempt(request, PermitId::random(), false)
            .await
            .unwrap(),
    )
}

/// A try-once attempt that must be granted; returns the permit.
async fn granted(store: &Arc<dyn SemaphoreStore>, request: &AcquireRequest) -> Permit {
    match try_once(store, request).await {
        AcquireOutcome::Granted(permit) => permit,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Held units and queued tickets of an existing semaphore.
async fn held_and_waiting(store: &Arc<dyn SemaphoreStore>, semaphore: &str) -> (u32, u32) {
    let status = store.status(&name(semaphore)).await.unwrap();
    let status = status.unwrap_or_else(|| panic!("{semaphore} exists"));
    (status.held, status.waiting)
}

fn is_unavailable(outcome: &AcquireOutcome, limit: u32, held: u32) -> bool {
    matches!(outcome, AcquireOutcome::Unavailable { limit: l, held: h, .. } if (*l, *h) == (limit, held))
}

async fn set_limit_creates_then_leaves_alone_or_changes(store: Store) {
    let (_redis, store) = open(store);
    let jobs = name("jobs");
    let set = |n| store.set_limit(&jobs, limit(n).unwrap(), IdleTtl::Keep);
    assert_eq!(set(3).await.unwrap(), SetLimitOutcome::Created);
    assert_eq!(set(3).await.unwrap(), SetLimitOutcome::Unchanged);
    assert_eq!(
        set(5).await.unwrap(),
        SetLimitOutcome::Changed { previous: 3 }
    );
    let status = store.status(&jobs).await.unwrap().unwrap();
    assert_eq!(status.name, jobs);
    assert_eq!((status.limit, status.held, status.waiting), (5, 0, 0));
    assert_eq!(status.available(), 5);
    assert!(status.holders.is_empty());
}

async fn status_of_an_unknown_semaphore_is_none(store: Store) {
    let (_redis, store) = open(store);
    assert_eq!(store.status(&name("ghost")).await.unwrap(), None);
    assert_eq!(
        try_once(&store, &request("ghost")).await,
        AcquireOutcome::NotFound
    );
    assert_eq!(
        store.status(&name("ghost")).await.unwrap(),
        None,
        "a refused attempt creates nothing"
    );
}

async fn attempts_are_granted_until_the_limit_then_unavailable(store: Store) {
    let (_redis, store) = open(store);
    let first = AcquireRequest {
        limit: limit(2),
        holder: Some(Holder::parse("worker-1").unwrap()),
        ..request("api")
    };
    let permit = granted(&store, &first).await;
    assert_eq!(permit.semaphore, name("api"));
    assert_eq!(permit.count, 1);
    assert_eq!(permit.holder.as_deref(), Some("worker-1"));
    assert!(permit.acquired_at < permit.expires_at);
    granted(&store, &request("api")).await;
    let refused = try_once(&store, &request("api")).await;
    assert!(is_unavailable(&refused, 2, 2), "{refused:?}");
    assert_eq!(held_and_waiting(&store, "api").await, (2, 0));
}

async fn a_multi_unit_attempt_is_all_or_nothing(store: Store) {
    let (_redis, store) = open(store);
    let three = AcquireRequest {
        limit: limit(5),
        count: count(3),
        ..request("gpu")
    };
    granted(&store, &three).await;
    let refused = try_once(&store, &three).await;
    assert!(is_unavailable(&refused, 5, 3), "{refused:?}");
    assert_eq!(
        held_and_waiting(&store, "gpu").await,
        (3, 0),
        "took nothing"
    );
    let two = AcquireRequest {
        count: count(2),
        ..request("gpu")
    };
    assert_eq!(granted(&store, &two).await.count, 2);
    assert_eq!(held_and_waiting(&store, "gpu").await, (5, 0));
}

async fn a_count_above_the_limit_exceeds_it_and_takes_nothing(store: Store) {
    let (_redis, store) = open(store);
    store
        .set_limit(&name("small"), limit(2).unwrap(), IdleTtl::Keep)
        .await
        .unwrap();
    let three = AcquireRequest {
        count: count(3),
        ..request("small")
    };
    assert_eq!(
        try_once(&store, &three).await,
        AcquireOutcome::CountExceedsLimit { limit: 2 }
    );
    assert_eq!(held_and_waiting(&store, "small").await, (0, 0));
    // Also when the attempt carries the limit: the store creates the
    // semaphore first (as `attempt` says), then takes nothing. Refusing
    // before the store is called, so nothing is created, is the HTTP layer's
    // part (`contract::*::count_above_the_limit_is_409`).
    let fresh = AcquireRequest {
        limit: limit(2),
        count: count(3),
        ..request("fresh")
    };
    assert_eq!(
        try_once(&store, &fresh).await,
        AcquireOutcome::CountExceedsLimit { limit: 2 }
    );
    assert_eq!(held_and_waiting(&store, "fresh").await, (0, 0));
}

async fn a_different_limit_is_a_conflict(store: Store) {
    let (_redis, store) = open(store);
    store
        .set_limit(&name("shared"), limit(3).unwrap(), IdleTtl::Keep)
        .await
        .unwrap();
    let four = AcquireRequest {
        limit: limit(4),
        ..request("shared")
    };
    assert_eq!(
        try_once(&store, &four).await,
        AcquireOutcome::LimitConflict { current: 3 }
    );
    let three = AcquireRequest {
        limit: limit(3),
        ..request("shared")
    };
    granted(&store, &three).await;
    assert_eq!(held_and_waiting(&store, "shared").await, (1, 0));
}

async fn release_gives_units_back_once_and_tells_what_was_missing(store: Store) {
    let (_redis, store) = open(store);
    let one = AcquireRequest {
        limit: limit(1),
        ..request("rel")
    };
    let permit = granted(&store, &one).await;
    let rel = name("rel");
    assert_eq!(
        store.release(&rel, permit.id).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(
        store.release(&rel, permit.id).await.unwrap(),
        ReleaseOutcome::NoPermit
    );
    assert_eq!(
        store.release(&rel, PermitId::random()).await.unwrap(),
        ReleaseOutcome::NoPermit
    );
    assert_eq!(
        store.release(&name("ghost"), permit.id).await.unwrap(),
        ReleaseOutcome::NoSemaphore
    );
    assert_eq!(store.permit(&rel, permit.id).await.unwrap(), None);
    assert_eq!(held_and_waiting(&store, "rel").await, (0, 0));
    // Releasing twice gave the unit back once.
    granted(&store, &request("rel")).await;
    let refused = try_once(&store, &request("rel")).await;
    assert!(is_unavailable(&refused, 1, 1), "{refused:?}");
}

async fn refresh_extends_a_live_permit_and_knows_no_unknown_one(store: Store) {
    let (_redis, store) = open(store);
    let short = AcquireRequest {
        limit: limit(1),
        ttl: ttl(1_000),
        ..request("renew")
    };
    let permit = granted(&store, &short).await;
    let renew = name("renew");
    assert_eq!(
        store.permit(&renew, permit.id).await.unwrap().as_ref(),
        Some(&permit)
    );
    let refreshed = store.refresh(&renew, permit.id, ttl(60_000)).await.unwrap();
    let refreshed = refreshed.expect("a live permit is refreshed");
    assert_eq!(refreshed.id, permit.id);
    assert_eq!(refreshed.fencing_token, permit.fencing_token);
    assert_eq!(refreshed.acquired_at, permit.acquired_at);
    assert!(refreshed.expires_at > permit.expires_at);
    assert_eq!(
        store.permit(&renew, permit.id).await.unwrap(),
        Some(refreshed)
    );
    assert_eq!(
        store
            .refresh(&renew, PermitId::random(), ttl(1_000))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .refresh(&name("ghost"), permit.id, ttl(1_000))
            .await
            .unwrap(),
        None
    );
}

async fn an_expired_permit_frees_its_units_and_is_gone(store: Store) {
    let (_redis, store) = open(store);
    let brief = AcquireRequest {
        limit: limit(1),
        ttl: ttl(Ttl::MIN_MS),
        ..request("lease")
    };
    let permit = granted(&store, &brief).await;
    let refused = try_once(&store, &request("lease")).await;
    assert!(is_unavailable(&refused, 1, 1), "{refused:?}");
    // The scenario is the lease running out: wait well past its 100 ms.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let lease = name("lease");
    assert_eq!(held_and_waiting(&store, "lease").await, (0, 0));
    assert_eq!(store.permit(&lease, permit.id).await.unwrap(), None);
    assert_eq!(
        store.refresh(&lease, permit.id, ttl(60_000)).await.unwrap(),
        None,
        "refresh never resurrects"
    );
    let next = granted(&store, &request("lease")).await;
    assert_ne!(next.id, permit.id);
    assert_eq!(
        store.release(&lease, permit.id).await.unwrap(),
        ReleaseOutcome::NoPermit
    );
    assert_eq!(held_and_waiting(&store, "lease").await, (1, 0));
}

async fn fencing_tokens_strictly_increase_across_delete_and_recreate(store: Store) {
    let (_redis, store) = open(store);
    let fence = name("fence");
    let two = AcquireRequest {
        limit: limit(2),
        ..request("fence")
    };
    let mut last = 0;
    for round in 0..3 {
        for _ in 0..4 {
            let permit = granted(&store, &two).await;
            assert!(
                permit.fencing_token > last,
                "token {} after {last} in round {round}",
                permit.fencing_token
            );
            last = permit.fencing_token;
            store.release(&fence, permit.id).await.unwrap();
        }
        assert!(store.delete(&fence).await.unwrap());
    }
    assert!(last < (1u64 << 53), "exact as a JSON number");
}

async fn an_idempotent_replay_is_the_same_permit_and_another_body_a_mismatch(store: Store) {
    let (_redis, store) = open(store);
    let keyed = AcquireRequest {
        limit: limit(3),
        holder: Some(Holder::parse("job-1").unwrap()),
        idempotency_key: Some(IdempotencyKey::parse("order-42").unwrap()),
        ..request("idem")
    };
    let permit = granted(&store, &keyed).await;
    assert_eq!(
        try_once(&store, &keyed).await,
        AcquireOutcome::Replayed(permit.clone())
    );
    assert_eq!(held_and_waiting(&store, "idem").await, (1, 0));
    let other_body = AcquireRequest {
        holder: Some(Holder::parse("job-2").unwrap()),
        ..keyed.clone()
    };
    assert_eq!(
        try_once(&store, &other_body).await,
        AcquireOutcome::IdempotencyMismatch
    );
    // Once released, the key is remembered as ended: never a second permit.
    store.release(&name("idem"), permit.id).await.unwrap();
    assert_eq!(try_once(&store, &keyed).await, AcquireOutcome::PermitEnded);
    assert_eq!(
        try_once(&store, &other_body).await,
        AcquireOutcome::IdempotencyMismatch
    );
    assert_eq!(held_and_waiting(&store, "idem").await, (0, 0));
}

/// A grant whose request went away before hearing of it (withdrawn by
/// `leave`) was never delivered: a retry with its key is a new request, not
/// one whose permit ended.
async fn a_withdrawn_grant_frees_its_key_for_the_retry(store: Store) {
    let (_redis, store) = open(store);
    let keyed = AcquireRequest {
        limit: limit(1),
        idempotency_key: Some(IdempotencyKey::parse("lost-answer").unwrap()),
        ..request("withdrawn")
    };
    let ticket = PermitId::random();
    let first = done(store.attempt(&keyed, ticket, false).await.unwrap());
    assert!(matches!(first, AcquireOutcome::Granted(_)), "{first:?}");
    store.leave(&name("withdrawn"), ticket).await.unwrap();
    assert_eq!(held_and_waiting(&store, "withdrawn").await, (0, 0));
    let retry = granted(&store, &keyed).await;
    assert_ne!(retry.id, ticket);

    // Also when the withdrawn permit's lease ended before the withdrawal
    // came (a sweep then must not mark the key ended first).
    let short = AcquireRequest {
        ttl: ttl(100),
        idempotency_key: Some(IdempotencyKey::parse("late-withdrawal").unwrap()),
        ..keyed.clone()
    };
    store.release(&name("withdrawn"), retry.id).await.unwrap();
    let ticket = PermitId::random();
    let first = done(store.attempt(&short, ticket, false).await.unwrap());
    assert!(matches!(first, AcquireOutcome::Granted(_)), "{first:?}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    store.leave(&name("withdrawn"), ticket).await.unwrap();
    granted(&store, &short).await;
}

/// Idle for its idle TTL, a semaphore is forgotten (on Redis by key expiry,
/// on every deployment), and a new one under its name still gets larger
/// fencing tokens.
async fn an_idle_semaphore_is_forgotten_after_its_idle_ttl(store: Store) {
    let (_redis, store) = open(store);
    let idle = name("idle");
    let ttl = Duration::from_millis(1_000);
    let first = granted(
        &store,
        &AcquireRequest {
            limit: limit(1),
            ..request("idle")
        },
    )
    .await;
    store
        .set_limit(&idle, Limit::new(1).unwrap(), IdleTtl::After(ttl))
        .await
        .unwrap();
    store.release(&idle, first.id).await.unwrap();
    let idle_from = std::time::Instant::now();
    while store.status(&idle).await.unwrap().is_some() {
        assert!(
            idle_from.elapsed() < Duration::from_secs(5),
            "never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        idle_from.elapsed() >= ttl,
        "forgotten after {:?}",
        idle_from.elapsed()
    );
    let again = granted(
        &store,
        &AcquireRequest {
            limit: limit(1),
            ..request("idle")
        },
    )
    .await;
    assert!(again.fencing_token > first.fencing_token);
}

async fn queued_tickets_keep_their_order_and_a_try_once_attempt_does_not_overtake(store: Store) {
    let (_redis, store) = open(store);
    let fair = name("fair");
    let held = granted(
        &store,
        &AcquireRequest {
            limit: limit(2),
            ..request("fair")
        },
    )
    .await;
    let waiting = |units| AcquireRequest {
        count: count(units),
        wait: WaitTime::new(10_000, 60_000).unwrap(),
        ..request("fair")
    };
    let position = |attempt: Attempt| match attempt {
        Attempt::Queued { position, .. } => position,
        done => panic!("expected to queue, got {done:?}"),
    };
    // Needs both units: queued although one is free.
    let (big, small) = (PermitId::random(), PermitId::random());
    let attempt = store.attempt(&waiting(2), big, true).await.unwrap();
    assert_eq!(position(attempt), 0);
    let attempt = store.attempt(&waiting(1), small, true).await.unwrap();
    assert_eq!(position(attempt), 1);
    assert_eq!(held_and_waiting(&store, "fair").await, (1, 2));
    let newcomer = try_once(&store, &request("fair")).await;
    assert!(
        is_unavailable(&newcomer, 2, 1),
        "a unit is free, but the queue comes first: {newcomer:?}"
    );
    // Attempting again keeps a ticket's place.
    let attempt = store.attempt(&waiting(1), small, true).await.unwrap();
    assert_eq!(position(attempt), 1);

    store.release(&fair, held.id).await.unwrap();
    let head = done(store.attempt(&waiting(2), big, true).await.unwrap());
    let AcquireOutcome::Granted(head) = head else {
        panic!("the head fits once the unit is back: {head:?}");
    };
    assert_eq!(head.id, big, "a ticket becomes its permit's id");
    let attempt = store.attempt(&waiting(1), small, true).await.unwrap();
    assert_eq!(position(attempt), 0, "next in line");
    store.release(&fair, head.id).await.unwrap();
    let next = done(store.attempt(&waiting(1), small, true).await.unwrap());
    assert!(matches!(next, AcquireOutcome::Granted(_)), "{next:?}");
    assert_eq!(held_and_waiting(&store, "fair").await, (1, 0));
}

async fn leaving_withdraws_a_queued_ticket_and_releases_a_granted_one(store: Store) {
    let (_redis, store) = open(store);
    let gone = name("gone");
    let one = AcquireRequest {
        limit: limit(1),
        ..request("gone")
    };
    let ticket = PermitId::random();
    let granted = done(store.attempt(&one, ticket, true).await.unwrap());
    assert!(matches!(granted, AcquireOutcome::Granted(_)), "{granted:?}");
    let queued = PermitId::random();
    let attempt = store.attempt(&one, queued, true).await.unwrap();
    assert!(
        matches!(attempt, Attempt::Queued { position: 0, .. }),
        "{attempt:?}"
    );
    assert_eq!(held_and_waiting(&store, "gone").await, (1, 1));

    store.leave(&gone, queued).await.unwrap();
    assert_eq!(held_and_waiting(&store, "gone").await, (1, 0));
    // The client went away before hearing it was granted: the permit goes.
    store.leave(&gone, ticket).await.unwrap();
    assert_eq!(held_and_waiting(&store, "gone").await, (0, 0));
    assert_eq!(store.permit(&gone, ticket).await.unwrap(), None);
    store.leave(&gone, ticket).await.unwrap();
}

async fn delete_says_whether_the_semaphore_existed(store: Store) {
    let (_redis, store) = open(store);
    let doomed = name("doomed");
    let permit = granted(
        &store,
        &AcquireRequest {
            limit: limit(1),
            ..request("doomed")
        },
    )
    .await;
    assert!(store.delete(&doomed).await.unwrap());
    assert!(!store.delete(&doomed).await.unwrap());
    assert!(!store.delete(&name("ghost")).await.unwrap());
    assert_eq!(store.status(&doomed).await.unwrap(), None);
    assert_eq!(store.permit(&doomed, permit.id).await.unwrap(), None);
    // Created again, it carries none of the old permits.
    store
        .set_limit(&doomed, limit(1).unwrap(), IdleTtl::Keep)
        .await
        .unwrap();
    assert_eq!(held_and_waiting(&store, "doomed").await, (0, 0));
}

async fn withdrawing_never_takes_a_permit_a_retry_was_handed(store: Store) {
    let (_redis, store) = open(store);
    let keyed = AcquireRequest {
        limit: limit(1),
        idempotency_key: Some(IdempotencyKey::parse("retried").unwrap()),
        ..request("retry")
    };
    // The first request's ticket is granted, but its caller (on instance A)
    // times out; the client retries on instance B and is handed the permit.
    let first = PermitId::random();
    let permit = match done(store.attempt(&keyed, first, false).await.unwrap()) {
        AcquireOutcome::Granted(permit) => permit,
        other => panic!("expected a grant, got {other:?}"),
    };
    let retry = PermitId::random();
    assert_eq!(
        done(store.attempt(&keyed, retry, false).await.unwrap()),
        AcquireOutcome::Replayed(permit.clone())
    );
    // A's late withdrawal of its own ticket must leave the retry's permit.
    store.leave(&name("retry"), first).await.unwrap();
    assert_eq!(
        store.permit(&name("retry"), permit.id).await.unwrap(),
        Some(permit.clone()),
        "the permit handed to the retry is still live"
    );
    assert_eq!(held_and_waiting(&store, "retry").await, (1, 0));
}

async fn a_new_token_is_never_below_the_store_clock(store: Store) {
    let (_redis, store) = open(store);
    let first = granted(
        &store,
        &AcquireRequest {
            limit: limit(5),
            ..request("clock")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = granted(&store, &request("clock")).await;
    // Not just last + 1: the counter is floored at the clock (µs), which
    // moved on by at least 20 ms, so a state rolled back to before `first`
    // could not hand out `second`'s token again.
    assert!(
        second.fencing_token >= first.fencing_token + 20_000,
        "{} then {}",
        first.fencing_token,
        second.fencing_token
    );
}

/// Until the store's wake subscription is up on Redis: a grant is handed
/// only to an instance that listens (see prelude.lua's hand_off).
async fn until_listening(harness: &Harness, store: Store) {
    if store == Store::Redis {
        let pattern = format!("{}wake:*", harness.key_prefix());
        harness.redis().until_subscribed(&pattern).await;
    }
}

/// One unit held by a holder, and `ticket` queued behind it, waiting in
/// this process; returns the holder's permit and the ticket's handle.
async fn held_with_a_waiter(
    harness: &Harness,
    kind: Store,
    store: &Arc<dyn SemaphoreStore>,
    waiting: &AcquireRequest,
    ticket: PermitId,
) -> (Permit, WakeHandle) {
    let holder = granted(
        store,
        &AcquireRequest {
            limit: limit(1),
            ..request(waiting.name.as_str())
        },
    )
    .await;
    until_listening(harness, kind).await;
    let handle = store.wakeups().register(ticket);
    let attempt = store.attempt(waiting, ticket, true).await.unwrap();
    assert!(
        matches!(attempt, Attempt::Queued { position: 0, .. }),
        "{attempt:?}"
    );
    (holder, handle)
}

/// The grant a handle was handed, within a second.
async fn handed(handle: &WakeHandle) -> Handoff {
    tokio::time::timeout(Duration::from_secs(1), handle.notified())
        .await
        .expect("woken");
    match handle.woken() {
        Woken::Granted(handoff) => handoff,
        other => panic!("expected a grant, got {other:?}"),
    }
}

async fn a_release_hands_a_ticket_waiting_here_its_permit(kind: Store) {
    let (harness, store) = open(kind);
    let waiting = AcquireRequest {
        ttl: ttl(45_000),
        holder: Some(Holder::parse("next").unwrap()),
        idempotency_key: Some(IdempotencyKey::parse("handed-1").unwrap()),
        ..request("hand")
    };
    let ticket = PermitId::random();
    let (holder, handle) = held_with_a_waiter(&harness, kind, &store, &waiting, ticket).await;

    let released = store.release(&name("hand"), holder.id).await.unwrap();
    assert_eq!(released, ReleaseOutcome::Released);
    let handoff = handed(&handle).await;
    assert!(handoff.fencing_token > holder.fencing_token);
    assert_eq!(handoff.expires_at.0 - handoff.acquired_at.0, 45_000);
    // Granted by the release itself: held, out of the queue, and the same
    // permit to the ticket's own attempt and to a retry with its key.
    assert_eq!(held_and_waiting(&store, "hand").await, (1, 0));
    let permit = store.permit(&name("hand"), ticket).await.unwrap().unwrap();
    assert_eq!(
        (permit.fencing_token, permit.acquired_at, permit.expires_at),
        (
            handoff.fencing_token,
            handoff.acquired_at,
            handoff.expires_at
        )
    );
    assert_eq!(permit.holder.as_deref(), Some("next"));
    let again = done(store.attempt(&waiting, ticket, true).await.unwrap());
    assert_eq!(again, AcquireOutcome::Granted(permit.clone()));
    let retry = try_once(&store, &waiting).await;
    assert_eq!(retry, AcquireOutcome::Replayed(permit));
}

async fn a_permit_handed_to_a_ticket_that_left_is_released_by_its_withdrawal(kind: Store) {
    let (harness, store) = open(kind);
    let waiting = request("left");
    let ticket = PermitId::random();
    let (holder, handle) = held_with_a_waiter(&harness, kind, &store, &waiting, ticket).await;
    // The request goes away as the release hands it its permit: it never
    // answers with it, and its withdrawal gives the units back.
    store.release(&name("left"), holder.id).await.unwrap();
    handed(&handle).await;
    drop(handle);
    assert_eq!(held_and_waiting(&store, "left").await, (1, 0));
    store.leave(&name("left"), ticket).await.unwrap();
    assert_eq!(held_and_waiting(&store, "left").await, (0, 0));
    assert_eq!(store.permit(&name("left"), ticket).await.unwrap(), None);
}

async fn a_ticket_that_does_not_wait_here_is_woken_not_handed(kind: Store) {
    let (harness, store) = open(kind);
    let waiting = request("away");
    let holder = granted(
        &store,
        &AcquireRequest {
            limit: limit(1),
            ..request("away")
        },
    )
    .await;
    until_listening(&harness, kind).await;
    // Queued by a caller that does not wait for it here (as the model
    // test's attempts are): nothing answers a grant, so none is made.
    let ticket = PermitId::random();
    let attempt = store.attempt(&waiting, ticket, true).await.unwrap();
    assert!(matches!(attempt, Attempt::Queued { .. }), "{attempt:?}");
    let handle = store.wakeups().register(ticket);
    store.release(&name("away"), holder.id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), handle.notified())
        .await
        .expect("woken");
    assert_eq!(handle.woken(), Woken::Attempt);
    assert_eq!(held_and_waiting(&store, "away").await, (0, 1));
    let permit = done(store.attempt(&waiting, ticket, true).await.unwrap());
    assert!(matches!(permit, AcquireOutcome::Granted(_)), "{permit:?}");
}
