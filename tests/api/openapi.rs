//! The OpenAPI document: the checked-in `openapi.yaml` is what the code
//! generates, the server serves it as JSON and YAML, and it states the
//! contract's bounds and headers.

use crate::helpers::{RequestBounds, Store, expect_problem, spawn_app, spawn_app_with};
use permitd::config::Settings;
use serde_json::Value;

const REGENERATE: &str = "cargo run -q -- openapi > openapi.yaml";

fn default_bounds() -> RequestBounds {
    Settings::for_tests(None).request_bounds().unwrap()
}

#[test]
fn checked_in_openapi_yaml_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = permitd::http::document_yaml(&default_bounds()).unwrap();
    if checked_in != generated {
        let line = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| checked_in.lines().count().min(generated.lines().count()));
        panic!(
            "openapi.yaml differs from the document the code generates (first at line {}).\n\
             Regenerate it from the repository root with:\n\n    {REGENERATE}\n",
            line + 1
        );
    }
}

#[tokio::test]
async fn the_server_serves_its_document_as_json_and_yaml() {
    let app = spawn_app(Store::Memory).await;

    let json = app.get("/openapi.json").await;
    assert_eq!(json.status(), 200);
    assert_eq!(json.headers()["content-type"], "application/json");
    let served: Value = json.json().await.unwrap();
    let generated = serde_json::to_value(permitd::http::document(&default_bounds())).unwrap();
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.1.0");

    let yaml = app.get("/openapi.yaml").await;
    assert_eq!(yaml.status(), 200);
    assert_eq!(yaml.headers()["content-type"], "application/yaml");
    assert_eq!(
        yaml.text().await.unwrap(),
        permitd::http::document_yaml(&default_bounds()).unwrap()
    );
}

#[tokio::test]
async fn the_served_document_states_this_servers_configured_bounds() {
    let app = spawn_app_with(Store::Memory, |settings| {
        settings.min_ttl_ms = 500;
        settings.max_ttl_ms = 5_000;
        settings.default_ttl_ms = 1_000;
        settings.max_wait_ms = 2_500;
        settings.demo_max_requests = 3;
        settings.demo_max_delay_ms = 7;
    })
    .await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let schemas = &doc["components"]["schemas"];
    for body in ["AcquireBody", "RefreshBody"] {
        let ttl = &schemas[body]["properties"]["ttl_ms"];
        assert_eq!(
            (&ttl["minimum"], &ttl["maximum"], &ttl.get("default")),
            (&500.into(), &5_000.into(), &None),
            "{body}.ttl_ms"
        );
        let description = ttl["description"].as_str().unwrap();
        assert!(
            description.contains("this server's default of 1000."),
            "{body}.ttl_ms: {description}"
        );
    }
    let wait = &schemas["AcquireBody"]["properties"]["wait_ms"];
    assert_eq!(
        (&wait["minimum"], &wait["maximum"]),
        (&0.into(), &2_500.into())
    );

    // The demo's bounds, and defaults that stay within them.
    let query = |path: &str, name: &str| -> Value {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let param = params.iter().find(|p| p["name"] == name).unwrap();
        param["schema"]["oneOf"][0].clone()
    };
    let requests = query("/demo", "requests");
    assert_eq!(
        (
            &requests["minimum"],
            &requests["maximum"],
            &requests["default"]
        ),
        (&1.into(), &3.into(), &3.into())
    );
    for path in ["/demo", "/demo/upstream"] {
        let delay = query(path, "delay_ms");
        assert_eq!(
            (&delay["minimum"], &delay["maximum"], &delay["default"]),
            (&0.into(), &7.into(), &7.into()),
            "{path}"
        );
    }

    // And the server enforces what its document states.
    for path in [
        "/demo?requests=4",
        "/demo?delay_ms=8",
        "/demo/upstream?delay_ms=8",
    ] {
        expect_problem(app.get(path).await, 400).await;
    }
    let report: Value = app
        .get("/demo?requests=3&delay_ms=7")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["requests"], 3);
    let report: Value = app.get("/demo").await.json().await.unwrap();
    assert_eq!(
        (&report["requests"], &report["ideal_seconds"]),
        (&3.into(), &0.021.into())
    );

    let short = serde_json::json!({ "limit": 1, "ttl_ms": 499 });
    let problem = expect_problem(app.acquire("bounded", short).await, 400).await;
    assert_eq!(problem["detail"], "ttl_ms must be between 500 and 5000");
    let enough = serde_json::json!({ "limit": 1, "ttl_ms": 500 });
    assert_eq!(app.acquire("bounded", enough).await.status(), 201);
}

