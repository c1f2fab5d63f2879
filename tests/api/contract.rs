//! The contract suite: every scenario is written once, against the HTTP API,
//! and run on both stores (`memory::*` and `redis::*` test names), so the two
//! cannot drift apart.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::{ApiClient, Store, expect_problem, on_each_store, permit_path, spawn_app};
use serde_json::{Value, json};

on_each_store!(
    acquire_grants_until_the_limit_then_returns_429,
    multi_unit_count_is_all_or_nothing,
    count_above_the_limit_is_409,
    expired_lease_frees_its_units,
    refresh_extends_a_live_lease,
    refresh_never_resurrects_an_expired_permit,
    release_frees_units_and_a_second_release_is_404,
    idempotent_acquire_returns_the_same_permit,
    fencing_tokens_strictly_increase_even_across_recreation,
    conflicting_limit_is_409_and_same_limit_is_fine,
    status_lists_holders_but_never_permit_ids,
    unknown_semaphore_is_404_everywhere,
    a_missing_semaphore_is_named_as_text_in_every_detail,
    delete_removes_the_semaphore_and_its_permits,
    lowering_the_limit_never_revokes_held_permits,
    raising_the_limit_frees_capacity_at_once,
    every_bound_is_enforced_with_a_problem,
    boundary_values_are_accepted,
    bad_routes_and_methods_are_problems,
    concurrent_acquires_grant_exactly_the_limit,
);

async fn create(app: &ApiClient, name: &str, limit: u32) {
    let response = app
        .put_json(&format!("/semaphores/{name}"), json!({ "limit": limit }))
        .await;
    assert_eq!(response.status(), 201, "create {name}");
}

/// Acquires and returns the permit body; panics unless 201.
async fn granted(app: &ApiClient, name: &str, body: Value) -> Value {
    let response = app.acquire(name, body).await;
    assert_eq!(response.status(), 201, "acquire on {name}");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let permit: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!(
            "/semaphores/{name}/permits/{}",
            permit["id"].as_str().unwrap()
        )
    );
    permit
}

async fn acquire_grants_until_the_limit_then_returns_429(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "api", 2).await;
    let first = granted(app, "api", json!({ "holder": "worker-1" })).await;
    assert_eq!(first["count"], 1);
    assert_eq!(first["holder"], "worker-1");
    assert_eq!(first["semaphore"], "api");
    granted(app, "api", json!({})).await;

    let refused = app.acquire("api", json!({ "ttl_ms": 5000 })).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");
    let problem = expect_problem(refused, 429).await;
    assert_eq!(problem["limit"], 2);
    assert_eq!(problem["held"], 2);
    assert_eq!(problem["available"], 0);

    let status = app.status("api").await;
    assert_eq!(
        (status["held"].as_u64(), status["available"].as_u64()),
        (Some(2), Some(0))
    );
}

async fn multi_unit_count_is_all_or_nothing(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "gpu", 5).await;
    granted(app, "gpu", json!({ "count": 3 })).await;
    let refused = app.acquire("gpu", json!({ "count": 3 })).await;
    let problem = expect_problem(refused, 429).await;
    assert_eq!(problem["held"], 3, "a refused acquire takes nothing");
    let two = granted(app, "gpu", json!({ "count": 2 })).await;
    assert_eq!(two["count"], 2);
    let status = app.status("gpu").await;
    assert_eq!(status["held"], 5);
    assert_eq!(status["available"], 0);
}

async fn count_above_the_limit_is_409(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "small", 2).await;
    let problem = expect_problem(app.acquire("small", json!({ "count": 3 })).await, 409).await;
    assert_eq!(problem["limit"], 2);
    let problem = expect_problem(
        app.acquire("fresh", json!({ "limit": 2, "count": 3 }))
            .await,
        409,
    )
    .await;
    assert_eq!(problem["limit"], 2);
    // Nothing was created or taken by the refused requests.
    assert_eq!(app.status("small").await["held"], 0);
    expect_problem(app.get("/semaphores/fresh").await, 404).await;
}

