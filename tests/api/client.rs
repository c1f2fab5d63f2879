//! The Rust client (`permitd_client`) and `permitd run`, against the real
//! `permitd` binary on each store: permits held, refreshed, lost and
//! released through the client; `permitd run` processes (the same binary)
//! sharing a limit, passing statuses on, and stopping their command when the
//! lease is lost.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use permitd_client::{Client, Error, LostReason};
use serde_json::json;

use crate::helpers::{ApiClient, Harness, Store, free_port, on_each_store, permitd_command};

on_each_store!(
    a_permit_is_acquired_and_released,
    the_background_refresh_keeps_a_short_lease_alive,
    a_different_limit_is_a_limit_conflict,
    create_makes_shares_or_refuses_and_status_lists_the_holders,
    a_full_semaphore_is_no_capacity_after_the_wait,
    dropping_a_permit_releases_it,
    a_wait_longer_than_the_server_allows_is_several_long_polls,
    a_deleted_permit_is_reported_lost,
    a_wait_longer_than_the_lease_keeps_the_permit_it_ends_with,
    runs_with_a_limit_of_one_never_overlap,
    a_lost_answer_is_retried_without_a_second_permit,
    a_503_is_retried_after_its_retry_after,
);

fn client_of(api: &ApiClient) -> Client {
    Client::new(&format!("http://{}", api.addr)).unwrap()
}

async fn held(api: &ApiClient, name: &str) -> u64 {
    api.status(name).await["held"].as_u64().unwrap()
}

/// Polls until `name` holds `n` units, or panics after `within`.
async fn until_held(api: &ApiClient, name: &str, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = held(api, name).await;
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "held stayed {now}, wanted {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_permit_is_acquired_and_released(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let client = client_of(&app);
    let permit = client
        .semaphore("payments")
        .limit(2)
        .acquire()
        .holder("worker-7")
        .await
        .unwrap();
    assert!(permit.fencing_token() > 0);
    assert_eq!((permit.semaphore(), permit.count()), ("payments", 1));
    assert_eq!(permit.holder(), Some("worker-7"));
    // The server's default lease, read from the grant.
    assert_eq!(permit.lease(), Duration::from_secs(30));
    let status = client.semaphore("payments").status().await.unwrap();
    assert_eq!((status.limit, status.held, status.available), (2, 1, 1));

    let second = client.semaphore("payments").acquire().await.unwrap();
    assert!(second.fencing_token() > permit.fencing_token());
    permit.release().await.unwrap();
    second.release().await.unwrap();
    assert_eq!(held(&app, "payments").await, 0);

    // No limit: an unknown semaphore is not found, not created.
    let unknown = client.semaphore("nobody").acquire().await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
}

