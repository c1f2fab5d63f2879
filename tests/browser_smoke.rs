//! Checks that the browser harness itself works: headless Chromium renders a
//! page served by permitd, with its scripts run.

mod common;

use std::time::Duration;

use common::browser::render_dom;
use common::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_a_page_served_by_permitd() {
    let app = spawn_app(None).await;
    let dom = render_dom(&app.url("/healthz"), Duration::from_secs(2)).await;
    assert!(dom.contains("\"status\":\"ok\""), "rendered DOM: {dom}");
}