async fn expired_lease_frees_its_units(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "lease", 1).await;
    let short = granted(app, "lease", json!({ "ttl_ms": 150 })).await;
    expect_problem(app.acquire("lease", json!({})).await, 429).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    assert_eq!(
        app.status("lease").await["held"],
        0,
        "status sees the expiry"
    );
    expect_problem(app.get(&permit_path(&short)).await, 404).await;
    let next = granted(app, "lease", json!({})).await;
    assert_ne!(next["id"], short["id"]);
    expect_problem(app.delete(&permit_path(&short)).await, 404).await;
    assert_eq!(
        app.status("lease").await["held"],
        1,
        "a late release frees nothing"
    );
}

async fn refresh_extends_a_live_lease(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "renew", 1).await;
    let permit = granted(app, "renew", json!({ "ttl_ms": 400 })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = app
        .patch_json(&permit_path(&permit), json!({ "ttl_ms": 5000 }))
        .await;
    assert_eq!(response.status(), 200);
    let refreshed: Value = response.json().await.unwrap();
    assert_eq!(refreshed["id"], permit["id"]);
    assert_eq!(refreshed["fencing_token"], permit["fencing_token"]);
    assert!(refreshed["expires_at"].as_str() > permit["expires_at"].as_str());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        app.get(&permit_path(&permit)).await.status(),
        200,
        "outlived its first lease"
    );
    assert_eq!(app.status("renew").await["held"], 1);
}

async fn refresh_never_resurrects_an_expired_permit(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "dead", 1).await;
    let permit = granted(app, "dead", json!({ "ttl_ms": 100 })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = app
        .patch_json(&permit_path(&permit), json!({ "ttl_ms": 60000 }))
        .await;
    expect_problem(refused, 404).await;
    assert_eq!(app.status("dead").await["held"], 0);
    expect_problem(app.get(&permit_path(&permit)).await, 404).await;
}

async fn release_frees_units_and_a_second_release_is_404(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "rel", 1).await;
    let permit = granted(app, "rel", json!({})).await;
    assert_eq!(app.get(&permit_path(&permit)).await.status(), 200);
    assert_eq!(app.delete(&permit_path(&permit)).await.status(), 204);
    expect_problem(app.delete(&permit_path(&permit)).await, 404).await;
    expect_problem(app.get(&permit_path(&permit)).await, 404).await;
    assert_eq!(app.status("rel").await["held"], 0);
    granted(app, "rel", json!({})).await;
    // Releasing twice did not give back units twice.
    expect_problem(app.acquire("rel", json!({})).await, 429).await;
}

async fn idempotent_acquire_returns_the_same_permit(store: Store) {
    let app = &spawn_app(store).await;
    let send = |key: &'static str, body: Value| {
        app.client
            .post(app.url("/semaphores/idem/permits"))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let body = json!({ "limit": 3, "holder": "job-1" });
    let first = send("order-42", body.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    let retry = send("order-42", body.clone()).await.unwrap();
    assert_eq!(retry.status(), 200, "a retry is not a new permit");
    assert!(retry.headers().contains_key("location"));
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first);
    assert_eq!(app.status("idem").await["held"], 1);

    let other = send("order-42", json!({ "limit": 3, "holder": "job-2" }))
        .await
        .unwrap();
    let problem = expect_problem(other, 422).await;
    assert_eq!(
        problem["type"],
        "urn:permitd:problem:idempotency-key-reused"
    );

    assert_eq!(app.delete(&permit_path(&first)).await.status(), 204);
    let again = send("order-42", body).await.unwrap();
    let problem = expect_problem(again, 410).await;
    assert_eq!(problem["type"], "urn:permitd:problem:permit-ended");
    assert_eq!(app.status("idem").await["held"], 0, "never a second permit");

    let bad = app
        .client
        .post(app.url("/semaphores/idem/permits"))
        .header("Idempotency-Key", "has space")
        .send()
        .await
        .unwrap();
    expect_problem(bad, 400).await;
}