async fn the_background_refresh_keeps_a_short_lease_alive(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let client = client_of(&app);
    let permit = client
        .semaphore("s")
        .limit(1)
        .acquire()
        .ttl(Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(permit.lease(), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(permit.lost_reason(), None);
    assert_eq!(held(&app, "s").await, 1, "three leases later, still held");
    let refused = client.semaphore("s").acquire().await;
    assert!(matches!(refused, Err(Error::NoCapacity { .. })));
    permit.release().await.unwrap();
}

async fn a_different_limit_is_a_limit_conflict(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let client = client_of(&app);
    let permit = client.semaphore("s").limit(2).acquire().await.unwrap();
    let conflict = client.semaphore("s").limit(3).acquire().await;
    assert!(
        matches!(conflict, Err(Error::LimitConflict { current: Some(2) })),
        "{conflict:?}"
    );
    let too_many = client.semaphore("s").acquire().count(3).await;
    assert!(
        matches!(too_many, Err(Error::CountExceedsLimit { limit: Some(2) })),
        "{too_many:?}"
    );
    permit.release().await.unwrap();
}

async fn create_makes_shares_or_refuses_and_status_lists_the_holders(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let client = client_of(&app);
    assert!(client.ready().await);
    let made = client.semaphore("c").limit(2).create().await.unwrap();
    assert_eq!((made.limit, made.held), (2, 0));
    let shared = client.semaphore("c").limit(2).create().await.unwrap();
    assert_eq!(shared.limit, 2);
    let other = client.semaphore("c").limit(3).create().await;
    assert!(
        matches!(other, Err(Error::LimitConflict { current: Some(2) })),
        "{other:?}"
    );
    let permit = client.semaphore("c").acquire().holder("w-1").await.unwrap();
    let status = client.semaphore("c").status().await.unwrap();
    assert_eq!(status.holders.len(), 1);
    assert_eq!(status.holders[0].holder.as_deref(), Some("w-1"));
    assert_eq!(status.holders[0].fencing_token, permit.fencing_token());
    let raised = client.semaphore("c").set_limit(5).await.unwrap();
    assert_eq!((raised.limit, raised.held), (5, 1));
    permit.release().await.unwrap();
    let down = Client::new(&format!("http://127.0.0.1:{}", free_port())).unwrap();
    assert!(!down.ready().await);
}

async fn a_full_semaphore_is_no_capacity_after_the_wait(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let client = client_of(&app);
    let permit = client.semaphore("s").limit(1).acquire().await.unwrap();
    let started = Instant::now();
    let full = client
        .semaphore("s")
        .limit(1)
        .acquire()
        .wait(Duration::from_millis(300))
        .await;
    let Err(Error::NoCapacity {
        limit,
        held,
        available,
        retry_after,
    }) = full
    else {
        panic!("{full:?}")
    };
    assert_eq!((limit, held, available), (Some(1), Some(1), Some(0)));
    assert!(retry_after.is_some_and(|d| d >= Duration::from_secs(1)));
    assert!(started.elapsed() >= Duration::from_millis(290), "it waited");
    permit.release().await.unwrap();
}

async fn dropping_a_permit_releases_it(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let client = client_of(&app);
    let permit = client.semaphore("s").limit(1).acquire().await.unwrap();
    assert_eq!(held(&app, "s").await, 1);
    drop(permit);
    // The lease is 30 s: only the release on drop frees it this soon.
    until_held(&app, "s", 0, Duration::from_secs(2)).await;
}

async fn a_wait_longer_than_the_server_allows_is_several_long_polls(store: Store) {
    let app = Harness::new(store)
        .binary()
        .arg("--max-wait-ms")
        .arg("1000")
        .start()
        .await;
    let client = client_of(&app);
    let holder = client.semaphore("s").limit(1).acquire().await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1800)).await;
        holder.release().await.unwrap();
    });
    let started = Instant::now();
    let permit = client
        .semaphore("s")
        .limit(1)
        .acquire()
        .wait(Duration::from_millis(2500))
        .await
        .unwrap();
    let took = started.elapsed();
    // Granted after the release at ~1.8 s: past one server wait of 1 s.
    assert!(took >= Duration::from_millis(1700), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    release.await.unwrap();
    permit.release().await.unwrap();
}

/// The lease counts from the grant, not from the long poll's sending: a
/// permit granted after waiting three leases is held, and kept alive, for
/// several leases more.
async fn a_wait_longer_than_the_lease_keeps_the_permit_it_ends_with(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let client = client_of(&app);
    let lease = Duration::from_secs(1);
    let holder = client
        .semaphore("s")
        .limit(1)
        .acquire()
        .ttl(lease)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(3 * lease).await;
        holder.release().await.unwrap();
    });
    let permit = client
        .semaphore("s")
        .limit(1)
        .acquire()
        .ttl(lease)
        .wait(Duration::from_secs(10))
        .await
        .unwrap();
    release.await.unwrap();
    let first_end = app.status("s").await["holders"][0]["expires_at"].clone();
    tokio::time::sleep(3 * lease).await;
    assert_eq!(permit.lost_reason(), None, "three leases into the hold");
    let status = app.status("s").await;
    assert_eq!(status["held"], 1);
    assert_ne!(status["holders"][0]["expires_at"], first_end, "refreshed");
    permit.release().await.unwrap();
    assert_eq!(held(&app, "s").await, 0);
}

