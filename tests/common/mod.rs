//! Test harness: a real `redis-server` per test on a free port, and permitd
//! applications started in-process on port 0.
//!
//! Each test gets its own Redis (no FLUSHALL, no serialised tests). The server
//! runs with `--save "" --appendonly no` and is killed when its guard drops;
//! on Linux it is also told to die with the test thread that started it, so a
//! test binary killed mid-run leaves no server behind.

#![allow(dead_code)]

pub mod browser;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use permitd::config::Settings;
use permitd::startup::Application;
use serde_json::Value;
use tokio::sync::oneshot;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

impl RedisServer {
    pub fn start() -> Self {
        // A port found free may be taken before redis-server binds it; retry.
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                port: free_port(),
            };
            if server.launch() {
                return server;
            }
        }
        panic!("redis-server did not start after 5 attempts");
    }

    fn launch(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no shared state.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed; the tests need a real Redis. Install the Debian \
                 package: `sudo apt-get install -y redis-server` (scripts/test does this for you)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        false
    }

    fn ping(&self) -> bool {
        self.command("PING").is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one inline command and returns the raw reply, or `None` if Redis
    /// does not answer.
    pub fn command(&self, line: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = stream.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (like a crash: no save, no goodbye).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.launch() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running permitd, stopped when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.unwrap()
    }

    pub async fn put_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /semaphores/{name}/permits` with `body`.
    pub async fn acquire(&self, name: &str, body: Value) -> reqwest::Response {
        self.post_json(&format!("/semaphores/{name}/permits"), body)
            .await
    }

    /// Status of a semaphore as JSON; panics unless 200.
    pub async fn status(&self, name: &str) -> Value {
        let response = self.get(&format!("/semaphores/{name}")).await;
        assert_eq!(response.status(), 200, "status of {name}");
        response.json().await.unwrap()
    }
}

impl TestApp {
    /// Starts the app's graceful shutdown (as SIGTERM would).
    pub fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Starts permitd with `settings` (its `listen` should use port 0).
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let app = Application::build(&settings).await.expect("app builds");
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        shutdown: Some(tx),
    }
}

/// Starts permitd on the memory store, or on `redis` when given.
pub async fn spawn_app(redis: Option<&RedisServer>) -> TestApp {
    spawn_app_with(Settings::for_tests(redis.map(RedisServer::url))).await
}

/// An app on one store, with its Redis (if any) kept alive beside it: what
/// the suites that run every scenario on both stores start per test.
pub struct Backend {
    pub app: TestApp,
    _redis: Option<RedisServer>,
}

impl Backend {
    pub async fn memory() -> Self {
        Self {
            app: spawn_app(None).await,
            _redis: None,
        }
    }

    pub async fn redis() -> Self {
        let redis = RedisServer::start();
        Self {
            app: spawn_app(Some(&redis)).await,
            _redis: Some(redis),
        }
    }
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
