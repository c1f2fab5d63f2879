//! Running permitd in production: metrics that move, request ids, bearer
//! tokens, request bounds, the healthcheck subcommand, and logs that never
//! show a secret.
//!
//! The metrics recorder is process-wide, shared by every app in this test
//! binary, and tests run in parallel: metric assertions compare a scrape
//! before with one after, on series only the test itself touches or with
//! "at least" deltas.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::{
    ApiClient, BinaryBuilder, RedisServer, Secret, Store, TestApp, expect_problem, free_port,
    on_each_store, permitd_command, spawn_app, spawn_app_with,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------- metrics

/// One scrape of `/metrics`, as `name{sorted labels}` -> value.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    async fn of(app: &ApiClient) -> Self {
        let response = app.get("/metrics").await;
        assert_eq!(response.status(), 200);
        Self::parse(&response.text().await.unwrap())
    }

    fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let key = match series.split_once('{') {
                None => series.to_owned(),
                Some((name, labels)) => {
                    let mut pairs: Vec<&str> = labels.trim_end_matches('}').split("\",").collect();
                    for pair in &mut pairs {
                        *pair = pair.trim_end_matches('"');
                    }
                    pairs.sort_unstable();
                    format!("{name}{{{}}}", pairs.join(","))
                }
            };
            samples.insert(key, value.parse().expect("a number"));
        }
        Self(samples)
    }

    /// `{labels}` as the keys of a scrape spell them (empty for none).
    fn labels(labels: &[(&str, &str)]) -> String {
        let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}")).collect();
        pairs.sort_unstable();
        if pairs.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", pairs.join(","))
        }
    }

    /// The value of `name` with exactly these labels; 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = format!("{name}{}", Self::labels(labels));
        self.0.get(&key).copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.0
            .keys()
            .any(|k| k == name || k.starts_with(&format!("{name}{{")))
    }
}

/// How much a series grew between two scrapes.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

on_each_store!(metrics_move_as_requests_are_made);

