//! The binary's commands, one module each: `serve` (the default), `demo`,
//! `healthcheck`, and `openapi` (small enough to live here). `main` only
//! parses the command line and hands it to [`run`].

mod demo;
mod healthcheck;
mod serve;

use std::process::ExitCode;

use crate::config::{Cli, Command};

/// Runs the command the command line names (serving when it names none).
///
/// # Errors
/// When the settings are inconsistent, or the command itself fails.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.settings;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            crate::telemetry::init(settings.log_format);
            serve::run(&settings).await?;
        }
        Command::Demo(args) => {
            // Stdout is the demo's own output; logs go to stderr.
            crate::telemetry::init_for_terminal(settings.log_format);
            demo::run(&settings, &args).await?;
        }
        Command::Healthcheck(args) => {
            // No logging set up: the exit status is the answer.
            if !healthcheck::run(&settings, &args).await {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Openapi => {
            print!(
                "{}",
                crate::http::document_yaml(&settings.request_bounds()?)?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