async fn fencing_tokens_strictly_increase_even_across_recreation(store: Store) {
    let app = &spawn_app(store).await;
    let mut last = 0;
    for round in 0..3 {
        for _ in 0..4 {
            let permit = granted(app, "fence", json!({ "limit": 2 })).await;
            let token = permit["fencing_token"].as_u64().unwrap();
            assert!(token > last, "token {token} after {last} in round {round}");
            last = token;
            assert_eq!(app.delete(&permit_path(&permit)).await.status(), 204);
        }
        assert_eq!(app.delete("/semaphores/fence").await.status(), 204);
    }
    // Tokens stay exact in JSON number precision (below 2^53).
    assert!(last < (1u64 << 53));
}

async fn conflicting_limit_is_409_and_same_limit_is_fine(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "shared", 3).await;
    let conflict = expect_problem(app.acquire("shared", json!({ "limit": 4 })).await, 409).await;
    assert_eq!(conflict["limit"], 3);
    granted(app, "shared", json!({ "limit": 3 })).await;

    let same = app
        .put_json("/semaphores/shared", json!({ "limit": 3 }))
        .await;
    assert_eq!(
        same.status(),
        200,
        "PUT with the current limit changes nothing"
    );
    let same: Value = same.json().await.unwrap();
    assert_eq!(
        (same["limit"].as_u64(), same["held"].as_u64()),
        (Some(3), Some(1))
    );

    let changed = app
        .put_json("/semaphores/shared", json!({ "limit": 4 }))
        .await;
    assert_eq!(changed.status(), 200);
    assert_eq!(changed.json::<Value>().await.unwrap()["limit"], 4);
    granted(app, "shared", json!({ "limit": 4 })).await;
}

async fn status_lists_holders_but_never_permit_ids(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "seen", 5).await;
    let a = granted(
        app,
        "seen",
        json!({ "holder": "alpha", "count": 2, "ttl_ms": 1000 }),
    )
    .await;
    let b = granted(app, "seen", json!({ "holder": "beta", "ttl_ms": 2000 })).await;
    let response = app.get("/semaphores/seen").await;
    let text = response.text().await.unwrap();
    for permit in [&a, &b] {
        assert!(
            !text.contains(permit["id"].as_str().unwrap()),
            "status leaked an id"
        );
    }
    let status: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["name"], "seen");
    assert_eq!(status["limit"], 5);
    assert_eq!(status["held"], 3);
    assert_eq!(status["available"], 2);
    assert_eq!(status["waiting"], 0);
    let holders = status["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 2);
    assert_eq!(holders[0]["holder"], "alpha", "soonest expiry first");
    assert_eq!(holders[0]["count"], 2);
    assert_eq!(holders[0]["expires_at"], a["expires_at"]);
    assert_eq!(holders[0]["acquired_at"], a["acquired_at"]);
    assert_eq!(holders[1]["holder"], "beta");
    for holder in holders {
        assert!(holder.get("id").is_none());
    }
}

async fn unknown_semaphore_is_404_everywhere(store: Store) {
    let app = &spawn_app(store).await;
    expect_problem(app.acquire("ghost", json!({})).await, 404).await;
    expect_problem(app.get("/semaphores/ghost").await, 404).await;
    expect_problem(app.delete("/semaphores/ghost").await, 404).await;
    let id = "/semaphores/ghost/permits/6f1c2b1e-8c4a-4f7e-9a53-0c2d6f1e9b7a";
    expect_problem(app.get(id).await, 404).await;
    expect_problem(app.patch_json(id, json!({ "ttl_ms": 1000 })).await, 404).await;
    expect_problem(app.delete(id).await, 404).await;
    // None of these created it.
    expect_problem(app.get("/semaphores/ghost").await, 404).await;
}