async fn metrics_move_as_requests_are_made(store: Store) {
    let app = &spawn_app(store).await;
    let name = unique("metered");
    let before = Scrape::of(app).await;

    let first = app.acquire(&name, json!({ "limit": 1 })).await;
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let permit: Value = first.json().await.unwrap();
    assert_eq!(app.acquire(&name, json!({})).await.status(), 429);
    assert_eq!(
        app.acquire(&name, json!({ "wait_ms": 50 })).await.status(),
        429
    );
    assert_eq!(
        app.acquire(&name, json!({ "limit": 2 })).await.status(),
        409
    );
    assert_eq!(
        app.acquire(&unique("absent"), json!({})).await.status(),
        404
    );
    assert_eq!(
        app.acquire(&name, json!({ "count": 0 })).await.status(),
        400
    );
    assert_eq!(
        app.patch_json(&location, json!({ "ttl_ms": 150 }))
            .await
            .status(),
        200
    );
    // The refreshed lease runs out; the next acquire sweeps it: one expiry.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = app.acquire(&name, json!({})).await;
    assert_eq!(second.status(), 201);
    assert_eq!(app.patch_json(&location, json!({})).await.status(), 404);
    let second_location = second.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(app.delete(&second_location).await.status(), 204);
    assert_eq!(app.delete(&second_location).await.status(), 404);

    let after = Scrape::of(app).await;
    let acquires = |outcome| {
        delta(
            &before,
            &after,
            "permitd_acquires_total",
            &[("outcome", outcome)],
        )
    };
    assert!(acquires("granted") >= 2.0);
    assert!(acquires("unavailable") >= 1.0);
    assert!(acquires("timed_out") >= 1.0);
    assert!(acquires("conflict") >= 1.0);
    assert!(acquires("not_found") >= 1.0);
    assert!(acquires("invalid") >= 1.0);
    let by = |metric, outcome| delta(&before, &after, metric, &[("outcome", outcome)]);
    assert!(by("permitd_refreshes_total", "refreshed") >= 1.0);
    assert!(by("permitd_refreshes_total", "gone") >= 1.0);
    assert!(by("permitd_releases_total", "released") >= 1.0);
    assert!(by("permitd_releases_total", "gone") >= 1.0);
    assert!(delta(&before, &after, "permitd_lease_expiries_total", &[]) >= 1.0);
    let route = "/semaphores/{name}/permits";
    let requests = |method, status| {
        delta(
            &before,
            &after,
            "permitd_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert!(requests("POST", "201") >= 1.0);
    assert!(requests("POST", "429") >= 2.0);
    assert!(
        delta(
            &before,
            &after,
            "permitd_http_request_duration_seconds_count",
            &[("route", route), ("method", "POST")],
        ) >= 7.0
    );

    if store == Store::Redis {
        let calls = |call| {
            delta(
                &before,
                &after,
                "permitd_redis_call_duration_seconds_count",
                &[("call", call)],
            )
        };
        assert!(calls("acquire") >= 6.0);
        assert!(calls("refresh") >= 2.0);
        assert!(calls("release") >= 2.0);
        for gauge in [
            "permitd_redis_pool_max_connections",
            "permitd_redis_pool_connections",
            "permitd_redis_pool_in_use_connections",
            "permitd_redis_pool_waiting_calls",
            "permitd_redis_wake_subscribed",
        ] {
            assert!(after.has(gauge), "{gauge} missing");
        }
    }

    // Low cardinality: neither the semaphore nor a permit id is a label.
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(!text.contains(&name), "semaphore name in metrics");
    assert!(!text.contains(permit["id"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failures_are_counted() {
    let app = spawn_app_with(Store::Redis, |settings| settings.redis_timeout_ms = 500).await;
    let before = Scrape::of(&app).await;
    app.redis().kill();
    expect_problem(app.get("/semaphores/anything").await, 503).await;
    let after = Scrape::of(&app).await;
    let failed: f64 = ["timeout", "unavailable"]
        .iter()
        .map(|kind| {
            delta(
                &before,
                &after,
                "permitd_redis_errors_total",
                &[("call", "status"), ("kind", kind)],
            )
        })
        .sum();
    assert!(failed >= 1.0, "no Redis error counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiters_gauge_counts_long_polls_in_progress() {
    let app = spawn_app(Store::Memory).await;
    let name = unique("gauge");
    let held = app.acquire(&name, json!({ "limit": 1 })).await;
    assert_eq!(held.status(), 201);
    let location = held.headers()["location"].to_str().unwrap().to_owned();
    let waiter = app.acquire_in_background(&name, json!({ "wait_ms": 10_000 }));
    app.until_waiting(&name, 1).await;
    // Other tests of this binary may wait too, so at least this one.
    assert!(Scrape::of(&app).await.get("permitd_waiters", &[]) >= 1.0);
    assert_eq!(app.delete(&location).await.status(), 204);
    assert_eq!(waiter.await.unwrap().status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_with_a_closed_label_set_are_exported_at_0_from_the_first_scrape() {
    // Redis is down from the start: nothing has counted anything yet.
    let app = BinaryBuilder::new()
        .arg("--redis-url")
        .arg(&format!("redis://127.0.0.1:{}", free_port()))
        .arg("--redis-timeout-ms")
        .arg("200")
        .start_alive()
        .await;
    let first = Scrape::of(&app).await;
    let at_zero = |name: &str, labels: &[(&str, &str)]| {
        let key = format!("{name}{}", Scrape::labels(labels));
        assert_eq!(first.0.get(&key), Some(&0.0), "{key} is not exported at 0");
    };
    for outcome in [
        "granted",
        "replayed",
        "unavailable",
        "timed_out",
        "not_found",
        "conflict",
        "too_large",
        "idempotency_mismatch",
        "idempotency_in_flight",
        "permit_ended",
        "invalid",
        "error",
    ] {
        at_zero("permitd_acquires_total", &[("outcome", outcome)]);
    }
    for outcome in ["refreshed", "gone"] {
        at_zero("permitd_refreshes_total", &[("outcome", outcome)]);
    }
    for outcome in ["released", "gone"] {
        at_zero("permitd_releases_total", &[("outcome", outcome)]);
    }
    at_zero("permitd_lease_expiries_total", &[]);
    at_zero("permitd_acquire_wait_seconds_count", &[]);
    at_zero("permitd_acquire_wait_seconds_bucket", &[("le", "+Inf")]);
    at_zero("permitd_handoff_seconds_count", &[]);
    at_zero("permitd_redis_wake_subscribed", &[]);
    for kind in ["timeout", "unavailable", "internal"] {
        at_zero(
            "permitd_redis_errors_total",
            &[("call", "acquire"), ("kind", kind)],
        );
    }
    at_zero(
        "permitd_redis_call_duration_seconds_count",
        &[("call", "release")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_semaphores_have_gauges_of_their_own_and_no_others() {
    let app = BinaryBuilder::new()
        .env("PERMITD_METRICS_SEMAPHORES", "gauged,gauged-absent")
        .start()
        .await;
    assert_eq!(
        app.put_json("/semaphores/gauged", json!({ "limit": 3 }))
            .await
            .status(),
        201
    );
    assert_eq!(
        app.acquire("gauged", json!({ "count": 2 })).await.status(),
        201
    );
    assert_eq!(
        app.acquire("unlisted", json!({ "limit": 1 }))
            .await
            .status(),
        201
    );
    let waiter = app.acquire_in_background("gauged", json!({ "count": 2, "wait_ms": 10_000 }));
    app.until_waiting("gauged", 1).await;

    let scrape = Scrape::of(&app).await;
    let gauged = [("semaphore", "gauged")];
    assert_eq!(scrape.get("permitd_semaphore_limit", &gauged), 3.0);
    assert_eq!(scrape.get("permitd_semaphore_held", &gauged), 2.0);
    assert_eq!(scrape.get("permitd_semaphore_waiting", &gauged), 1.0);
    let absent = [("semaphore", "gauged-absent")];
    for gauge in ["permitd_semaphore_limit", "permitd_semaphore_held"] {
        assert_eq!(
            scrape.0.get(&format!("{gauge}{}", Scrape::labels(&absent))),
            Some(&0.0)
        );
    }
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !text.contains("unlisted"),
        "an unlisted name became a label"
    );
    waiter.abort();
}

// ---------------------------------------------------------------- request ids

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_echoed_or_generated() {
    let app = spawn_app(Store::Memory).await;
    let echoed = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-123");

    let generated = app.get("/semaphores/unknown").await;
    assert_eq!(generated.status(), 404);
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "generated id {id:?}");

    // Junk (here: far too long) is replaced, not copied into every log line.
    let junk = "x".repeat(500);
    let replaced = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", &junk)
        .send()
        .await
        .unwrap();
    let id = replaced.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, junk);
    assert!(uuid::Uuid::parse_str(id).is_ok());
}

// ---------------------------------------------------------------- access control

const TOKEN: &str = "s3cr3t-token-for-tests-4b1d";
const OTHER_TOKEN: &str = "second-token-from-the-file-77";
const WRONG_TOKEN: &str = "a-guess-that-is-not-a-token";

async fn app_with_tokens(metrics_public: bool) -> TestApp {
    spawn_app_with(Store::Memory, move |settings| {
        settings.api_tokens = vec![Secret::new(TOKEN)];
        settings.metrics_public = metrics_public;
    })
    .await
}

async fn unauthorized(response: reqwest::Response) -> String {
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"permitd\""),
        "{challenge}"
    );
    expect_problem(response, 401).await;
    challenge
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_configured_a_request_without_one_is_a_401_problem() {
    let app = app_with_tokens(true).await;
    let challenge = unauthorized(app.acquire("locked", json!({ "limit": 1 })).await).await;
    assert!(!challenge.contains("error="));
    unauthorized(app.get("/semaphores/locked").await).await;
    unauthorized(app.get("/demo").await).await;
    // Unknown routes too: nothing is learnt about the API without a token.
    unauthorized(app.get("/no-such-route").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_a_401_problem_that_says_so() {
    let app = app_with_tokens(true).await;
    for header in [
        "Bearer wrong-token".to_owned(),
        format!("Bearer {TOKEN}x"),
        format!("Basic {TOKEN}"),
        "Bearer".to_owned(),
    ] {
        let response = app
            .client
            .put(app.url("/semaphores/locked"))
            .header("authorization", &header)
            .json(&json!({ "limit": 1 }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{header}");
        let challenge = unauthorized(response).await;
        if header.starts_with("Bearer ") {
            assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_token_opens_the_api() {
    let app = app_with_tokens(true).await;
    let created = app
        .client
        .post(app.url("/semaphores/open-sesame/permits"))
        .bearer_auth(TOKEN)
        .json(&json!({ "limit": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // The scheme is case-insensitive.
    let status = app
        .client
        .get(app.url("/semaphores/open-sesame"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    // The demo calls its built-in upstream (this server) with a token too.
    let demo = app
        .client
        .get(app.url("/demo?requests=2&limit=1&delay_ms=0"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(demo.status(), 200);
    let report: Value = demo.json().await.unwrap();
    for result in report["results"].as_array().unwrap() {
        assert_eq!(result["status"], 200, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_stay_open_with_tokens_configured() {
    let app = app_with_tokens(true).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(app.get("/metrics").await.status(), 200);

    let closed = app_with_tokens(false).await;
    assert_eq!(closed.get("/healthz").await.status(), 200);
    assert_eq!(closed.get("/readyz").await.status(), 200);
    unauthorized(closed.get("/metrics").await).await;
    let scraped = closed
        .client
        .get(closed.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
}

// A per-semaphore gauge names a semaphore and tells its state, so it is
// shown only to a caller that may read that semaphore (issue 22, item 4).
// The recorder is shared by every app in this binary, so these tests look
// only for the presence or absence of these names' lines, never at values.

const GAUGE_ADMIN: &str = "gauge-admin-tok-8c31";
const TEAM_A_READER: &str = "gauge-team-a-tok-2f7d";
const GAUGES: [&str; 3] = [
    "permitd_semaphore_limit",
    "permitd_semaphore_held",
    "permitd_semaphore_waiting",
];

/// An app gauging `team-a.x` and `team-b.payroll`, with an `admin` token and
/// a `read@team-a.` one (or none at all, when `tokens` is false).
async fn app_with_gauges(tokens: bool, metrics_public: bool) -> TestApp {
    spawn_app_with(Store::Memory, move |settings| {
        if tokens {
            settings.api_tokens = vec![
                Secret::new(format!("admin:{GAUGE_ADMIN}")),
                Secret::new(format!("read@team-a.:{TEAM_A_READER}")),
            ];
        }
        settings.metrics_public = metrics_public;
        settings.metrics_semaphores = vec!["team-a.x".into(), "team-b.payroll".into()];
    })
    .await
}

/// `/metrics` as a caller with this token (or none) sees it.
async fn metrics_page(app: &TestApp, token: Option<&str>) -> String {
    let mut request = app.client.get(app.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The page's per-semaphore gauge samples for `name`.
fn gauge_lines<'a>(page: &'a str, name: &str) -> Vec<&'a str> {
    let labels = format!("{{semaphore=\"{name}\"}} ");
    page.lines()
        .filter(|line| {
            GAUGES.iter().any(|gauge| {
                line.strip_prefix(gauge)
                    .is_some_and(|l| l.starts_with(&labels))
            })
        })
        .collect()
}

fn assert_gauged(page: &str, name: &str) {
    let lines = gauge_lines(page, name);
    assert_eq!(lines.len(), 3, "{name}'s three gauges, got {lines:?}");
}

fn assert_not_gauged(page: &str, name: &str) {
    let lines = gauge_lines(page, name);
    assert!(lines.is_empty(), "{name}'s gauges shown: {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_metrics_show_a_semaphore_gauges_only_to_a_token_that_may_read_it() {
    let app = app_with_gauges(true, true).await;
    let created = app
        .client
        .put(app.url("/semaphores/team-b.payroll"))
        .bearer_auth(GAUGE_ADMIN)
        .json(&json!({ "limit": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    unauthorized(app.get("/semaphores/team-b.payroll").await).await;

    // Anonymous, and with a wrong token (ignored on a public page): the rest
    // of the page, without any semaphore's gauges.
    for token in [None, Some(WRONG_TOKEN)] {
        let page = metrics_page(&app, token).await;
        assert_not_gauged(&page, "team-b.payroll");
        assert_not_gauged(&page, "team-a.x");
        assert!(page.contains("permitd_acquires_total{"), "{page}");
        assert!(
            page.contains("# TYPE permitd_semaphore_held gauge"),
            "{page}"
        );
    }
    let admin = metrics_page(&app, Some(GAUGE_ADMIN)).await;
    assert_gauged(&admin, "team-b.payroll");
    assert_gauged(&admin, "team-a.x");
    let team_a = metrics_page(&app, Some(TEAM_A_READER)).await;
    assert_gauged(&team_a, "team-a.x");
    assert_not_gauged(&team_a, "team-b.payroll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefixed_token_sees_only_the_gauges_of_the_names_it_may_read() {
    let app = app_with_gauges(true, false).await;
    let refused = app
        .client
        .get(app.url("/semaphores/team-b.payroll"))
        .bearer_auth(TEAM_A_READER)
        .send()
        .await
        .unwrap();
    expect_problem(refused, 403).await;
    let page = metrics_page(&app, Some(TEAM_A_READER)).await;
    assert_gauged(&page, "team-a.x");
    assert_not_gauged(&page, "team-b.payroll");
    assert!(page.contains("permitd_acquires_total{"), "{page}");
    assert_gauged(
        &metrics_page(&app, Some(GAUGE_ADMIN)).await,
        "team-b.payroll",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_every_listed_semaphore_has_its_gauges() {
    let app = app_with_gauges(false, true).await;
    let page = metrics_page(&app, None).await;
    assert_gauged(&page, "team-b.payroll");
    assert_gauged(&page, "team-a.x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_everything_is_open() {
    let app = spawn_app(Store::Memory).await;
    assert_eq!(
        app.acquire("free-for-all", json!({ "limit": 1 }))
            .await
            .status(),
        201
    );
    assert_eq!(app.get("/semaphores/free-for-all").await.status(), 200);
    assert_eq!(app.get("/metrics").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_can_come_from_a_file() {
    let dir = std::env::temp_dir().join(unique("permitd-tokens"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens");
    std::fs::write(
        &file,
        format!("# rotated 2026-11\n\n{OTHER_TOKEN}\n  {TOKEN}  \n"),
    )
    .unwrap();
    let app = spawn_app_with(Store::Memory, move |settings| {
        settings.api_token_file = Some(file.clone());
    })
    .await;
    for token in [TOKEN, OTHER_TOKEN] {
        let response = app
            .client
            .put(app.url("/semaphores/from-file"))
            .bearer_auth(token)
            .json(&json!({ "limit": 1 }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{token}");
    }
    unauthorized(app.get("/semaphores/from-file").await).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_says_where_a_token_is_needed() {
    let open = spawn_app(Store::Memory).await;
    let doc: Value = open.get("/openapi.json").await.json().await.unwrap();
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&"http".into(), &"bearer".into())
    );
    // A server without tokens requires none.
    assert!(doc["paths"]["/semaphores/{name}"]["put"]["security"].is_null());

    // With tokens, the document and Swagger UI stay readable without one...
    let locked = app_with_tokens(true).await;
    assert_eq!(locked.get("/docs/").await.status(), 200);
    let response = locked.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    // ...and say which operations need it, with the scope, and their 401.
    let acquire = &doc["paths"]["/semaphores/{name}/permits"]["post"];
    assert_eq!(acquire["security"], json!([{ "bearer": ["use"] }]));
    assert!(acquire["responses"]["401"]["headers"]["WWW-Authenticate"].is_object());
    for (path, item) in doc["paths"].as_object().unwrap() {
        let open = matches!(
            path.as_str(),
            "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/openapi.yaml"
        );
        for (method, operation) in item.as_object().unwrap() {
            assert_eq!(
                operation["security"].is_null(),
                open,
                "{method} {path}: security {}",
                operation["security"]
            );
        }
    }
}

// ---------------------------------------------------------------- request bounds

async fn app_with_timeout(timeout_ms: u64, store: Store) -> TestApp {
    spawn_app_with(store, move |settings| {
        settings.request_timeout_ms = timeout_ms;
        settings.redis_timeout_ms = 5_000;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_longer_than_the_request_timeout_still_succeeds() {
    let app = app_with_timeout(300, Store::Memory).await;
    let held = app.acquire("patient", json!({ "limit": 1 })).await;
    let location = held.headers()["location"].to_str().unwrap().to_owned();
    let waiter = app.acquire_in_background("patient", json!({ "wait_ms": 3_000 }));
    // Well past the 300 ms request timeout, the wait is still on.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(app.delete(&location).await.status(), 204);
    assert_eq!(waiter.await.unwrap().status, 201);

    // And a wait that runs out is the usual 429, not a timeout.
    let full = app.acquire("patient", json!({ "wait_ms": 700 })).await;
    expect_problem(full, 429).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_timeout_gets_a_503_problem() {
    let app = app_with_timeout(200, Store::Memory).await;
    let started = Instant::now();
    let slow = app.get("/demo/upstream?delay_ms=3000").await;
    assert!(started.elapsed() < Duration::from_secs(2), "it hung");
    assert!(slow.headers().contains_key("retry-after"));
    let problem = expect_problem(slow, 503).await;
    assert_eq!(problem["type"], "urn:permitd:problem:request-timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_cut_off_by_the_request_timeout() {
    let app = app_with_timeout(300, Store::Redis).await;
    assert_eq!(
        app.put_json("/semaphores/stall", json!({ "limit": 1 }))
            .await
            .status(),
        201
    );
    // Redis stops answering for 2 s; the Redis timeout (5 s) is longer than
    // the request timeout, so the request timeout is what answers.
    let paused = app.redis().command(&["CLIENT", "PAUSE", "2000", "ALL"]);
    assert!(paused.is_ok(), "{paused:?}");
    let started = Instant::now();
    let stalled = app.get("/semaphores/stall").await;
    assert!(started.elapsed() < Duration::from_millis(1_500), "it hung");
    let problem = expect_problem(stalled, 503).await;
    assert_eq!(problem["type"], "urn:permitd:problem:request-timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_limit_is_a_setting() {
    let app = spawn_app_with(Store::Memory, |settings| settings.max_body_bytes = 64).await;
    let big = json!({ "limit": 1, "holder": "h".repeat(100) });
    let problem = expect_problem(app.acquire("bounded", big).await, 413).await;
    assert!(problem["detail"].as_str().unwrap().contains("64 bytes"));
    assert_eq!(
        app.acquire("bounded", json!({ "limit": 1 })).await.status(),
        201
    );
}

// ---------------------------------------------------------------- the binary

async fn healthcheck(args: &[&str]) -> bool {
    permitd_command()
        .arg("healthcheck")
        .args(args)
        .args(["--timeout-ms", "1000"])
        .env_remove("PERMITD_URL")
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap()
        .success()
}

/// `healthcheck --url` takes the base URL, as `run --url` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_subcommand_exits_0_only_when_healthy() {
    let app = spawn_app(Store::Memory).await;
    let url = app.url("");
    let closed = format!("http://127.0.0.1:{}", free_port());
    assert!(
        healthcheck(&["--url", &url]).await,
        "a running server is healthy"
    );
    assert!(healthcheck(&["--url", &url, "--ready"]).await, "and ready");
    assert!(
        !healthcheck(&["--url", &closed]).await,
        "nothing listening is unhealthy"
    );
    assert!(!healthcheck(&["--url", &closed, "--ready"]).await);
}

/// Each subcommand takes its own flags only: a server flag given to a
/// client command is refused (it used to be accepted and ignored), and its
/// help lists none of them. Bare `permitd` still takes them.
#[tokio::test]
async fn a_subcommand_refuses_the_servers_flags() {
    let help = permitd_command()
        .args(["run", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("--semaphore"), "{help}");
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .collect();
    for server_flag in ["listen", "redis-url", "api-token", "max-wait-ms"] {
        assert!(
            !flags.iter().any(|f| f.starts_with(server_flag)),
            "run --help lists {server_flag}"
        );
    }
    let refused = permitd_command()
        .args(["run", "--url", "http://127.0.0.1:9", "--semaphore", "s"])
        .args(["--redis-url", "redis://nowhere:1", "--", "true"])
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(64), "{refused:?}");
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(stderr.contains("--redis-url"), "{stderr}");
    let healthcheck = permitd_command()
        .args(["healthcheck", "--listen", "127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert_eq!(healthcheck.status.code(), Some(2), "{healthcheck:?}");
    let bare = permitd_command()
        .args(["--listen", "127.0.0.1:0", "--max-wait-ms", "1000", "--help"])
        .output()
        .await
        .unwrap();
    assert!(bare.status.success(), "{bare:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    const PASSWORD: &str = "redis-pa55word-never-logged";
    let redis = RedisServer::start();
    let set = redis.command(&["CONFIG", "SET", "requirepass", PASSWORD]);
    assert!(set.is_ok(), "{set:?}");
    let redis_url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port());

    let log_path = std::env::temp_dir().join(unique("permitd-log"));
    let log = std::fs::File::create(&log_path).unwrap();
    // Everything permitd and its libraries log, in both formats' worst case.
    let mut process = BinaryBuilder::new()
        .arg("--log-format")
        .arg("json")
        .env("REDIS_URL", &redis_url)
        .env("PERMITD_API_TOKENS", &format!("{TOKEN},{OTHER_TOKEN}"))
        .env("RUST_LOG", "trace")
        .log_to(log)
        .start()
        .await;
    let client = &process.client;
    let granted = client
        .post(process.url("/semaphores/span-named-semaphore/permits"))
        .bearer_auth(TOKEN)
        .header("x-request-id", "req-id-seen-in-logs")
        .json(&json!({ "limit": 1, "holder": "log-test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 201);
    assert_eq!(granted.headers()["x-request-id"], "req-id-seen-in-logs");
    let wrong = client
        .get(process.url("/semaphores/span-named-semaphore"))
        .bearer_auth(WRONG_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // A Redis failure is logged too, with the store's error text.
    redis.kill();
    let failed = client
        .get(process.url("/semaphores/span-named-semaphore"))
        .bearer_auth(OTHER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 503);
    process.kill();

    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        logs.contains("req-id-seen-in-logs"),
        "request id not logged"
    );
    assert!(
        logs.contains(r#""semaphore":"span-named-semaphore""#),
        "semaphore name not in the span"
    );
    assert!(
        logs.contains("redis://:***@127.0.0.1"),
        "the Redis URL is logged, redacted"
    );
    for secret in [PASSWORD, TOKEN, OTHER_TOKEN, WRONG_TOKEN] {
        assert!(!logs.contains(secret), "{secret} appeared in the logs");
    }
}

// ---------------------------------------------------------------- trace context

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_names_the_trace_in_every_log_line_and_in_the_demos_calls() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    // An upstream that records the traceparent of every call it gets.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;
    let seen: Seen = Seen::default();
    let upstream = axum::Router::new()
        .route(
            "/ok",
            axum::routing::get(
                |axum::extract::State(seen): axum::extract::State<Seen>,
                 headers: axum::http::HeaderMap| async move {
                    let header = headers
                        .get("traceparent")
                        .map(|v| v.to_str().unwrap().to_owned());
                    seen.lock().unwrap().push(header.unwrap_or_default());
                    "ok"
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });

    let log_path = std::env::temp_dir().join(unique("permitd-trace-log"));
    let mut process = BinaryBuilder::new()
        .arg("--log-format")
        .arg("json")
        .arg("--demo-allowed-hosts")
        .arg(&upstream_addr.to_string())
        .env("RUST_LOG", "permitd=debug")
        .log_to(std::fs::File::create(&log_path).unwrap())
        .start()
        .await;
    let traced = process
        .client
        .get(process.url(&format!("/demo?requests=2&url=http://{upstream_addr}/ok")))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("x-request-id", "traced-request")
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 200);
    // An invalid traceparent (upper-case hex) is ignored: a new trace.
    let invalid = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let untraced = process
        .client
        .get(process.url("/semaphores/no-such-one"))
        .header("traceparent", &invalid)
        .header("x-request-id", "untraced-request")
        .send()
        .await
        .unwrap();
    assert_eq!(untraced.status(), 404);
    process.kill();

    // The demo's calls carried a child: same trace, new parent ids, flags kept.
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for call in &calls {
        let fields: Vec<&str> = call.split('-').collect();
        assert_eq!(fields.len(), 4, "{call}");
        assert_eq!(
            (fields[0], fields[1], fields[3]),
            ("00", TRACE, "01"),
            "{call}"
        );
        assert_eq!(fields[2].len(), 16, "{call}");
        assert_ne!(fields[2], PARENT, "{call}");
    }
    assert_ne!(calls[0], calls[1], "each call has its own parent id");

    // Every log line of each request carries its trace id.
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    let trace_ids_of = |request_id: &str| -> Vec<String> {
        logs.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["span"]["request_id"] == request_id)
            .map(|line| line["span"]["trace_id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let traced_lines = trace_ids_of("traced-request");
    assert!(traced_lines.len() >= 2, "{logs}");
    assert!(
        traced_lines.iter().all(|id| id == TRACE),
        "{traced_lines:?}"
    );
    let untraced_lines = trace_ids_of("untraced-request");
    assert!(!untraced_lines.is_empty(), "{logs}");
    let fresh = &untraced_lines[0];
    assert!(
        fresh.len() == 32 && fresh.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fresh}"
    );
    assert!(fresh != TRACE && untraced_lines.iter().all(|id| id == fresh));
}