#[test]
fn every_endpoint_is_documented_with_its_problems_and_headers() {
    let mut doc = serde_json::to_value(permitd::http::document(&default_bounds())).unwrap();
    inline_shared_responses(&mut doc);
    let paths = &doc["paths"];
    let operation = |path: &str, method: &str| -> &Value {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        op
    };
    for (path, method) in [
        ("/semaphores/{name}", "put"),
        ("/semaphores/{name}", "get"),
        ("/semaphores/{name}", "delete"),
        ("/semaphores/{name}/permits", "post"),
        ("/semaphores/{name}/permits/{id}", "get"),
        ("/semaphores/{name}/permits/{id}", "patch"),
        ("/semaphores/{name}/permits/{id}", "delete"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/demo", "get"),
        ("/demo/upstream", "get"),
        ("/openapi.json", "get"),
        ("/openapi.yaml", "get"),
    ] {
        let op = operation(path, method);
        // Every error response is problem+json.
        for (status, response) in op["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                assert!(
                    response["content"]["application/problem+json"].is_object(),
                    "{method} {path} {status} is not problem+json"
                );
            }
        }
        if path.starts_with("/semaphores/") {
            let name = &op["parameters"][0];
            assert_eq!(name["name"], "name");
            assert_eq!(name["schema"]["pattern"], "^[A-Za-z0-9._:-]{1,128}$");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("400") && responses.contains_key("503"));
            assert!(responses["503"]["headers"]["Retry-After"].is_object());
        }
    }

    let acquire = operation("/semaphores/{name}/permits", "post");
    let responses = &acquire["responses"];
    for status in ["201", "200"] {
        assert!(responses[status]["headers"]["Location"].is_object());
    }
    assert!(responses["429"]["headers"]["Retry-After"].is_object());
    for status in ["400", "404", "409", "413", "429", "503"] {
        assert!(responses[status].is_object(), "acquire documents {status}");
    }
    // A body that may be left out is the object's schema, not required,
    // and its fields carry no `default` (generators make those required).
    for (path, method, body) in [
        ("/semaphores/{name}/permits", "post", "AcquireBody"),
        ("/semaphores/{name}/permits/{id}", "patch", "RefreshBody"),
    ] {
        let request = &operation(path, method)["requestBody"];
        assert_eq!(request["required"], false, "{method} {path}");
        assert_eq!(
            request["content"]["application/json"]["schema"],
            serde_json::json!({ "$ref": format!("#/components/schemas/{body}") }),
            "{method} {path}"
        );
        let fields = doc["components"]["schemas"][body]["properties"]
            .as_object()
            .unwrap();
        for (field, schema) in fields {
            assert!(schema.get("default").is_none(), "{body}.{field}");
        }
    }
    let key = &acquire["parameters"][1];
    assert_eq!(
        (&key["name"], &key["in"]),
        (&"Idempotency-Key".into(), &"header".into())
    );

    let demo = operation("/demo", "get");
    let ok = &demo["responses"]["200"]["content"];
    assert_eq!(
        ok["application/json"]["schema"]["$ref"],
        "#/components/schemas/DemoReport"
    );
    assert!(
        ok["text/html"].is_object(),
        "the page is a documented alternative"
    );
    assert!(demo["responses"]["429"]["headers"]["Retry-After"].is_object());
    let metrics = operation("/metrics", "get");
    assert!(metrics["responses"]["200"]["content"]["text/plain"].is_object());
    let report = &doc["components"]["schemas"]["DemoReport"];
    assert!(
        report["examples"][0].is_object(),
        "examples, as OpenAPI 3.1 has them"
    );
    assert_eq!(
        report["properties"]["results"]["items"]["$ref"],
        "#/components/schemas/RequestResult"
    );

    let body = &doc["components"]["schemas"]["AcquireBody"];
    assert_eq!(body["additionalProperties"], false);
    assert!(body["examples"][0].is_object());
    let limit = &body["properties"]["limit"];
    assert_eq!(
        (&limit["minimum"], &limit["maximum"]),
        (&1.into(), &1_000_000.into())
    );
    assert_eq!(body["properties"]["ttl_ms"]["minimum"], 100);
    assert_eq!(body["properties"]["wait_ms"]["minimum"], 0);
    assert_eq!(body["properties"]["holder"]["maxLength"], 128);
}

