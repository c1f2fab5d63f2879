//! Real headless Chromium for tests of browser-facing pages.
//!
//! `render_dom` loads a page, lets its scripts run (virtual time budget), and
//! returns the DOM as serialised HTML: assertions then look at what a browser
//! rendered, not at the file the server sent.

use std::time::Duration;

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "chromium";

fn base_command(profile: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .kill_on_drop(true);
    command
}

fn missing(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::NotFound {
        panic!(
            "chromium is not installed; browser tests need it. Install the Debian package: \
             `sudo apt-get install -y chromium` (scripts/test does this for you)"
        )
    }
    panic!("cannot start chromium: {e}")
}

fn profile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("permitd-chromium-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `extra` arguments and `budget` of
/// virtual time for the page's scripts, in a fresh profile; returns stdout.
async fn run(url: &str, budget: Duration, extra: &[String]) -> Vec<u8> {
    let profile = profile_dir();
    let output = base_command(&profile)
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .args(extra)
        .arg(url)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("chromium finished within 60 s")
        .unwrap_or_else(|e| missing(e));
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Loads `url` in headless Chromium, runs its scripts for up to `budget`
/// of virtual time, and returns the rendered DOM.
pub async fn render_dom(url: &str, budget: Duration) -> String {
    let stdout = run(url, budget, &["--dump-dom".into()]).await;
    String::from_utf8_lossy(&stdout).into_owned()
}

/// Saves a PNG screenshot of `url` at `path` (for people who want to look).
pub async fn screenshot(url: &str, path: &std::path::Path, budget: Duration) {
    let extra = [
        "--window-size=1280,900".to_string(),
        format!("--screenshot={}", path.display()),
    ];
    run(url, budget, &extra).await;
}

/// The runner itself works: headless Chromium renders a page served by
/// permitd, with its scripts run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_a_page_served_by_permitd() {
    let app = crate::helpers::spawn_app(crate::helpers::Store::Memory).await;
    let dom = render_dom(&app.url("/healthz"), Duration::from_secs(2)).await;
    assert!(dom.contains("\"status\":\"ok\""), "rendered DOM: {dom}");
}
