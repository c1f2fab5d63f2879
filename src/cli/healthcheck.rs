//! `permitd healthcheck`: whether a running permitd answers `GET /healthz`,
//! as an exit status, for container health checks (the image needs no curl).

use std::time::Duration;

use crate::config::{HealthcheckArgs, Settings};

/// `permitd healthcheck`: whether the server answers `GET /healthz` with 200
/// within the timeout. Prints why not to stderr.
pub async fn run(settings: &Settings, args: &HealthcheckArgs) -> bool {
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}/healthz", settings.listen.port()));
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
