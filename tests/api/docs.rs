//! Swagger UI at `/docs/`, checked in real headless Chromium: the page is
//! served from the binary, its scripts load the spec from the same server,
//! and every operation is rendered.

use std::time::Duration;

use crate::browser::render_dom;
use crate::helpers::{Store, spawn_app};

/// The `(method, path)` of every operation block Swagger UI rendered.
fn rendered_operations(dom: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(start) = rest.find("class=\"opblock opblock-") {
        rest = &rest[start + "class=\"opblock opblock-".len()..];
        let method: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        let Some(at) = rest.find("data-path=\"") else {
            break;
        };
        let path_start = &rest[at + "data-path=\"".len()..];
        let path = &path_start[..path_start.find('"').unwrap_or(0)];
        found.push((method, path.to_owned()));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_lists_every_operation_in_a_real_browser() {
    let app = spawn_app(Store::Memory).await;

    let page = app.get("/docs/").await;
    assert_eq!(page.status(), 200);

    let dom = render_dom(&app.url("/docs/"), Duration::from_secs(10)).await;
    let operations = rendered_operations(&dom);
    for (method, path) in [
        ("put", "/semaphores/{name}"),
        ("get", "/semaphores/{name}"),
        ("delete", "/semaphores/{name}"),
        ("post", "/semaphores/{name}/permits"),
        ("get", "/semaphores/{name}/permits/{id}"),
        ("patch", "/semaphores/{name}/permits/{id}"),
        ("delete", "/semaphores/{name}/permits/{id}"),
        ("get", "/healthz"),
        ("get", "/readyz"),
    ] {
        assert!(
            operations.contains(&(method.to_owned(), path.to_owned())),
            "Swagger UI did not render {method} {path}; it rendered {operations:?}"
        );
    }
    // The info block came from the served spec, not from the HTML file.
    assert!(dom.contains("permitd"), "the spec's title is not rendered");
    assert!(
        dom.contains("acquire_permit"),
        "operation ids are not rendered"
    );
}
