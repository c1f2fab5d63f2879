//! `permitd demo`: the scenario from the terminal, printing what the seed
//! script printed: one line per handled request, then the headline.
//!
//! By default it builds the same application the server runs
//! (`Application::build`), on a loopback port of its own for as long as the
//! run lasts, so it uses the store the server would use (Redis when
//! `REDIS_URL` is set) and serves the built-in upstream itself: it needs no
//! running permitd and no network. With `--server` it runs against a running
//! permitd through the Rust client instead, as the seed script ran against
//! its Redis: each request acquires, calls, releases.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use permitd_client::Client;

use crate::config::DemoArgs;
use crate::demo::{
    AllowedHosts, CALL_TIMEOUT, DEADLINE, DemoRequest, RequestResult, Target, headline,
};
use crate::startup::Application;

/// Runs the demo once and prints it.
///
/// # Errors
/// When the arguments are out of bounds, the application cannot be built, or
/// the store fails during the run.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let settings = &args.settings;
    let bounds = settings.request_bounds()?;
    // The terminal is the operator's own: any http(s) host may be called.
    let request = DemoRequest::new(
        args.requests.unwrap_or(bounds.demo.default_requests()),
        args.limit,
        args.delay_ms.unwrap_or(bounds.demo.default_delay_ms()),
        args.upstream.as_deref(),
        &AllowedHosts::Any,
        &bounds.demo,
    )?;
    if let Some(server) = &args.url {
        return run_against(server, args.token.as_deref(), &request).await;
    }
    let mut local = settings.clone();
    local.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    local.embedded = true;
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

/// The fan-out against a running permitd at `server`, through the client.
async fn run_against(
    server: &str,
    token: Option<&str>,
    request: &DemoRequest,
) -> anyhow::Result<()> {
    let (requests, limit) = (request.requests(), request.limit().get());
    let url = match request.target() {
        Target::Url(url) => url.to_string(),
        Target::BuiltIn { delay_ms } => format!(
            "{}/demo/upstream?delay_ms={delay_ms}",
            server.trim_end_matches('/')
        ),
    };
    let mut builder = Client::builder(server);
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let client = builder.build()?;
    let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?;
    let semaphore = client
        .semaphore(&format!("demo-{}", uuid::Uuid::new_v4()))
        .limit(limit);
    let started = Instant::now();
    let in_flight = Arc::new(AtomicU32::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 1..=requests {
        let (semaphore, http, url) = (semaphore.clone(), http.clone(), url.clone());
        let in_flight = in_flight.clone();
        tasks.spawn(async move {
            let ms = |at: Instant| at.duration_since(started).as_secs_f64() * 1000.0;
            let permit = semaphore
                .acquire()
                .ttl(DEADLINE)
                .wait(DEADLINE)
                .holder(format!("demo request {index}"))
                .await;
            let granted = Instant::now();
            let mut result = RequestResult {
                index,
                status: None,
                wait_ms: ms(granted),
                start_ms: ms(granted),
                end_ms: ms(granted),
                error: None,
            };
            let permit = match permit {
                Ok(permit) => permit,
                Err(e) => {
                    result.error = Some(format!("no permit: {e}"));
                    return (result, 0);
                }
            };
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            match http.get(&url).send().await {
                Ok(response) => result.status = Some(response.status().as_u16()),
                Err(e) if e.is_timeout() => result.error = Some("timeout".into()),
                Err(_) => result.error = Some("request".into()),
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
            result.end_ms = ms(Instant::now());
            if let Err(e) = permit.release().await {
                tracing::warn!(error = %e, "a demo permit was not released; its lease ends it");
            }
            (result, now)
        });
    }
    let mut most = 0;
    while let Some(done) = tasks.join_next().await {
        let (result, in_flight) = done?;
        most = most.max(in_flight);
        println!("{}", result.line());
    }
    let total = started.elapsed().as_secs_f64();
    // An admin token removes the demo semaphore; otherwise its idle TTL does.
    let _ = tokio::time::timeout(Duration::from_secs(2), semaphore.delete()).await;
    println!("{}", headline(total, requests, limit));
    tracing::info!(most_in_flight = most, "demo against {server} done");
    Ok(())
}
