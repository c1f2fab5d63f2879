//! `GET /demo`, `GET /demo/upstream` and `permitd demo`, black-box.
//!
//! The timing scenarios run on both stores (`memory::*` and `redis::*`), since
//! the demo must take its permits through whichever store the API uses. Time
//! bounds are one-sided where the machine's load could only make things
//! slower, and generous where it could make them faster than they should be.

use std::time::Duration;

use crate::browser::{render_dom, screenshot};
use crate::helpers::{
    ApiClient, Store, expect_problem, free_port, on_each_store, permitd_command, spawn_app,
    spawn_app_with,
};
use serde_json::Value;

on_each_store!(
    limit_one_serialises_the_requests,
    limit_equal_to_requests_runs_them_at_once,
    concurrency_never_exceeds_the_limit,
    the_demo_semaphore_is_gone_afterwards,
    the_page_draws_one_bar_per_request_in_a_real_browser,
);

async fn demo(app: &ApiClient, query: &str) -> Value {
    let response = app.get(&format!("/demo?{query}")).await;
    assert_eq!(response.status(), 200, "GET /demo?{query}");
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    response.json().await.unwrap()
}

/// Checks what every report must say, whatever the limit.
fn check_report(report: &Value, requests: u64, limit: u64, store: &str) {
    assert_eq!(report["requests"], requests);
    assert_eq!(report["limit"], limit);
    assert_eq!(report["store"], store);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len() as u64, requests);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i as u64 + 1);
        assert_eq!(result["status"], 200, "{result}");
        let (wait, start, end) = (
            result["wait_ms"].as_f64().unwrap(),
            result["start_ms"].as_f64().unwrap(),
            result["end_ms"].as_f64().unwrap(),
        );
        assert!(0.0 <= wait && wait <= start && start <= end, "{result}");
    }
    let max = report["max_concurrency"].as_u64().unwrap();
    assert!(
        (1..=limit).contains(&max),
        "max_concurrency {max} at limit {limit}"
    );
    let summary = report["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("takes ~")
            && summary.ends_with(&format!(
                " seconds to handle {requests} with {limit} bounded limit"
            )),
        "{summary}"
    );
}

async fn limit_one_serialises_the_requests(store: Store) {
    let app = &spawn_app(store).await;
    let report = demo(app, "requests=5&limit=1&delay_ms=100").await;
    check_report(&report, 5, 1, store.kind());
    assert_eq!(report["max_concurrency"], 1);
    assert_eq!(report["ideal_seconds"], 0.5);
    let total = report["total_seconds"].as_f64().unwrap();
    assert!(total >= 0.5, "5 × 100 ms one at a time took {total} s");
    // One at a time, really: no two calls overlap.
    let mut calls: Vec<(f64, f64)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["start_ms"].as_f64().unwrap(),
                r["end_ms"].as_f64().unwrap(),
            )
        })
        .collect();
    calls.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in calls.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping calls {pair:?}");
    }
}

async fn limit_equal_to_requests_runs_them_at_once(store: Store) {
    let app = &spawn_app(store).await;
    let report = demo(app, "requests=5&limit=5&delay_ms=100").await;
    check_report(&report, 5, 5, store.kind());
    assert_eq!(report["ideal_seconds"], 0.1);
    let total = report["total_seconds"].as_f64().unwrap();
    assert!(total >= 0.1, "took {total} s, less than one call");
    // Serialised it would take 0.5 s; in parallel about 0.1 s. The margin is
    // for a loaded machine.
    assert!(total < 0.4, "5 × 100 ms at limit 5 took {total} s");
}

async fn concurrency_never_exceeds_the_limit(store: Store) {
    let app = &spawn_app(store).await;
    for limit in [1u64, 2, 3, 5, 8] {
        let report = demo(app, &format!("requests=12&limit={limit}&delay_ms=40")).await;
        check_report(&report, 12, limit, store.kind());
        let rounds = 12u64.div_ceil(limit) as f64;
        let total = report["total_seconds"].as_f64().unwrap();
        assert!(
            total >= rounds * 0.04,
            "limit {limit}: {total} s is faster than {rounds} rounds of 40 ms"
        );
        // Recount from the intervals: never more than `limit` overlap.
        let mut events: Vec<(f64, i32)> = report["results"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                [
                    (r["start_ms"].as_f64().unwrap(), 1),
                    (r["end_ms"].as_f64().unwrap(), -1),
                ]
            })
            .collect();
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut in_flight = 0;
        for (_, delta) in events {
            in_flight += delta;
            assert!(
                in_flight <= limit as i32,
                "limit {limit}: {in_flight} overlap"
            );
        }
    }
}