async fn a_missing_semaphore_is_named_as_text_in_every_detail(store: Store) {
    let app = &spawn_app(store).await;
    let plain = r#"semaphore "nope" does not exist"#;
    let detail = |problem: Value| problem["detail"].as_str().unwrap().to_owned();
    let status = expect_problem(app.get("/semaphores/nope").await, 404).await;
    assert_eq!(detail(status), plain);
    let delete = expect_problem(app.delete("/semaphores/nope").await, 404).await;
    assert_eq!(detail(delete), plain);
    let release = app
        .delete("/semaphores/nope/permits/6f1c2b1e-8c4a-4f7e-9a53-0c2d6f1e9b7a")
        .await;
    assert_eq!(detail(expect_problem(release, 404).await), plain);
    let acquire = expect_problem(app.acquire("nope", json!({})).await, 404).await;
    assert_eq!(
        detail(acquire),
        format!("{plain}; give a limit to create it")
    );
}

async fn delete_removes_the_semaphore_and_its_permits(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "gone", 1).await;
    let permit = granted(app, "gone", json!({ "ttl_ms": 60000 })).await;
    assert_eq!(app.delete("/semaphores/gone").await.status(), 204);
    expect_problem(app.get("/semaphores/gone").await, 404).await;
    expect_problem(app.get(&permit_path(&permit)).await, 404).await;
    create(app, "gone", 1).await;
    assert_eq!(
        app.status("gone").await["held"],
        0,
        "old permits are not carried over"
    );
    expect_problem(app.get(&permit_path(&permit)).await, 404).await;
    granted(app, "gone", json!({})).await;
}

async fn lowering_the_limit_never_revokes_held_permits(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "shrink", 3).await;
    let permits = [
        granted(app, "shrink", json!({})).await,
        granted(app, "shrink", json!({})).await,
        granted(app, "shrink", json!({})).await,
    ];
    let lowered = app
        .put_json("/semaphores/shrink", json!({ "limit": 1 }))
        .await;
    assert_eq!(lowered.status(), 200);
    let lowered: Value = lowered.json().await.unwrap();
    assert_eq!(
        (lowered["held"].as_u64(), lowered["available"].as_u64()),
        (Some(3), Some(0))
    );
    for permit in &permits {
        assert_eq!(
            app.get(&permit_path(permit)).await.status(),
            200,
            "still held"
        );
    }
    assert_eq!(app.delete(&permit_path(&permits[0])).await.status(), 204);
    assert_eq!(app.delete(&permit_path(&permits[1])).await.status(), 204);
    expect_problem(app.acquire("shrink", json!({})).await, 429).await;
    assert_eq!(app.delete(&permit_path(&permits[2])).await.status(), 204);
    granted(app, "shrink", json!({})).await;
}

async fn raising_the_limit_frees_capacity_at_once(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "grow", 1).await;
    granted(app, "grow", json!({})).await;
    expect_problem(app.acquire("grow", json!({})).await, 429).await;
    assert_eq!(
        app.put_json("/semaphores/grow", json!({ "limit": 2 }))
            .await
            .status(),
        200
    );
    granted(app, "grow", json!({})).await;
}