/// JSON Schema counts `2.0` as an integer, so the server must accept it
/// (schemathesis found it refused); an optional body may be left out, and
/// `null`, which the document does not allow, is refused.
#[tokio::test]
async fn what_the_document_allows_is_accepted_whole_numbers_and_no_body() {
    let app = spawn_app(Store::Memory).await;
    let created = app
        .put_json("/semaphores/lenient", serde_json::json!({ "limit": 2.0 }))
        .await;
    assert_eq!(created.status(), 201);
    let permit = app
        .acquire(
            "lenient",
            serde_json::json!({ "count": 1.0, "ttl_ms": 3e4 }),
        )
        .await;
    assert_eq!(permit.status(), 201);
    let url = app.url("/semaphores/lenient/permits");
    let permit = app.client.post(&url).send().await.unwrap();
    assert_eq!(permit.status(), 201, "no body means every default");
    assert_eq!(app.status("lenient").await["held"], 2);
    let problem = expect_problem(app.acquire("lenient", Value::Null).await, 400).await;
    assert_eq!(problem["detail"], "request body: expected a JSON object");
    for bad in [
        serde_json::json!({ "limit": 2.5 }),
        serde_json::json!({ "limit": -2.0 }),
        serde_json::json!({ "limit": 1e30 }),
    ] {
        expect_problem(app.put_json("/semaphores/lenient", bad).await, 400).await;
    }
    expect_problem(app.put_json("/semaphores/lenient", Value::Null).await, 400).await;
    // A body is an object: serde alone would read `[]` as "all defaults"
    // (schemathesis found a PATCH with `[]` accepted).
    let permit: Value = app
        .acquire("lenient-2", serde_json::json!({ "limit": 1 }))
        .await
        .json()
        .await
        .unwrap();
    let at = format!(
        "/semaphores/lenient-2/permits/{}",
        permit["id"].as_str().unwrap()
    );
    for body in [
        serde_json::json!([]),
        serde_json::json!([30000]),
        serde_json::json!(5),
    ] {
        expect_problem(app.patch_json(&at, body.clone()).await, 400).await;
        expect_problem(
            app.post_json("/semaphores/lenient-2/permits", body).await,
            400,
        )
        .await;
    }
}

/// A server that lists no demo host says `url` may only be empty, and one
/// that lists some does not.
#[test]
fn the_demo_url_is_empty_only_unless_a_host_is_allowed() {
    let url_schema = |settings: Settings| -> Value {
        let doc =
            serde_json::to_value(permitd::http::document(&settings.request_bounds().unwrap()))
                .unwrap();
        let params = doc["paths"]["/demo"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .clone();
        params.into_iter().find(|p| p["name"] == "url").unwrap()["schema"].clone()
    };
    assert_eq!(url_schema(Settings::for_tests(None))["maxLength"], 0);
    let mut settings = Settings::for_tests(None);
    settings.demo_allowed_hosts = vec!["api.example.com".into()];
    assert!(url_schema(settings).get("maxLength").is_none());
}

/// Replaces every `$ref` to a shared response (`#/components/responses/…`)
/// with that response, so an operation's answers can be read in place, as a
/// client resolving the document would.
fn inline_shared_responses(doc: &mut Value) {
    let shared = doc["components"]["responses"].clone();
    for item in doc["paths"].as_object_mut().unwrap().values_mut() {
        for operation in item.as_object_mut().unwrap().values_mut() {
            let Some(responses) = operation["responses"].as_object_mut() else {
                continue;
            };
            for response in responses.values_mut() {
                if let Some(target) = response["$ref"].as_str() {
                    let name = target.trim_start_matches("#/components/responses/");
                    assert!(shared[name].is_object(), "{target} is defined");
                    *response = shared[name].clone();
                }
            }
        }
    }
}

/// `yaml` read by PyYAML (a YAML 1.1 parser, like many tools built on it),
/// as JSON. Uses the fuzzing virtualenv's Python when there is one (its
/// schemathesis brings PyYAML), else `python3`; either needs PyYAML.
fn read_with_pyyaml(yaml: &str) -> Value {
    use std::io::Write;
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let python = if std::path::Path::new(venv).exists() {
        venv
    } else {
        "python3"
    };
    let mut child = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("this test needs {python} with PyYAML: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{python} could not read the YAML; this test needs PyYAML \
         (`pip install pyyaml` or `apt-get install python3-yaml`):\n{stderr}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn a_yaml_1_1_parser_reads_the_yaml_as_the_same_data_as_the_json() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap();
    let generated = serde_json::to_value(permitd::http::document(&default_bounds())).unwrap();
    assert_eq!(
        read_with_pyyaml(&checked_in),
        generated,
        "PyYAML reads openapi.yaml differently from the JSON document (an unquoted \
         timestamp, yes/no/on/off, 1:30 ...?)"
    );

    let app = spawn_app(Store::Memory).await;
    let served_json: Value = app.get("/openapi.json").await.json().await.unwrap();
    let served_yaml = app.get("/openapi.yaml").await.text().await.unwrap();
    assert_eq!(read_with_pyyaml(&served_yaml), served_json);
}
