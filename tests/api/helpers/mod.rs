//! The one test harness: which store a test runs on, a private Redis per
//! test, permitd started in-process or as the real binary, and the HTTP
//! helpers both share.
//!
//! - [`Store`] and [`on_each_store!`]: a scenario written once as
//!   `async fn name(store: Store)` runs as `memory::name` and `redis::name`.
//! - [`RedisServer`]: a real `redis-server` on a free port, in its own
//!   directory, that a test may kill, restart, pause or configure.
//! - [`cluster::RedisCluster`] (3 masters + 3 replicas) and
//!   [`sentinel::SentinelSetup`] (master, replica, 3 sentinels): real ones,
//!   shared per binary or private to a test that fails them over.
//! - [`Harness`]: one store and the permitd instances started on it, with
//!   settings customised by a closure; [`spawn_app`] for the common case.
//! - [`BinaryApp`]: the `permitd` binary as a child process, for crashes and
//!   for what only the real process shows (its logs, its exit code).
//!
//! Logs of the apps under test are shown only with `TEST_LOG=1` (filtered
//! by `RUST_LOG` as usual).

mod app;
pub mod cluster;
mod redis_server;
pub mod sentinel;

pub use app::{
    ApiClient, BinaryApp, BinaryBuilder, Harness, TestApp, Waited, spawn_app, spawn_app_with,
};
// The crate paths that are expected to move live here only, so a move is
// one line to change.
pub use permitd::http::RequestBounds;
pub use permitd::secret::Secret;
pub use redis_server::{RedisServer, Reply};

use std::net::TcpListener;
use std::sync::Once;

use serde_json::Value;

/// Which store the app under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The embedded store: one process, nothing shared.
    Memory,
    /// A private `redis-server`, started for the test.
    Redis,
    /// Cluster mode, on the binary's shared 3+3 cluster (own key prefix).
    Cluster,
    /// Sentinel mode, on the binary's shared Sentinel setup (own prefix).
    Sentinel,
}

impl Store {
    /// The store's name as the API reports it (`SemaphoreStore::kind`).
    pub fn kind(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Redis | Store::Cluster | Store::Sentinel => "redis",
        }
    }
}

/// Runs each `async fn scenario(store: Store)` on both stores, as the tests
/// `memory::scenario` and `redis::scenario`, so the stores cannot drift apart.
macro_rules! on_each_store {
    ($($scenario:ident),* $(,)?) => {
        $crate::helpers::on_each_store!(@store memory Memory $($scenario),*);
        $crate::helpers::on_each_store!(@store redis Redis $($scenario),*);
    };
    (@store $module:ident $store:ident $($scenario:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::helpers::Store::$store).await;
                }
            )*
        }
    };
}
pub(crate) use on_each_store;

/// Like [`on_each_store!`], and also on a Redis Cluster and behind Sentinel
/// (`cluster::scenario`, `sentinel::scenario`): for what every deployment
/// must keep.
macro_rules! on_every_deployment {
    ($($scenario:ident),* $(,)?) => {
        $crate::helpers::on_each_store!($($scenario),*);
        $crate::helpers::on_each_store!(@store cluster Cluster $($scenario),*);
        $crate::helpers::on_each_store!(@store sentinel Sentinel $($scenario),*);
    };
}
pub(crate) use on_every_deployment;

/// Runs `start` on a thread that then parks for the rest of the test binary,
/// and returns what it made: servers started there die with the binary (see
/// [`die_with_parent`]), not with the test thread that first asked.
fn on_a_parked_thread<T: Send + 'static>(start: fn() -> T) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(start());
        loop {
            std::thread::park();
        }
    });
    receiver.recv().expect("the servers started")
}

/// A port that was free on 127.0.0.1 a moment ago. Whoever binds it may
/// lose a race to another process, so callers retry on a failed start.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Whether the test run asked for the apps' logs (`TEST_LOG=1`).
fn logs_wanted() -> bool {
    std::env::var_os("TEST_LOG").is_some_and(|v| v == "1")
}

/// With `TEST_LOG=1`, installs (once per test binary) a subscriber that
/// writes through the test harness's capture, so each test's logs appear
/// with its own output.
fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if logs_wanted() {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("permitd=debug,info"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Kills a child process (redis-server, permitd) when the thread that
/// started it ends, so a test binary killed mid-run leaves nothing behind.
fn die_with_parent(command: &mut std::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no shared state.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The `permitd` binary as a command-line tool (`permitd demo`,
/// `permitd healthcheck`), on the memory store whatever the environment says.
pub fn permitd_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_permitd"));
    command.env_remove("REDIS_URL").kill_on_drop(true);
    command
}

/// Asserts that a response is a problem+json with `status`, and returns it.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}

/// A permit's URL, from the acquire answer's `semaphore` and `id`.
pub fn permit_path(permit: &Value) -> String {
    format!(
        "/semaphores/{}/permits/{}",
        permit["semaphore"].as_str().unwrap(),
        permit["id"].as_str().unwrap()
    )
}