async fn a_deleted_permit_is_reported_lost(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let client = client_of(&app);
    let permit = client
        .semaphore("s")
        .limit(1)
        .acquire()
        .ttl(Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(app.delete("/semaphores/s").await.status(), 204);
    // The next refresh (a third of the lease) finds it gone.
    let reason = tokio::time::timeout(Duration::from_secs(2), permit.lost())
        .await
        .expect("the loss is reported within the lease");
    assert_eq!(reason, LostReason::Ended);
    let released = permit.release().await;
    assert!(
        matches!(released, Err(Error::PermitLost(LostReason::Ended))),
        "{released:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_within_a_bounded_time() {
    let client = Client::builder(&format!("http://127.0.0.1:{}", free_port()))
        .server_max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let answer = client
        .semaphore("s")
        .limit(1)
        .acquire()
        .wait(Duration::from_secs(1))
        .await;
    assert!(
        matches!(answer, Err(Error::Unavailable { .. })),
        "{answer:?}"
    );
    // Retried within the wait and the client's 2 s retry window, no longer.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// Connection errors are retried for as long as the caller waits: an
/// outage may outlast any count of retries (10 used to end a wait of any
/// length after about 13 s).
#[tokio::test]
async fn an_unreachable_server_is_retried_for_the_whole_wait() {
    let client = Client::builder(&format!("http://127.0.0.1:{}", free_port()))
        .server_max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let wait = Duration::from_secs(18);
    let started = Instant::now();
    let answer = client.semaphore("s").limit(1).acquire().wait(wait).await;
    assert!(
        matches!(answer, Err(Error::Unavailable { .. })),
        "{answer:?}"
    );
    // A retry that cannot start within the wait is not made: the error may
    // come up to one backoff (at most 2 s) early.
    let took = started.elapsed();
    assert!(
        took >= wait - Duration::from_secs(2),
        "gave up after {took:?}"
    );
    assert!(took < wait + Duration::from_secs(1), "{took:?}");
}

// ---- permitd run ----

/// A directory of its own for one test's files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("permitd-run-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `permitd run --url <app> --semaphore s <flags> -- sh -c <script>`.
fn permitd_run(api: &ApiClient, flags: &[&str], script: &str) -> tokio::process::Command {
    let mut command = permitd_command();
    command
        .env_remove("PERMITD_URL")
        .env_remove("PERMITD_TOKEN")
        .args(["run", "--url", &format!("http://{}", api.addr)])
        .args(["--semaphore", "s"])
        .args(flags)
        .args(["--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs it to the end; its exit code and stderr.
async fn exit_of(mut command: tokio::process::Command) -> (i32, String) {
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("permitd run ends")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().expect("an exit code"), stderr)
}

/// Polls until `file` in `scratch` contains `text`.
async fn until_written(scratch: &Scratch, file: &str, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !scratch.read(file).contains(text) {
        assert!(Instant::now() < deadline, "{file} never said {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn runs_with_a_limit_of_one_never_overlap(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let scratch = Scratch::new();
    let log = scratch.file("log");
    let runs: Vec<_> = (0..4)
        .map(|n| {
            let script =
                format!("echo \"start {n}\" >> {log}; sleep 0.3; echo \"end {n}\" >> {log}");
            permitd_run(&app, &["--limit", "1", "--wait-ms", "20000"], &script)
        })
        .map(|command| tokio::spawn(exit_of(command)))
        .collect();
    for run in runs {
        let (code, stderr) = run.await.unwrap();
        assert_eq!(code, 0, "{stderr}");
    }
    // Each run's start is followed by its own end before any other start.
    let lines: Vec<String> = scratch.read("log").lines().map(String::from).collect();
    assert_eq!(lines.len(), 8, "all four ran: {lines:?}");
    let mut ran = Vec::new();
    for pair in lines.chunks(2) {
        let n = pair[0].strip_prefix("start ").expect("a start");
        assert_eq!(pair[1], format!("end {n}"), "overlap in {lines:?}");
        ran.push(n.to_owned());
    }
    ran.sort();
    assert_eq!(ran, ["0", "1", "2", "3"]);
    assert_eq!(held(&app, "s").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_passes_the_commands_status_and_the_permit_on() {
    let app = Harness::new(Store::Memory).binary().start().await;
    let scratch = Scratch::new();
    let (code, stderr) = exit_of(permitd_run(&app, &["--limit", "1"], "exit 7")).await;
    assert_eq!(code, 7, "{stderr}");
    let (code, _) = exit_of(permitd_run(&app, &["--limit", "1"], "kill -9 $$")).await;
    assert_eq!(code, 128 + 9, "killed by SIGKILL");

    let env = scratch.file("env");
    let script = format!("echo \"$PERMITD_FENCING_TOKEN $PERMITD_PERMIT_ID\" > {env}");
    let (code, stderr) = exit_of(permitd_run(&app, &["--limit", "1"], &script)).await;
    assert_eq!(code, 0, "{stderr}");
    let written = scratch.read("env");
    let (token, id) = written.trim().split_once(' ').expect("both set");
    assert!(token.parse::<u64>().is_ok_and(|t| t > 0), "{written}");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{written}");
    assert_eq!(held(&app, "s").await, 0, "released after the command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_capacity_exits_75_without_running_the_command() {
    let app = Harness::new(Store::Memory).binary().start().await;
    let taken = app.acquire("s", json!({"limit": 1})).await;
    assert_eq!(taken.status(), 201);
    let scratch = Scratch::new();
    let script = format!("touch {}", scratch.file("ran"));
    let flags = ["--limit", "1", "--wait-ms", "300"];
    let (code, stderr) = exit_of(permitd_run(&app, &flags, &script)).await;
    assert_eq!(code, 75, "{stderr}");
    assert!(!std::path::Path::new(&scratch.file("ran")).exists());
    // When to try again; and plain text on a pipe, no colour codes.
    assert!(stderr.contains("retry after"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_usage_unreachable_and_refusals_by_their_codes() {
    let app = Harness::new(Store::Memory).binary().start().await;
    let (code, _) = exit_of(permitd_run(&app, &["--limit", "0"], "true")).await;
    assert_eq!(code, 64, "limit 0");
    let mut no_semaphore = permitd_command();
    no_semaphore.args(["run", "--url", "http://127.0.0.1:1", "--", "true"]);
    assert_eq!(exit_of(no_semaphore).await.0, 64, "--semaphore missing");

    let unreachable = ApiClient {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], free_port())),
        client: reqwest::Client::new(),
    };
    let (code, stderr) = exit_of(permitd_run(&unreachable, &["--wait-ms", "0"], "true")).await;
    assert_eq!(code, 69, "{stderr}");

    let (code, _) = exit_of(permitd_run(&app, &[], "true")).await;
    assert_eq!(code, 65, "no such semaphore and no --limit");
    let (code, _) = exit_of(permitd_run(&app, &["--limit", "1"], "true")).await;
    assert_eq!(code, 0);
    let (code, _) = exit_of(permitd_run(&app, &["--limit", "2"], "true")).await;
    assert_eq!(code, 65, "another limit");
}

/// A script that records the SIGTERM it gets in `file` and exits 143, and
/// otherwise sleeps for 30 s.
fn stoppable(file: &str) -> String {
    format!(
        "sleep 30 & sleeper=$!; \
         trap 'echo stopped >> {file}; kill $sleeper; exit 143' TERM; \
         echo running >> {file}; wait"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_command_and_exits_70() {
    let app = Harness::new(Store::Memory).binary().start().await;
    let scratch = Scratch::new();
    let marks = scratch.file("marks");
    let flags = [
        "--limit",
        "1",
        "--ttl-ms",
        "1000",
        "--kill-grace-ms",
        "2000",
    ];
    let run = tokio::spawn(exit_of(permitd_run(&app, &flags, &stoppable(&marks))));
    until_written(&scratch, "marks", "running", Duration::from_secs(5)).await;
    assert_eq!(app.delete("/semaphores/s").await.status(), 204);
    let started = Instant::now();
    let (code, stderr) = run.await.unwrap();
    assert_eq!(code, 70, "{stderr}");
    assert!(
        scratch.read("marks").contains("stopped"),
        "the command got SIGTERM"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped at the next refresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_passed_to_the_command_and_the_permit_released() {
    let app = Harness::new(Store::Memory).binary().start().await;
    let scratch = Scratch::new();
    let marks = scratch.file("marks");
    let mut command = permitd_run(&app, &["--limit", "1"], &stoppable(&marks));
    let child = command.spawn().unwrap();
    until_written(&scratch, "marks", "running", Duration::from_secs(5)).await;
    let pid = i32::try_from(child.id().unwrap()).unwrap();
    // SAFETY: kill has no memory effects; the pid is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(143), "the command's own status");
    assert!(scratch.read("marks").contains("stopped"));
    assert_eq!(held(&app, "s").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_frees_the_unit_within_the_lease() {
    let app = Harness::new(Store::Memory).binary().start().await;
    let scratch = Scratch::new();
    let marks = scratch.file("marks");
    let flags = ["--limit", "1", "--ttl-ms", "1000"];
    let mut child = permitd_run(&app, &flags, &stoppable(&marks))
        .spawn()
        .unwrap();
    until_written(&scratch, "marks", "running", Duration::from_secs(5)).await;
    assert_eq!(held(&app, "s").await, 1);
    child.kill().await.unwrap(); // SIGKILL: no release
    let killed = Instant::now();
    // Nobody refreshes any more, so the command is told to stop...
    until_written(&scratch, "marks", "stopped", Duration::from_secs(5)).await;
    // ... and the lease (1 s, refreshed at most 1 s before) runs out.
    until_held(&app, "s", 0, Duration::from_millis(1500)).await;
    assert!(killed.elapsed() <= Duration::from_millis(1500));
    let again = app.acquire("s", json!({"limit": 1})).await;
    assert_eq!(again.status(), 201);
}

// ---- retries through a faulty proxy ----

/// What the proxy does to the first acquire it sees; every other request is
/// passed through unchanged.
#[derive(Clone, Copy)]
enum FirstAcquire {
    /// Passed on to permitd, its answer held back for 2 s (longer than the
    /// client waits): permitd granted a permit the client never heard of.
    AnswerLost,
    /// Answered 503 with `Retry-After: 1`, never passed on.
    Unavailable,
}

/// An HTTP proxy in front of `api` that breaks the first acquire as told;
/// returns its address and how many acquires reached it.
async fn faulty_proxy(
    api: &ApiClient,
    fault: FirstAcquire,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let acquires = Arc::new(AtomicUsize::new(0));
    let seen = acquires.clone();
    let target = format!("http://{}", api.addr);
    let http = reqwest::Client::new();
    let forward = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (http, target, seen) = (http.clone(), target.clone(), seen.clone());
        async move {
            let acquire = method == Method::POST && uri.path().ends_with("/permits");
            let first = acquire && seen.fetch_add(1, Ordering::SeqCst) == 0;
            if first && matches!(fault, FirstAcquire::Unavailable) {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    Vec::new(),
                );
            }
            let mut request = http
                .request(method, format!("{target}{uri}"))
                .body(body.to_vec());
            for name in ["idempotency-key", "content-type", "authorization"] {
                if let Some(value) = headers.get(name) {
                    request = request.header(name, value.as_bytes());
                }
            }
            let response = request.send().await.unwrap();
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let body = response.bytes().await.unwrap().to_vec();
            if first {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            (status, [("retry-after", "1")], body)
        }
    };
    let router = axum::Router::new().fallback(forward);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, acquires)
}

async fn a_lost_answer_is_retried_without_a_second_permit(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let (proxy, acquires) = faulty_proxy(&app, FirstAcquire::AnswerLost).await;
    let client = Client::builder(&format!("http://{proxy}"))
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let permit = client.semaphore("s").limit(2).acquire().await.unwrap();
    assert_eq!(
        acquires.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one retry"
    );
    // The retry got the permit the first call took (same key), not another.
    assert_eq!(held(&app, "s").await, 1);
    permit.release().await.unwrap();
    assert_eq!(held(&app, "s").await, 0);
}

async fn a_503_is_retried_after_its_retry_after(store: Store) {
    let app = Harness::new(store).binary().start().await;
    let (proxy, acquires) = faulty_proxy(&app, FirstAcquire::Unavailable).await;
    let client = Client::new(&format!("http://{proxy}")).unwrap();
    let started = Instant::now();
    // Trying once, yet retried within the client's retry window.
    let permit = client.semaphore("s").limit(1).acquire().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(acquires.load(std::sync::atomic::Ordering::SeqCst), 2);
    permit.release().await.unwrap();
}
