//! The permitd binary: parse settings, start logging, serve until signalled.

use clap::Parser;
use permitd::config::Settings;
use permitd::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    permitd::telemetry::init(settings.log_format);
    let app = Application::build(&settings).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("permitd stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM (what container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received, draining");
}
