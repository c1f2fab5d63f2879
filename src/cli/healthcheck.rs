//! `permitd healthcheck`: whether a running permitd answers `GET <url>/healthz`,
//! as an exit status, for container health checks (the image needs no curl).

use std::time::Duration;

use crate::config::HealthcheckArgs;

/// `permitd healthcheck`: whether the server answers `GET <url>/healthz`
/// (`/readyz` with `--ready`) with 200 within the timeout. Prints why not to
/// stderr.
pub async fn run(args: &HealthcheckArgs) -> bool {
    let base = args.url.clone().unwrap_or_else(local_url);
    let path = if args.ready { "readyz" } else { "healthz" };
    let url = format!("{}/{path}", base.trim_end_matches('/'));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return false;
        }
    };
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            eprintln!("healthcheck: {url} answered {}", response.status());
            false
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            false
        }
    }
}

/// permitd on this host, at the port it serves on by PERMITD_LISTEN (the
/// server's own default, 8080, without it).
fn local_url() -> String {
    let port = std::env::var("PERMITD_LISTEN")
        .ok()
        .and_then(|listen| listen.parse::<std::net::SocketAddr>().ok())
        .map_or(8080, |addr| addr.port());
    format!("http://127.0.0.1:{port}")
}