async fn the_demo_semaphore_is_gone_afterwards(store: Store) {
    let app = &spawn_app(store).await;
    let report = demo(app, "requests=3&limit=2&delay_ms=10").await;
    let name = report["semaphore"].as_str().unwrap();
    assert!(name.starts_with("demo-"), "{name}");
    let response = app.get(&format!("/semaphores/{name}")).await;
    expect_problem(response, 404).await;
}

async fn the_page_draws_one_bar_per_request_in_a_real_browser(store: Store) {
    let app = &spawn_app(store).await;
    let url = app.url("/demo?requests=6&limit=2&delay_ms=50");
    let dom = render_dom(&url, Duration::from_secs(5)).await;
    assert_eq!(
        dom.matches("class=\"bar\"").count(),
        6,
        "one bar per request in the rendered DOM: {dom}"
    );
    assert_eq!(dom.matches("<rect class=\"hold\"").count(), 6, "{dom}");
    assert!(
        dom.contains("seconds to handle 6 with 2 bounded limit"),
        "headline in {dom}"
    );
    assert!(dom.contains("<form"), "the parameter form is there");
    assert!(dom.contains(&format!("<dd>{}</dd>", store.kind())), "{dom}");
    assert!(!dom.contains("<script"), "the page has no scripts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_gets_html_and_everyone_else_json() {
    let app = spawn_app(Store::Memory).await;
    let html = app
        .client
        .get(app.url("/demo?requests=2&limit=1&delay_ms=0"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 200);
    assert!(
        html.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = html.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let body = html.text().await.unwrap();
    assert!(body.contains("<svg id=\"timeline\""));

    let json = app
        .client
        .get(app.url("/demo?requests=2&limit=1&delay_ms=0"))
        .header("accept", "*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(
        json.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_are_five_requests_at_limit_one_against_the_built_in_upstream() {
    let app = spawn_app(Store::Memory).await;
    let report = demo(&app, "").await;
    check_report(&report, 5, 1, "memory");
    assert_eq!(report["ideal_seconds"], 0.5);
    let url = report["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("http://{}/demo/upstream?delay_ms=100", app.addr)
    );

    // What the page's form sends when every field is left empty.
    let report = demo(&app, "requests=&limit=&delay_ms=&url=").await;
    check_report(&report, 5, 1, "memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_disallowed_urls_are_400_problems() {
    let app = spawn_app(Store::Memory).await;
    for query in [
        "requests=0",
        "requests=101",
        "requests=abc",
        "requests=-1",
        "limit=0",
        "limit=101",
        "delay_ms=5001",
        "requests=100&limit=1&delay_ms=5000",
        "unknown=1",
        "url=http://example.com/",
        "url=https://169.254.169.254/latest/meta-data/",
        "url=http://127.0.0.1:1/",
        "url=file:///etc/passwd",
        "url=ftp://example.com/",
        "url=not%20a%20url",
        "url=/demo/upstream",
        "url=%20",
        "requests=%205",
        "requests=%2B5",
        "limit=1.0",
    ] {
        let response = app.get(&format!("/demo?{query}")).await;
        let problem = expect_problem(response, 400).await;
        assert!(
            !problem["detail"].as_str().unwrap().is_empty(),
            "{query}: {problem}"
        );
    }
    let response = app.get("/demo/upstream?delay_ms=5001").await;
    expect_problem(response, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_upstream_answers_after_its_delay() {
    let app = spawn_app(Store::Memory).await;
    let started = std::time::Instant::now();
    let response = app.get("/demo/upstream?delay_ms=150").await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["delay_ms"], 150);
}

/// A tiny upstream on its own port: `/ok` answers 200 with a body, `/moved`
/// redirects to `/ok`.
async fn spawn_upstream() -> std::net::SocketAddr {
    use axum::routing::get;
    let router = axum::Router::new()
        .route("/ok", get(|| async { "secret upstream body" }))
        .route(
            "/moved",
            get(|| async { axum::response::Redirect::temporary("/ok") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_host_is_called_without_relaying_bodies_or_following_redirects() {
    let upstream = spawn_upstream().await;
    let allowed = format!("127.0.0.1:{}", upstream.port());
    let app = spawn_app_with(Store::Memory, move |s| {
        s.demo_allowed_hosts = vec![allowed.clone()];
    })
    .await;

    let ok = format!("http://{upstream}/ok");
    let response = app.get(&format!("/demo?requests=3&limit=2&url={ok}")).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains("secret upstream body"), "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["url"], ok);
    for result in report["results"].as_array().unwrap() {
        assert_eq!(result["status"], 200);
    }

    let moved = format!("http://{upstream}/moved");
    let report = demo(&app, &format!("requests=1&limit=1&url={moved}")).await;
    assert_eq!(report["results"][0]["status"], 307, "{report}");

    // The same host on another port is still not allowed.
    let other = format!("http://127.0.0.1:{}/ok", upstream.port() + 1);
    let response = app.get(&format!("/demo?url={other}")).await;
    expect_problem(response, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_allowed_host_is_reported_per_request() {
    // A port that was free a moment ago: connecting is refused.
    let port = free_port();
    let app = spawn_app_with(Store::Memory, |s| {
        s.demo_allowed_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    let report = demo(
        &app,
        &format!("requests=2&limit=1&url=http://127.0.0.1:{port}/"),
    )
    .await;
    for result in report["results"].as_array().unwrap() {
        assert_eq!(result["status"], Value::Null, "{result}");
        assert_eq!(result["error"], "connect", "{result}");
    }
}

#[tokio::test]
async fn the_terminal_prints_one_line_per_request_and_the_headline() {
    let output = permitd_command()
        .args([
            "demo",
            "--requests",
            "4",
            "--limit",
            "2",
            "--delay-ms",
            "30",
        ])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    let mut handled: Vec<&str> = lines[..4].to_vec();
    handled.sort_unstable();
    for (i, line) in handled.iter().enumerate() {
        assert_eq!(
            *line,
            format!("Handled api request №{} with status code 200", i + 1)
        );
    }
    assert!(
        lines[4].starts_with("takes ~")
            && lines[4].ends_with("seconds to handle 4 with 2 bounded limit"),
        "{stdout}"
    );
    // Its embedded permitd is reachable by nobody else: no open-API warning,
    // and no colours on a pipe.
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.contains("anyone who can reach"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr}");
}

#[tokio::test]
async fn the_terminal_refuses_bad_bounds() {
    let output = permitd_command()
        .args(["demo", "--limit", "0"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("limit must be between 1 and 100"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_applies_the_configured_demo_bounds() {
    let run = |args: &'static [&'static str]| async move {
        permitd_command().args(args).output().await.unwrap()
    };
    // The default of 5 requests is lowered to the configured maximum.
    let output = run(&["demo", "--demo-max-requests", "2", "--delay-ms", "1"]).await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("to handle 2 with 1 bounded limit"),
        "{stdout}"
    );
    let output = run(&["demo", "--demo-max-delay-ms", "5", "--delay-ms", "6"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("delay_ms must be between 0 and 5"),
        "{stderr}"
    );
}

/// Not a check: saves `target/demo.png` for a person to look at. Run with
/// `cargo test --test api demo:: -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a screenshot for people, asserts nothing"]
async fn save_a_screenshot_of_the_page() {
    let app = spawn_app(Store::Memory).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/demo.png");
    screenshot(
        &app.url("/demo?requests=8&limit=2&delay_ms=100"),
        &path,
        Duration::from_secs(5),
    )
    .await;
    eprintln!("saved {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_demo_leaves_no_key_behind() {
    let app = spawn_app(Store::Redis).await;
    let report = demo(&app, "requests=4&limit=2&delay_ms=20").await;
    assert_eq!(report["store"], "redis");
    let keys = app.redis().command(&["KEYS", "*"]).strings();
    assert!(keys.is_empty(), "keys left in Redis: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_run_leaves_no_semaphore_behind() {
    let app = spawn_app(Store::Redis).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let gave_up = impatient
        .get(app.url("/demo?requests=4&limit=1&delay_ms=1000"))
        .send()
        .await;
    assert!(
        gave_up.is_err(),
        "the run takes 4 s, the client waits 0.4 s"
    );
    // The semaphore existed mid-run; once the server notices the hang-up it
    // must be deleted, not left to sit there forever. Only the short-lived
    // record of withdrawn tickets (`…:left`, which expires by itself) may
    // outlive it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let keys = app.redis().command(&["KEYS", "*"]).strings();
        let lasting = keys
            .iter()
            .filter(|key| key.contains('{') && !key.ends_with(":left"))
            .count();
        if lasting == 0 {
            for tombstone in keys.iter().filter(|key| key.ends_with(":left")) {
                let ms = app.redis().command(&["PTTL", tombstone]).integer();
                assert!(ms > 0, "{tombstone} does not expire: {ms}");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keys left in Redis: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_four_runs_at_once_then_429() {
    let app = std::sync::Arc::new(spawn_app(Store::Memory).await);
    let mut running = Vec::new();
    for _ in 0..4 {
        let app = std::sync::Arc::clone(&app);
        running.push(tokio::spawn(async move {
            app.get("/demo?requests=1&limit=1&delay_ms=2500")
                .await
                .status()
        }));
    }
    // Time for the four to start; they last 2.5 s.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let response = app.get("/demo?requests=1&limit=1&delay_ms=0").await;
    assert!(response.headers().contains_key("retry-after"));
    let problem = expect_problem(response, 429).await;
    assert_eq!(problem["limit"], 4);
    for run in running {
        assert_eq!(run.await.unwrap(), 200);
    }
    // Slots are given back when runs end.
    let response = app.get("/demo?requests=1&limit=1&delay_ms=0").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_the_demo_is_a_404_and_leaves_the_document() {
    let app = crate::helpers::BinaryBuilder::new()
        .env("PERMITD_DEMO", "false")
        .start()
        .await;
    for path in ["/demo", "/demo?requests=1", "/demo/upstream?delay_ms=0"] {
        crate::helpers::expect_problem(app.get(path).await, 404).await;
    }
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(
        paths.keys().all(|path| !path.starts_with("/demo")),
        "{:?}",
        paths.keys()
    );
    assert!(paths.contains_key("/semaphores/{name}/permits"));
    assert!(doc["components"]["schemas"]["DemoReport"].is_null());
    let tags = doc["tags"].as_array().unwrap();
    assert!(tags.iter().all(|tag| tag["name"] != "demo"), "{tags:?}");
    // The API itself is unchanged.
    assert_eq!(
        app.acquire("still-here", serde_json::json!({ "limit": 1 }))
            .await
            .status(),
        201
    );
}

/// `permitd demo --server`: the same fan-out through the Rust client
/// against a running permitd (the real binary), limit 1 against limit 5,
/// and the demo semaphore removed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_runs_against_a_server_through_the_client() {
    let server = crate::helpers::Harness::new(Store::Redis)
        .binary()
        .start()
        .await;
    let url = server.url("");
    let run = |limit: &'static str| {
        let url = url.clone();
        async move {
            let output = permitd_command()
                .args([
                    "demo",
                    "--url",
                    &url,
                    "--requests",
                    "5",
                    "--delay-ms",
                    "100",
                ])
                .args(["--limit", limit])
                .output()
                .await
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            let stdout = String::from_utf8(output.stdout).unwrap();
            let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
            assert_eq!(lines.len(), 6, "{stdout}");
            let mut handled = lines[..5].to_vec();
            handled.sort_unstable();
            for (i, line) in handled.iter().enumerate() {
                assert_eq!(
                    *line,
                    format!("Handled api request №{} with status code 200", i + 1)
                );
            }
            let seconds: f64 = lines[5]
                .strip_prefix("takes ~")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{stdout}"));
            assert!(
                lines[5].ends_with(&format!("seconds to handle 5 with {limit} bounded limit")),
                "{stdout}"
            );
            seconds
        }
    };
    let serial = run("1").await;
    assert!(serial >= 0.5, "limit 1 took {serial} s");
    let parallel = run("5").await;
    assert!(parallel < 0.4, "limit 5 took {parallel} s");
    let listed: Value = server
        .get("/semaphores?prefix=demo-")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["semaphores"],
        serde_json::json!([]),
        "the demo semaphores are gone"
    );
}
