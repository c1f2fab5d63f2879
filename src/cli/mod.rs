//! The binary's commands, one module each: `serve` (the default), `demo`,
//! `healthcheck`, `run`, and `openapi` (small enough to live here). `main` only
//! parses the command line and hands it to [`run`].

mod demo;
mod healthcheck;
mod run;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Cli, Command, ServerArgs};

/// The command line of this process, or the process exits with clap's
/// message: status 0 for `--help` and `--version`, 2 for a bad command line,
/// except 64 (EX_USAGE) for `permitd run`, whose own status 2 would read as
/// its command's.
pub fn parse() -> Cli {
    Cli::try_parse().unwrap_or_else(|e| {
        if e.use_stderr() && names_run(std::env::args().skip(1)) {
            let _ = e.print();
            std::process::exit(i32::from(run::USAGE));
        }
        e.exit()
    })
}

/// Whether a command line names `run`, before any `--` (after it come the
/// command's own arguments).
fn names_run(args: impl Iterator<Item = String>) -> bool {
    args.take_while(|a| a != "--").any(|a| a == "run")
}

/// Runs the command the command line names (serving when it names none).
///
/// # Errors
/// When the settings are inconsistent, or the command itself fails.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = cli.command.unwrap_or_else(|| {
        Command::Serve(Box::new(ServerArgs {
            settings: cli.settings,
        }))
    });
    match command {
        Command::Serve(args) => {
            let settings = args.settings;
            crate::telemetry::init(settings.log_format);
            serve::run(&settings).await?;
        }
        Command::Demo(args) => {
            // Stdout is the demo's own output; logs go to stderr.
            crate::telemetry::init_for_terminal(args.settings.log_format);
            demo::run(&args).await?;
        }
        Command::Healthcheck(args) => {
            // No logging set up: the exit status is the answer.
            if !healthcheck::run(&args).await {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Run(args) => {
            // The command's output is its own; ours (and the client's
            // warnings) go to stderr.
            crate::telemetry::init_for_terminal(crate::telemetry::LogFormat::Pretty);
            return Ok(run::run(&args).await);
        }
        Command::Openapi(args) => {
            let settings = args.settings;
            print!(
                "{}",
                crate::http::document_yaml(&settings.request_bounds()?)?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_is_found_before_the_command_only() {
        let args = |line: &str| line.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(names_run(args("run --semaphore s -- x").into_iter()));
        assert!(!names_run(args("demo -- run").into_iter()));
        assert!(!names_run(args("--listen 0:1").into_iter()));
    }
}
