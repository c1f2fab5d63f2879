//! `permitd demo`: the scenario from the terminal, printing what the seed
//! script printed: one line per handled request, then the headline.
//!
//! It builds the same application the server runs (`Application::build`), on
//! a loopback port of its own for as long as the run lasts, so it uses the
//! store the server would use (Redis when `REDIS_URL` is set) and serves the
//! built-in upstream itself: it needs no running permitd and no network.

use std::net::SocketAddr;

use crate::config::{DemoArgs, Settings};
use crate::demo::{AllowedHosts, DemoRequest};
use crate::startup::Application;

/// Runs the demo once and prints it.
///
/// # Errors
/// When the arguments are out of bounds, the application cannot be built, or
/// the store fails during the run.
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
    let mut local = settings.clone();
    local.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let app = Application::build(&local).await?;
    let state = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let report = crate::demo::run(state.store.clone(), &state.demo, &request, |result| {
        println!("{}", result.line());
    })
    .await;
    let _ = stop.send(());
    let _ = server.await;
    println!("{}", report?.summary);
    Ok(())
}
