//! permitd under test: started in-process on port 0 ([`TestApp`]) or as the
//! real binary ([`BinaryApp`]), both reached through one [`ApiClient`].
//!
//! A [`Harness`] owns the store (for Redis, a private server) and starts as
//! many instances on it as a test needs; every instance keeps the server
//! alive, so `spawn_app(store).await` alone is a whole test setup.

use std::ops::Deref;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use permitd::config::{Settings, StoreChoice};
use permitd::secret::Secret;
use permitd::startup::Application;
use permitd::store::SemaphoreStore;
use permitd::store::memory::MemoryStore;
use permitd::store::redis::RedisStore;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::cluster::RedisCluster;
use super::sentinel::{self, SentinelSetup};
use super::{RedisServer, Store, die_with_parent, free_port, init_logs, logs_wanted};

/// HTTP calls to one permitd, whichever way it was started.
#[derive(Clone)]
pub struct ApiClient {
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
}

impl ApiClient {
    /// Calls to `addr` over connections of its own (none shared with
    /// another `ApiClient`).
    pub fn new(addr: std::net::SocketAddr) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self { addr, client }
    }

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
        self.send(self.client.put(self.url(path)), body).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.send(self.client.post(self.url(path)), body).await
    }

    pub async fn patch_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.send(self.client.patch(self.url(path)), body).await
    }

    async fn send(&self, request: reqwest::RequestBuilder, body: Value) -> reqwest::Response {
        request.json(&body).send().await.unwrap()
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

    /// Starts an acquire in the background, so the test can act while it
    /// waits (`wait_ms`) for a permit.
    pub fn acquire_in_background(&self, name: &str, body: Value) -> JoinHandle<Waited> {
        let request = self
            .client
            .post(self.url(&format!("/semaphores/{name}/permits")))
            .json(&body);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.json().await.unwrap_or(Value::Null);
            Waited {
                status,
                body,
                took: started.elapsed(),
            }
        })
    }

    /// Polls status until `waiting` is `n`: waiters are queued
    /// asynchronously, so this is how a test knows one has joined or left.
    pub async fn until_waiting(&self, name: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let waiting = self.status(name).await["waiting"].as_u64().unwrap();
            if waiting == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waiting stayed {waiting}, wanted {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls `probe` (`/readyz`, or `/healthz` for a server that may not be
    /// ready) until it answers 200, or panics after `within`; `exited` says
    /// whether the server has died meanwhile (then `false`).
    async fn until_ready(
        &self,
        probe: &str,
        within: Duration,
        mut exited: impl FnMut() -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let response = self.client.get(self.url(probe)).send().await;
            if response.is_ok_and(|r| r.status() == 200) {
                return true;
            }
            if exited() {
                return false;
            }
            assert!(Instant::now() < deadline, "permitd did not get ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How a background acquire ended.
pub struct Waited {
    pub status: u16,
    /// The JSON body, or `Null` when there was none.
    pub body: Value,
    pub took: Duration,
}

type Configure = Arc<dyn Fn(&mut Settings) + Send + Sync>;

/// A Redis deployment of several servers that apps keep alive.
#[derive(Clone)]
enum Deployment {
    None,
    Cluster(Arc<RedisCluster>),
    Sentinel(Arc<SentinelSetup>),
}

/// One store, and the permitd instances a test starts on it.
pub struct Harness {
    store: Store,
    redis: Option<Arc<RedisServer>>,
    deployment: Deployment,
    /// Keys of this harness's semaphores start with it: on a shared cluster
    /// or Sentinel setup, every harness has its own.
    key_prefix: Option<String>,
    configure: Vec<Configure>,
    spawned: AtomicUsize,
}

impl Harness {
    /// A fresh store of this kind: for Redis, a private server with the
    /// default configuration.
    /// A fresh store of this kind: for Redis, a private server with the
    /// default configuration; for a cluster or Sentinel, the shared one with
    /// a key prefix of this harness's own.
    pub fn new(store: Store) -> Self {
        match store {
            Store::Memory => Self::with(Store::Memory, None, Deployment::None),
            Store::Redis => Self::on(RedisServer::start()),
            Store::Cluster => Self::on_cluster(RedisCluster::shared()),
            Store::Sentinel => Self::on_sentinel(SentinelSetup::shared()),
        }
    }

    /// Redis, on a server the test configured itself.
    pub fn on(redis: RedisServer) -> Self {
        Self::with(Store::Redis, Some(Arc::new(redis)), Deployment::None)
    }

    /// Redis Cluster mode, on this cluster.
    pub fn on_cluster(cluster: Arc<RedisCluster>) -> Self {
        Self::with(Store::Cluster, None, Deployment::Cluster(cluster))
    }

    /// Sentinel mode, on this setup.
    pub fn on_sentinel(setup: Arc<SentinelSetup>) -> Self {
        Self::with(Store::Sentinel, None, Deployment::Sentinel(setup))
    }

    fn with(store: Store, redis: Option<Arc<RedisServer>>, deployment: Deployment) -> Self {
        let key_prefix = (!matches!(deployment, Deployment::None))
            .then(|| format!("t{}:", &uuid::Uuid::new_v4().simple().to_string()[..12]));
        Self {
            store,
            redis,
            deployment,
            key_prefix,
            configure: Vec::new(),
            spawned: AtomicUsize::new(0),
        }
    }

    /// The cluster this harness runs on; panics in other modes.
    pub fn cluster(&self) -> &RedisCluster {
        match &self.deployment {
            Deployment::Cluster(cluster) => cluster,
            _ => panic!("this harness is not on a cluster"),
        }
    }

    /// The private Redis server this harness runs on; panics in other modes.
    pub fn redis(&self) -> &RedisServer {
        self.redis.as_deref().expect("this harness is on one Redis")
    }

    /// The key prefix its semaphores are stored under.
    pub fn key_prefix(&self) -> String {
        self.settings().key_prefix
    }

    /// Changes the settings of every instance started from now on (after
    /// earlier `configure` closures).
    pub fn configure(mut self, change: impl Fn(&mut Settings) + Send + Sync + 'static) -> Self {
        self.configure.push(Arc::new(change));
        self
    }

    /// The settings an in-process instance gets: the test defaults (port 0),
    /// this store, then every `configure` closure.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::for_tests(self.redis.as_ref().map(|r| r.url()));
        match &self.deployment {
            Deployment::None => {}
            Deployment::Cluster(cluster) => {
                settings.redis_cluster = Some(Secret::new(cluster.seeds()));
            }
            Deployment::Sentinel(setup) => {
                settings.redis_sentinels = Some(Secret::new(setup.sentinel_urls()));
                settings.redis_sentinel_master = Some(sentinel::MASTER_NAME.into());
                settings.redis_password = Some(Secret::new(sentinel::DATA_PASSWORD));
            }
        }
        if let Some(prefix) = &self.key_prefix {
            settings.key_prefix = prefix.clone();
        }
        for change in &self.configure {
            change(&mut settings);
        }
        settings
    }

    /// Starts one more permitd in this process. On the memory store only one
    /// may be started: a second would have a store of its own, not a share.
    pub async fn spawn(&self) -> TestApp {
        self.count_instance();
        init_logs();
        let app = Application::build(&self.settings())
            .await
            .expect("app builds");
        let addr = app.local_addr();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        TestApp {
            api: ApiClient::new(addr),
            shutdown: Some(tx),
            _redis: self.redis.clone(),
            _deployment: self.deployment.clone(),
        }
    }

    fn count_instance(&self) {
        let before = self.spawned.fetch_add(1, Ordering::Relaxed);
        assert!(
            self.store != Store::Memory || before == 0,
            "instances on the memory store share nothing; start several on Redis"
        );
    }

    /// Starts `instances` permitd in this process, all on this store.
    pub async fn spawn_many(&self, instances: usize) -> Vec<TestApp> {
        let mut apps = Vec::with_capacity(instances);
        for _ in 0..instances {
            apps.push(self.spawn().await);
        }
        apps
    }

    /// The `permitd` binary, on this store (`--redis-url` on Redis), to
    /// configure with flags before it starts: `configure` closures are for
    /// in-process instances, the binary takes flags like in production.
    pub fn binary(&self) -> BinaryBuilder {
        self.count_instance();
        let mut binary = BinaryBuilder::new();
        if let Some(redis) = &self.redis {
            binary = binary.arg("--redis-url").arg(&redis.url());
            binary.redis = Some(redis.clone());
        }
        match &self.deployment {
            Deployment::None => {}
            Deployment::Cluster(cluster) => {
                binary = binary.arg("--redis-cluster").arg(&cluster.seeds());
            }
            Deployment::Sentinel(setup) => {
                binary = binary
                    .arg("--redis-sentinels")
                    .arg(&setup.sentinel_urls())
                    .arg("--redis-sentinel-master")
                    .arg(sentinel::MASTER_NAME)
                    .env("PERMITD_REDIS_PASSWORD", sentinel::DATA_PASSWORD);
            }
        }
        if let Some(prefix) = &self.key_prefix {
            binary = binary.arg("--key-prefix").arg(prefix);
        }
        binary.deployment = self.deployment.clone();
        binary
    }

    /// The store itself, without HTTP, as `settings()` would build it. It
    /// counts as an instance: on Redis it shares the data with the others.
    pub fn semaphore_store(&self) -> Arc<dyn SemaphoreStore> {
        self.count_instance();
        match self.settings().store().expect("one store mode") {
            StoreChoice::Memory => {
                Arc::new(MemoryStore::with_lifecycle(self.settings().lifecycle()))
            }
            StoreChoice::Redis(redis) => {
                Arc::new(RedisStore::new(&redis).expect("a valid Redis URL"))
            }
        }
    }
}

/// permitd on a fresh store of this kind, with the test settings.
pub async fn spawn_app(store: Store) -> TestApp {
    Harness::new(store).spawn().await
}

/// permitd on a fresh store of this kind, with the settings changed.
pub async fn spawn_app_with(
    store: Store,
    change: impl Fn(&mut Settings) + Send + Sync + 'static,
) -> TestApp {
    Harness::new(store).configure(change).spawn().await
}

/// A permitd running in this process, stopped when dropped.
pub struct TestApp {
    api: ApiClient,
    shutdown: Option<oneshot::Sender<()>>,
    /// Kept alive as long as any app on it runs.
    _redis: Option<Arc<RedisServer>>,
    _deployment: Deployment,
}

impl TestApp {
    /// The Redis server it runs on; panics on the memory store.
    pub fn redis(&self) -> &RedisServer {
        self._redis.as_deref().expect("this app runs on Redis")
    }

    /// Starts the app's graceful shutdown (as SIGTERM would).
    pub fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// How to start the `permitd` binary: flags, environment, where its output
/// goes. It listens on a free port of 127.0.0.1.
pub struct BinaryBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: Option<std::fs::File>,
    /// Its limit on open descriptors, soft and hard, when set.
    descriptors: Option<u64>,
    redis: Option<Arc<RedisServer>>,
    deployment: Deployment,
}

impl BinaryBuilder {
    /// The binary on the memory store, whatever this process's environment
    /// says (`REDIS_URL` and `PERMITD_API_TOKENS` are not passed on).
    pub fn new() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            log: None,
            descriptors: None,
            redis: None,
            deployment: Deployment::None,
        }
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sends its stdout and stderr to `file` (otherwise they are shown with
    /// `TEST_LOG=1`, and dropped without).
    pub fn log_to(mut self, file: std::fs::File) -> Self {
        self.log = Some(file);
        self
    }

    /// Starts it with at most `n` open descriptors, soft and hard (as
    /// `ulimit -n n` does; permitd's raise to the hard limit then changes
    /// nothing).
    pub fn descriptor_limit(mut self, n: u64) -> Self {
        self.descriptors = Some(n);
        self
    }

    fn command(&self, port: u16) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_permitd"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(&self.args)
            .env_remove("REDIS_URL")
            .env_remove("PERMITD_API_TOKENS")
            // The shutdown delay's default depends on it (5 s in a pod).
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("PERMITD_SHUTDOWN_DELAY_MS")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let output = || match &self.log {
            Some(file) => Stdio::from(file.try_clone().expect("a log file handle")),
            None if logs_wanted() => Stdio::inherit(),
            None => Stdio::null(),
        };
        command.stdout(output()).stderr(output());
        die_with_parent(&mut command);
        if let Some(n) = self.descriptors {
            // SAFETY: setrlimit is async-signal-safe and touches no shared
            // state.
            unsafe {
                use std::os::unix::process::CommandExt;
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        command
    }

    /// Starts it and waits until `/readyz` answers 200.
    pub async fn start(self) -> BinaryApp {
        self.start_until("/readyz").await
    }

    /// Starts it and waits only until `/healthz` answers 200: for a server
    /// whose store is down on purpose.
    pub async fn start_alive(self) -> BinaryApp {
        self.start_until("/healthz").await
    }

    async fn start_until(self, probe: &str) -> BinaryApp {
        // The free port may be taken before permitd binds it; then it exits.
        for _ in 0..5 {
            let port = free_port();
            let mut child = self.command(port).spawn().expect("permitd starts");
            let api = ApiClient::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
            let exited = || matches!(child.try_wait(), Ok(Some(_)));
            if api
                .until_ready(probe, Duration::from_secs(10), exited)
                .await
            {
                return BinaryApp {
                    api,
                    child,
                    _redis: self.redis,
                    _deployment: self.deployment,
                };
            }
        }
        panic!("permitd did not start after 5 attempts");
    }
}

/// The `permitd` binary running as a child process, killed when dropped.
pub struct BinaryApp {
    api: ApiClient,
    child: Child,
    _redis: Option<Arc<RedisServer>>,
    _deployment: Deployment,
}

impl BinaryApp {
    /// SIGKILL, like a crash: no graceful shutdown, nobody leaves the queue
    /// on its behalf. Waits until the process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as a container runtime stops it; returns at once.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) with a pid this process started and still owns.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM sent");
    }

    /// Its exit status once it has exited, or `None` if it still runs after
    /// `within`.
    pub async fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Deref for BinaryApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl Drop for BinaryApp {
    fn drop(&mut self) {
        self.kill();
    }
}
