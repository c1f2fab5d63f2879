//! Scoped tokens on the real binary: `read`, `use` and `admin` entries, a
//! name prefix, bare tokens that keep meaning everything, 403 problems that
//! name what is missing, and the served document stating each operation's
//! scope.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{BinaryApp, BinaryBuilder, expect_problem, permitd_command};

const READ: &str = "read-tok-1f9a";
const USE: &str = "use-tok-77c2";
const ADMIN: &str = "admin-tok-03be";
const PAYMENTS: &str = "pay-tok-5d1e";
const BARE: &str = "bare-tok-9a0c";

async fn scoped_binary() -> BinaryApp {
    let entries = format!("read:{READ},use:{USE},admin:{ADMIN},use@pay.:{PAYMENTS},{BARE}");
    BinaryBuilder::new()
        .env("PERMITD_API_TOKENS", &entries)
        .arg("--metrics-public")
        .arg("false")
        .start()
        .await
}

async fn call(
    app: &BinaryApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// Asserts a 403 problem whose detail contains `says`.
async fn forbidden(response: reqwest::Response, says: &str) {
    let problem = expect_problem(response, 403).await;
    assert_eq!(problem["type"], "urn:permitd:problem:forbidden");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(says), "{detail:?} does not say {says:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_may_do_what_it_names_and_no_more() {
    let app = scoped_binary().await;
    let limit = || Some(json!({ "limit": 2 }));

    // admin creates; read and use may not.
    forbidden(
        call(&app, Method::PUT, "/semaphores/jobs", READ, limit()).await,
        "admin scope",
    )
    .await;
    forbidden(
        call(&app, Method::PUT, "/semaphores/jobs", USE, limit()).await,
        "admin scope",
    )
    .await;
    assert_eq!(
        call(&app, Method::PUT, "/semaphores/jobs", ADMIN, limit())
            .await
            .status(),
        201
    );

    // read sees status and metrics, but may not acquire.
    assert_eq!(
        call(&app, Method::GET, "/semaphores/jobs", READ, None)
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&app, Method::GET, "/metrics", READ, None)
            .await
            .status(),
        200
    );
    let permits = "/semaphores/jobs/permits";
    forbidden(
        call(&app, Method::POST, permits, READ, None).await,
        "use scope",
    )
    .await;
    forbidden(
        call(&app, Method::GET, "/demo?requests=1&delay_ms=0", READ, None).await,
        "use scope",
    )
    .await;

    // use acquires, looks up, refreshes, releases, runs the demo...
    let granted = call(&app, Method::POST, permits, USE, None).await;
    assert_eq!(granted.status(), 201);
    let location = granted.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        call(&app, Method::GET, &location, USE, None).await.status(),
        200
    );
    let refresh = Some(json!({ "ttl_ms": 5000 }));
    assert_eq!(
        call(&app, Method::PATCH, &location, USE, refresh)
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&app, Method::DELETE, &location, USE, None)
            .await
            .status(),
        204
    );
    let demo = call(&app, Method::GET, "/demo?requests=1&delay_ms=0", USE, None).await;
    assert_eq!(demo.status(), 200);
    let report: Value = demo.json().await.unwrap();
    assert_eq!(report["results"][0]["status"], 200, "{report}");
    // ...but may not delete the semaphore.
    forbidden(
        call(&app, Method::DELETE, "/semaphores/jobs", USE, None).await,
        "admin scope",
    )
    .await;

    // A bare token may do everything, as before scopes.
    assert_eq!(
        call(&app, Method::DELETE, "/semaphores/jobs", BARE, None)
            .await
            .status(),
        204
    );
    // A wrong token is still a 401, not a 403.
    let wrong = call(&app, Method::GET, "/semaphores/jobs", "no-such-token", None).await;
    expect_problem(wrong, 401).await;
    // And /metrics, not public here, needs a token at all.
    expect_problem(app.get("/metrics").await, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_prefix_touches_only_names_that_start_with_it() {
    let app = scoped_binary().await;
    let limit = || Some(json!({ "limit": 1 }));
    for name in ["pay.eu", "payroll"] {
        let path = format!("/semaphores/{name}");
        assert_eq!(
            call(&app, Method::PUT, &path, ADMIN, limit())
                .await
                .status(),
            201
        );
    }
    let granted = call(
        &app,
        Method::POST,
        "/semaphores/pay.eu/permits",
        PAYMENTS,
        None,
    )
    .await;
    assert_eq!(granted.status(), 201);
    assert_eq!(
        call(&app, Method::GET, "/semaphores/pay.eu", PAYMENTS, None)
            .await
            .status(),
        200
    );
    // Percent-encoded, the name is still checked as the handler reads it.
    assert_eq!(
        call(&app, Method::GET, "/semaphores/pay%2Eeu", PAYMENTS, None)
            .await
            .status(),
        200
    );

    forbidden(
        call(
            &app,
            Method::POST,
            "/semaphores/payroll/permits",
            PAYMENTS,
            None,
        )
        .await,
        "\"pay.\"",
    )
    .await;
    forbidden(
        call(&app, Method::GET, "/semaphores/payroll", PAYMENTS, None).await,
        "\"pay.\"",
    )
    .await;
    // The prefix narrows the scope; it does not widen it.
    forbidden(
        call(&app, Method::PUT, "/semaphores/pay.new", PAYMENTS, limit()).await,
        "admin scope",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_states_each_operations_scope_and_its_403() {
    let app = scoped_binary().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["components"]["responses"]["Forbidden"].is_object());
    let scope =
        |path: &str, method: &str| doc["paths"][path][method]["security"][0]["bearer"][0].clone();
    assert_eq!(scope("/semaphores/{name}", "get"), "read");
    assert_eq!(scope("/semaphores/{name}", "put"), "admin");
    assert_eq!(scope("/semaphores/{name}", "delete"), "admin");
    assert_eq!(scope("/semaphores/{name}/permits", "post"), "use");
    assert_eq!(scope("/semaphores/{name}/permits/{id}", "patch"), "use");
    assert_eq!(scope("/demo", "get"), "use");
    assert_eq!(scope("/metrics", "get"), "read");
    let mut protected = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation["security"].is_null() {
                continue;
            }
            protected += 1;
            assert_eq!(
                operation["responses"]["403"]["$ref"], "#/components/responses/Forbidden",
                "{method} {path}"
            );
        }
    }
    assert!(protected >= 9, "{protected} protected operations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_scoped_entry_stops_the_start() {
    let output = permitd_command()
        .args(["--listen", "127.0.0.1:0"])
        .env("PERMITD_API_TOKENS", "use:payments-:s3cr3t-part")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr) + String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains("API token #1") && said.contains("'@'"),
        "{said}"
    );
    assert!(
        !said.contains("s3cr3t-part"),
        "the token is not shown: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permit_ids_are_for_admins_and_a_prefixed_token_lists_only_its_prefix() {
    let app = scoped_binary().await;
    for name in ["pay.a", "pay.b", "other"] {
        let created = call(
            &app,
            Method::PUT,
            &format!("/semaphores/{name}"),
            ADMIN,
            Some(json!({ "limit": 1 })),
        )
        .await;
        assert_eq!(created.status(), 201);
    }
    let held = call(&app, Method::POST, "/semaphores/pay.a/permits", USE, None).await;
    assert_eq!(held.status(), 201);
    let held: Value = held.json().await.unwrap();

    forbidden(
        call(
            &app,
            Method::GET,
            "/semaphores/pay.a?include=ids",
            USE,
            None,
        )
        .await,
        "admin scope",
    )
    .await;
    let seen: Value = call(
        &app,
        Method::GET,
        "/semaphores/pay.a?include=ids",
        ADMIN,
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(seen["holders"][0]["id"], held["id"]);

    let names = |list: Value| -> Vec<String> {
        list["semaphores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let all: Value = call(&app, Method::GET, "/semaphores", READ, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(all), ["other", "pay.a", "pay.b"]);
    let within: Value = call(&app, Method::GET, "/semaphores", PAYMENTS, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(within), ["pay.a", "pay.b"]);
    let outside: Value = call(&app, Method::GET, "/semaphores?prefix=oth", PAYMENTS, None)
        .await
        .json()
        .await
        .unwrap();
    assert!(names(outside).is_empty());
}
