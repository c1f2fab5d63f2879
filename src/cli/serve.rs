//! `permitd` / `permitd serve`: serve HTTP until Ctrl-C or SIGTERM (a second
//! one ends the shutdown delay).

use crate::config::Settings;
use crate::startup::Application;

/// # Errors
/// When the application cannot be built or stops accepting connections.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    crate::startup::raise_descriptor_limit();
    let app = Application::build(settings).await?;
    let signals = signals();
    let (first, second) = (signals.clone(), signals);
    app.hurried_by(nth_signal(second, 2))
        .run_until_stopped(async move {
            nth_signal(first, 1).await;
            tracing::info!("shutdown signal received");
        })
        .await?;
    tracing::info!("permitd stopped");
    Ok(())
}

/// How many times Ctrl-C or SIGTERM (what container runtimes send) came,
/// counted by a task that listens for both.
fn signals() -> tokio::sync::watch::Receiver<u32> {
    let (count, counted) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let terminated = async {
                match terminate.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = terminated => {}
            }
            count.send_modify(|n| *n += 1);
        }
    });
    counted
}

/// Completes once the `n`th signal came.
async fn nth_signal(mut counted: tokio::sync::watch::Receiver<u32>, n: u32) {
    // The sender lives as long as the task, which never ends.
    let _ = counted.wait_for(|&count| count >= n).await;
}