async fn every_bound_is_enforced_with_a_problem(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "bounds", 2).await;
    let long_name = "n".repeat(129);
    for name in [
        long_name.as_str(),
        "bad%20name",
        "semi;colon",
        "%7Bbrace%7D",
    ] {
        expect_problem(app.get(&format!("/semaphores/{name}")).await, 400).await;
        expect_problem(app.acquire(name, json!({ "limit": 1 })).await, 400).await;
    }
    for body in [
        json!({ "limit": 0 }),
        json!({ "limit": 1_000_001 }),
        json!({ "limit": -1 }),
        json!({ "limit": "five" }),
        json!({ "limit": 1.5 }),
        json!({}),
        json!({ "limit": 2, "extra": true }),
    ] {
        expect_problem(app.put_json("/semaphores/bounds", body).await, 400).await;
    }
    for body in [
        json!({ "count": 0 }),
        json!({ "count": 1_000_001 }),
        json!({ "ttl_ms": 99 }),
        json!({ "ttl_ms": 3_600_001 }),
        json!({ "wait_ms": 60_001 }),
        json!({ "wait_ms": -5 }),
        json!({ "holder": "h".repeat(129) }),
        json!({ "holder": "line\nbreak" }),
        json!({ "holder": 7 }),
        json!({ "ttl": 1000 }),
        json!([1, 2]),
    ] {
        expect_problem(app.acquire("bounds", body).await, 400).await;
    }
    let raw = |body: &'static str| {
        app.client
            .post(app.url("/semaphores/bounds/permits"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_problem(raw("{not json").await.unwrap(), 400).await;
    expect_problem(raw("\u{0}").await.unwrap(), 400).await;
    // A form feed is ASCII whitespace but not JSON's (schemathesis found
    // "\x0c" read as an empty body, and so as `{}`).
    expect_problem(raw("\u{c}").await.unwrap(), 400).await;
    expect_problem(raw("\u{c}null").await.unwrap(), 400).await;
    let huge = app
        .client
        .post(app.url("/semaphores/bounds/permits"))
        .body(format!("{{\"holder\": \"{}\"}}", "x".repeat(17 * 1024)))
        .send()
        .await
        .unwrap();
    expect_problem(huge, 413).await;

    let permit = granted(app, "bounds", json!({})).await;
    let path = permit_path(&permit);
    for body in [
        json!({ "ttl_ms": 50 }),
        json!({ "ttl_ms": 3_600_001 }),
        json!({ "ttl_ms": "x" }),
    ] {
        expect_problem(app.patch_json(&path, body).await, 400).await;
    }
    expect_problem(app.get("/semaphores/bounds/permits/not-a-uuid").await, 400).await;
    expect_problem(app.delete("/semaphores/bounds/permits/123").await, 400).await;
    // None of the refused requests changed anything.
    let status = app.status("bounds").await;
    assert_eq!(
        (status["limit"].as_u64(), status["held"].as_u64()),
        (Some(2), Some(1))
    );
}

async fn boundary_values_are_accepted(store: Store) {
    let app = &spawn_app(store).await;
    let name = "b".repeat(128);
    let permit = granted(
        app,
        &name,
        json!({ "limit": 1_000_000, "count": 1_000_000, "ttl_ms": 3_600_000,
                "wait_ms": 0, "holder": "é".repeat(128) }),
    )
    .await;
    assert_eq!(permit["count"], 1_000_000);
    let refreshed = app
        .patch_json(&permit_path(&permit), json!({ "ttl_ms": 100 }))
        .await;
    assert_eq!(refreshed.status(), 200, "100 ms is the shortest lease");
    let odd = "A.z_0-9:x";
    granted(app, odd, json!({ "limit": 1 })).await;
    // A body with no fields, or no body at all, takes the defaults.
    let bare = app
        .client
        .post(app.url(&format!("/semaphores/{odd}/permits")))
        .send()
        .await
        .unwrap();
    expect_problem(bare, 429).await;
}

async fn bad_routes_and_methods_are_problems(store: Store) {
    let app = &spawn_app(store).await;
    expect_problem(app.get("/nope").await, 404).await;
    expect_problem(app.get("/semaphore").await, 404).await;
    let post = app
        .client
        .post(app.url("/semaphores/x"))
        .send()
        .await
        .unwrap();
    expect_problem(post, 405).await;
    let put = app
        .client
        .put(app.url("/semaphores/x/permits"))
        .send()
        .await
        .unwrap();
    expect_problem(put, 405).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
}

async fn concurrent_acquires_grant_exactly_the_limit(store: Store) {
    let app = &spawn_app(store).await;
    create(app, "race", 10).await;
    let attempts = (0..200).map(|_| app.acquire("race", json!({ "ttl_ms": 60000 })));
    let responses = futures::future::join_all(attempts).await;
    let mut granted_ids = HashSet::new();
    let mut tokens = HashSet::new();
    let mut refused = 0;
    for response in responses {
        match response.status().as_u16() {
            201 => {
                let permit: Value = response.json().await.unwrap();
                granted_ids.insert(permit["id"].as_str().unwrap().to_owned());
                tokens.insert(permit["fencing_token"].as_u64().unwrap());
            }
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(granted_ids.len(), 10, "exactly the limit is granted");
    assert_eq!(tokens.len(), 10, "every permit has its own fencing token");
    assert_eq!(refused, 190);
    assert_eq!(app.status("race").await["held"], 10);
}
