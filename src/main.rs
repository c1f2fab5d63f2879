//! The permitd binary: parse the command line, start logging, run the command
//! (by default: serve until signalled).

use clap::Parser;
use permitd::config::{Cli, Command};
use permitd::startup::Application;

// malloc and free were an eighth of the server's CPU under load (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Demo(args) => {
            // Stdout is the demo's own output; logs go to stderr.
            permitd::telemetry::init_for_terminal(cli.settings.log_format);
            permitd::demo::cli::run(&cli.settings, &args).await?;
        }
        Command::Healthcheck(args) => {
            // No logging set up: the exit status is the answer.
            let healthy = permitd::startup::healthcheck(&cli.settings, &args).await;
            std::process::exit(if healthy { 0 } else { 1 });
        }
        Command::Serve => {
            permitd::telemetry::init(cli.settings.log_format);
            let app = Application::build(&cli.settings).await?;
            app.run_until_stopped(shutdown_signal()).await?;
            tracing::info!("permitd stopped");
        }
        Command::Openapi => {
            print!(
                "{}",
                permitd::http::openapi::yaml(&cli.settings.request_bounds()?)?
            );
        }
    }
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
