//! `permitd run`: a command run while holding a permit of a running permitd
//! (like `consul lock`), through the Rust client (`permitd_client`).
//!
//! It waits for the permit, starts the command with the permit's fencing
//! token and id in its environment, and while the command runs the permit
//! refreshes itself, SIGINT and SIGTERM are passed on, and a lost lease stops
//! the command (SIGTERM, then SIGKILL after a grace). When the command exits
//! the permit is released and its status becomes ours. Every other outcome
//! has an exit status of its own (listed in `--help`, from
//! `config::RUN_EXIT_CODES`).

use std::io::ErrorKind;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use permitd_client::{Client, Error, Permit};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::RunArgs;

/// Arguments parsed but unusable (EX_USAGE).
pub const USAGE: u8 = 64;
/// permitd refused the acquire: limit conflict, count above the limit, no
/// such semaphore (EX_DATAERR).
pub const REFUSED: u8 = 65;
/// permitd unreachable or unavailable (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// The lease was lost while the command ran (EX_SOFTWARE).
pub const LEASE_LOST: u8 = 70;
/// No capacity within the wait (EX_TEMPFAIL).
pub const NO_CAPACITY: u8 = 75;
/// Any other answer (EX_PROTOCOL).
pub const PROTOCOL: u8 = 76;
/// Token refused or without the scope (EX_NOPERM).
pub const NO_PERMISSION: u8 = 77;
/// The command exists but could not be run (as shells answer).
pub const CANNOT_RUN: u8 = 126;
/// The command was not found (as shells answer).
pub const NOT_FOUND: u8 = 127;

/// A way `permitd run` ends without the command's own status.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Runs `permitd run` to its end; the exit code says how it ended.
pub async fn run(args: &RunArgs) -> ExitCode {
    match run_under_permit(args).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("permitd run: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// SIGINT and SIGTERM, listened to from before the acquire: a signal while
/// waiting ends the wait, and while the command runs it is passed on.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn listen() -> Result<Self, Failure> {
        let listen = |kind| {
            signal(kind)
                .map_err(|e| Failure::new(PROTOCOL, format!("cannot listen for signals: {e}")))
        };
        Ok(Self {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
        })
    }

    /// The next of the two signals to arrive, as its number.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
        }
    }
}

async fn run_under_permit(args: &RunArgs) -> Result<u8, Failure> {
    let client = client(args)?;
    let program = args
        .command
        .first()
        .ok_or_else(|| Failure::new(USAGE, "no command given after --"))?;
    let holder = args
        .holder
        .clone()
        .unwrap_or_else(|| default_holder(program));
    let mut semaphore = client.semaphore(&args.semaphore);
    if let Some(limit) = args.limit {
        semaphore = semaphore.limit(limit);
    }
    let acquire = semaphore
        .acquire()
        .count(args.count)
        .ttl(Duration::from_millis(args.ttl_ms))
        .wait(Duration::from_millis(args.wait_ms))
        .holder(holder);

    let mut signals = Signals::listen()?;
    let permit = tokio::select! {
        acquired = acquire => acquired.map_err(acquire_failure)?,
        // Dropping the acquire closes its connection: permitd withdraws the
        // waiter, or releases a permit granted in that instant.
        signal = signals.next() => return Ok(signal_status(signal)),
    };

    let mut child = match spawn(args, &permit) {
        Ok(child) => child,
        Err(e) => {
            let code = if e.kind() == ErrorKind::NotFound {
                NOT_FOUND
            } else {
                CANNOT_RUN
            };
            let _ = permit.release().await;
            return Err(Failure::new(code, format!("cannot run {program:?}: {e}")));
        }
    };

    let grace = Duration::from_millis(args.kill_grace_ms);
    let mut lost = None;
    let mut kill_at = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            signal = signals.next() => send_signal(&child, signal),
            reason = permit.lost(), if lost.is_none() => {
                eprintln!("permitd run: permit lost ({reason}); stopping the command");
                send_signal(&child, libc::SIGTERM);
                lost = Some(reason);
                kill_at = Some(tokio::time::Instant::now() + grace);
            }
            () = sleep_until(kill_at) => {
                eprintln!("permitd run: the command outlived the grace; killing it");
                let _ = child.start_kill();
                kill_at = None;
            }
        }
    };
    let status =
        status.map_err(|e| Failure::new(PROTOCOL, format!("waiting for the command: {e}")))?;

    if lost.is_some() {
        // Reported already; releasing may still free the unit sooner when
        // the loss was a refresh permitd never confirmed.
        let _ = permit.release().await;
        return Err(Failure::new(
            LEASE_LOST,
            format!("the command ran without a lease and was stopped ({status})"),
        ));
    }
    match permit.release().await {
        Ok(()) => Ok(exit_code(status)),
        Err(Error::PermitLost(reason)) => Err(Failure::new(
            LEASE_LOST,
            format!("the permit was lost by the time the command exited ({reason}); {status}"),
        )),
        Err(e) => {
            // The lease was kept while the command ran; only the release
            // failed, and the lease runs out by itself.
            eprintln!("permitd run: release failed ({e}); the lease will run out by itself");
            Ok(exit_code(status))
        }
    }
}

