//! `permitd demo`: the scenario from the terminal, printing what the seed
//! script printed: one line per handled request, then the headline.
//!
//! It uses the store the server would use (Redis when `REDIS_URL` is set), and
//! serves the built-in upstream from this process on a loopback port for as
//! long as the run lasts, so it needs no running permitd and no network.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{AllowedHosts, DemoConfig, DemoRequest};
use crate::config::{DemoArgs, Settings};
use crate::http::{AccessControl, AppState, HttpLimits, StateParts, router};
use crate::startup::build_store;
use crate::waiting::WaitSettings;

/// Runs the demo once and prints it.
///
/// # Errors
/// When the arguments are out of bounds, the store cannot be built or fails
/// during the run, or no loopback port can be bound.
pub async fn run(settings: &Settings, args: &DemoArgs) -> anyhow::Result<()> {
    let bounds = settings.request_bounds()?;
    // The terminal is the operator's own: any http(s) host may be called.
    let request = DemoRequest::new(
        args.requests.unwrap_or(bounds.demo.default_requests()),
        args.limit,
        args.delay_ms.unwrap_or(bounds.demo.default_delay_ms()),
        args.url.as_deref(),
        &AllowedHosts::Any,
        &bounds.demo,
    )?;
    let store = build_store(settings).await?;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot bind a loopback port for the built-in upstream")?;
    let waiting = WaitSettings {
        recheck: settings.wait_recheck(),
        shutdown: CancellationToken::new(),
    };
    let config = Arc::new(DemoConfig::new(
        listener.local_addr()?,
        AllowedHosts::Any,
        bounds.max_wait_ms,
        waiting.clone(),
    )?);
    // A private loopback server for this run only: no token needed.
    let state = AppState::new(StateParts {
        store: Arc::clone(&store),
        bounds,
        waiting,
        demo: Arc::clone(&config),
        limits: HttpLimits {
            max_body_bytes: settings.max_body_bytes,
            request_timeout: settings.request_timeout(),
        },
        access: AccessControl::open(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let report = super::run(store, &config, &request, |result| {
        println!("{}", result.line());
    })
    .await;
    let _ = stop.send(());
    let _ = server.await;
    println!("{}", report?.summary);
    Ok(())
}