fn client(args: &RunArgs) -> Result<Client, Failure> {
    let mut builder = Client::builder(&args.url);
    if let Some(token) = &args.token {
        builder = builder.token(token.expose());
    }
    builder
        .build()
        .map_err(|e| Failure::new(USAGE, e.to_string()))
}

/// The exit status and message of an acquire that failed.
fn acquire_failure(error: Error) -> Failure {
    let code = match &error {
        Error::NoCapacity { .. } => NO_CAPACITY,
        Error::Unavailable { .. } => UNAVAILABLE,
        Error::LimitConflict { .. } | Error::CountExceedsLimit { .. } | Error::NotFound(_) => {
            REFUSED
        }
        Error::Unauthorized(_) | Error::Forbidden(_) => NO_PERMISSION,
        // A 400: a value outside the server's bounds (ttl, holder).
        Error::InvalidArgument(_) | Error::Api { status: 400, .. } => USAGE,
        _ => PROTOCOL,
    };
    // When to try again, for a caller that loops over `permitd run`.
    let retry = match &error {
        Error::NoCapacity {
            retry_after: Some(after),
            ..
        } => format!(" (retry after {} ms)", after.as_millis()),
        _ => String::new(),
    };
    Failure::new(code, format!("no permit: {error}{retry}"))
}

/// Starts the command with the permit in its environment. If permitd run
/// dies, the command gets SIGTERM: nobody refreshes the lease any more.
fn spawn(args: &RunArgs, permit: &Permit) -> std::io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .env("PERMITD_FENCING_TOKEN", permit.fencing_token().to_string())
        .env("PERMITD_PERMIT_ID", permit.id())
        .env("PERMITD_SEMAPHORE", permit.semaphore());
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe and touch no shared
    // state. The death signal follows the thread that forks; this runs on
    // the main thread (the command's future is awaited by `main`), which
    // lives as long as the process.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            // permitd run died before the line above took effect.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("permitd run exited"));
            }
            Ok(())
        });
    }
    command.spawn()
}

fn send_signal(child: &tokio::process::Child, signal: i32) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // SAFETY: kill has no memory effects; the pid is our own unreaped
        // child, so it cannot name another process.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The command's exit code, or 128 + the signal that killed it (as shells
/// report it).
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => signal_status(signal),
        (None, None) => 1,
    }
}

fn signal_status(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(255)
}

/// The command's name and this process's id, within permitd's 128 characters.
fn default_holder(program: &str) -> String {
    let name = program.rsplit('/').next().unwrap_or(program);
    let name: String = name.chars().filter(|c| !c.is_control()).take(80).collect();
    format!("permitd run {name} (pid {})", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_exit_code() {
        for code in [
            USAGE,
            REFUSED,
            UNAVAILABLE,
            LEASE_LOST,
            NO_CAPACITY,
            PROTOCOL,
            NO_PERMISSION,
            CANNOT_RUN,
            NOT_FOUND,
        ] {
            assert!(
                crate::config::RUN_EXIT_CODES.contains(&format!("{code} ")),
                "{code} is not in --help"
            );
        }
    }

    #[test]
    fn each_acquire_error_has_its_code() {
        let cases = [
            (
                Error::NoCapacity {
                    limit: None,
                    held: None,
                    available: None,
                    retry_after: None,
                },
                NO_CAPACITY,
            ),
            (
                Error::Unavailable {
                    reason: "x".into(),
                    retry_after: None,
                },
                UNAVAILABLE,
            ),
            (Error::LimitConflict { current: Some(2) }, REFUSED),
            (Error::Unauthorized(Default::default()), NO_PERMISSION),
            (Error::InvalidArgument("x".into()), USAGE),
        ];
        for (error, code) in cases {
            assert_eq!(acquire_failure(error).code, code);
        }
    }

    #[test]
    fn the_default_holder_is_short_and_printable() {
        let holder = default_holder(&format!("/usr/bin/{}\n", "x".repeat(300)));
        assert!(holder.len() <= 128 && !holder.contains('\n'), "{holder}");
        assert!(default_holder("pg_dump").starts_with("permitd run pg_dump (pid "));
    }
}
