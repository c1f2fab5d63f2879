//! Typed settings from command-line flags, each with an environment fallback.
//!
//! There are no config files: `permitd --help` lists every knob, and the
//! README's configuration table mirrors it. The store is chosen here, as an
//! enum: memory when no Redis is given, else exactly one of a Redis URL, a
//! cluster's seed nodes, or sentinels with their master's name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Parser};

use crate::demo::DemoBounds;
use crate::http::RequestBounds;
use crate::secret::Secret;
use crate::semaphore::{SemaphoreName, Ttl, WaitTime};
use crate::store::Lifecycle;
use crate::store::redis::{RedisSettings, RedisTarget, RedisTls};
use crate::telemetry::LogFormat;

/// The longest the idle TTL and the Idempotency-Key retention may be: a
/// year, so that every expiry time stays an exact integer in the scripts.
const MAX_KEEP_MS: u64 = 31_536_000_000;

/// The command line: server settings, or a subcommand with its own flags.
/// With no subcommand permitd serves HTTP. Server flags belong to the
/// commands that run a server (bare `permitd`, `serve`, `openapi`, `demo`):
/// `permitd run --listen …` is refused, not ignored.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "permitd",
    version,
    about = "A distributed counting semaphore served over HTTP",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub settings: Settings,
}

/// What the binary does besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve HTTP (the default when no subcommand is given).
    Serve(Box<ServerArgs>),
    /// Print the OpenAPI document as YAML, for these settings' bounds. The
    /// checked-in file is made with `cargo run -q -- openapi > openapi.yaml`.
    Openapi(Box<ServerArgs>),
    /// Run the fan-out demo once from the terminal: print one line per handled
    /// request and the headline, like the script permitd grew out of.
    Demo(Box<DemoArgs>),
    /// Ask a running permitd whether it is alive (GET <url>/healthz): exit status 0
    /// if it answers 200 in time, 1 otherwise. For container health checks, so
    /// the image needs no curl.
    Healthcheck(HealthcheckArgs),
    /// Run a command while holding a permit of a running permitd, like
    /// `consul lock`: wait for the permit, run the command with
    /// PERMITD_FENCING_TOKEN and PERMITD_PERMIT_ID set, keep the lease alive,
    /// release it when the command exits, and exit with its status.
    #[command(after_help = RUN_EXIT_CODES)]
    Run(RunArgs),
}

/// The exit statuses of `permitd run`, as `--help` lists them (the values
/// live in `cli::run`, whose tests hold the two together).
pub const RUN_EXIT_CODES: &str = "\
Exit status:
  the command's own    it ran and exited (128 + N if signal N killed it)
  64  (EX_USAGE)       unusable arguments: URL, semaphore name, count, limit
  65  (EX_DATAERR)     permitd refused: the semaphore exists with another limit,
                       count is above the limit, or it does not exist (no --limit)
  69  (EX_UNAVAILABLE) permitd unreachable or unavailable (503) within the wait
  70  (EX_SOFTWARE)    the lease was lost while the command ran: the command
                       was stopped (SIGTERM, then SIGKILL after --kill-grace-ms)
  75  (EX_TEMPFAIL)    no capacity within --wait-ms; try again later
  76  (EX_PROTOCOL)    any other answer from permitd
  77  (EX_NOPERM)      the token was refused (401) or lacks the scope (403)
  126 / 127            the command could not be run / was not found

While the command runs, SIGINT and SIGTERM are passed on to it. If permitd run
itself is killed, the command gets SIGTERM and the lease runs out by itself.";

/// The server settings of a subcommand that runs or describes a server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub settings: Settings,
}

/// Arguments of `permitd run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The permitd to ask, e.g. http://permitd:8080.
    #[arg(long, env = "PERMITD_URL")]
    pub url: String,

    /// The semaphore to take a permit of.
    #[arg(long)]
    pub semaphore: String,

    /// The semaphore's limit: created with it if it does not exist; refused
    /// (exit 65) if it exists with another. Without it the semaphore must exist.
    #[arg(long)]
    pub limit: Option<u32>,

    /// Units to take at once.
    #[arg(long, default_value_t = 1)]
    pub count: u32,

    /// Lease length in milliseconds, refreshed every third of it while the
    /// command runs: if permitd run dies, the unit is free again after this.
    #[arg(long, default_value_t = 30_000)]
    pub ttl_ms: u64,

    /// How long to wait for a permit, in milliseconds; 0 tries once. Longer
    /// than the server's --max-wait-ms is fine (several long polls).
    #[arg(long, default_value_t = 60_000)]
    pub wait_ms: u64,

    /// Bearer token for permitd.
    #[arg(long, env = "PERMITD_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,

    /// Label shown in the semaphore's status. Default: the command's name and
    /// this process's id.
    #[arg(long)]
    pub holder: Option<String>,

    /// After a lost lease, how long the command has between SIGTERM and
    /// SIGKILL, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub kill_grace_ms: u64,

    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Arguments of `permitd healthcheck`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// The permitd to check, by its base URL (e.g. http://127.0.0.1:8080), as
    /// `permitd run --url` takes it. Default: 127.0.0.1 at the port of
    /// PERMITD_LISTEN (8080 without it), so that a container's own check
    /// follows the port it serves on.
    #[arg(long, env = "PERMITD_URL")]
    pub url: Option<String>,

    /// Ask GET /readyz instead: whether it is ready to serve, its store
    /// answering (a connection check), not only alive.
    #[arg(long)]
    pub ready: bool,

    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub timeout_ms: u64,
}

/// Arguments of `permitd demo`; the same bounds as `GET /demo` apply.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How many requests to send at once (1 to --demo-max-requests; default 5,
    /// or --demo-max-requests if lower).
    #[arg(long)]
    pub requests: Option<u64>,

    /// The demo semaphore's limit: how many requests may be in flight at once (1-100).
    #[arg(long, default_value_t = 1)]
    pub limit: u64,

    /// The upstream to call (http or https). Without it, the built-in
    /// upstream is called, which answers after --delay-ms. From the terminal
    /// any host may be called: the allow-list guards the HTTP endpoint, not
    /// the operator.
    #[arg(long)]
    pub upstream: Option<String>,

    /// How long the built-in upstream takes to answer, in milliseconds (0 to
    /// --demo-max-delay-ms; default 100, or --demo-max-delay-ms if lower).
    #[arg(long)]
    pub delay_ms: Option<u64>,

    /// Run against this running permitd instead (its base URL, e.g.
    /// http://permitd:8080), through the Rust client, as any service using
    /// permitd would: the permits come from it, and without --upstream its
    /// built-in upstream is called. Without it, the demo runs an embedded
    /// permitd of its own, with the server settings below.
    #[arg(long, env = "PERMITD_URL")]
    pub url: Option<String>,

    /// The bearer token for --url (a `use` token can run the demo; an
    /// `admin` one also removes the demo semaphore after).
    #[arg(long, env = "PERMITD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// The embedded permitd's settings (its store, its demo bounds).
    #[command(flatten)]
    pub settings: Settings,
}

/// Server settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Set by `permitd demo` for its in-process server, which only it can
    /// reach (so, for one, the open-API warning would mean nothing there).
    #[arg(skip)]
    pub embedded: bool,

    /// Address to serve HTTP on.
    #[arg(long, env = "PERMITD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Redis to keep semaphores in, e.g. redis://:password@host:6379/0. Without
    /// it permitd uses its embedded store, which is not shared between instances.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// A Redis Cluster instead of one Redis: seed node URLs, comma-separated
    /// (redis://h1:7000,redis://h2:7001, or rediss:// for TLS). The rest of
    /// the cluster is discovered from them.
    #[arg(long, env = "PERMITD_REDIS_CLUSTER", hide_env_values = true)]
    pub redis_cluster: Option<Secret>,

    /// Redis behind Sentinel instead of one Redis: sentinel URLs,
    /// comma-separated (redis://:sentinel-password@h1:26379,...), with
    /// --redis-sentinel-master naming the monitored master.
    #[arg(long, env = "PERMITD_REDIS_SENTINELS", hide_env_values = true)]
    pub redis_sentinels: Option<Secret>,

    /// The name of the master the sentinels monitor (`sentinel monitor <name>`).
    #[arg(long, env = "PERMITD_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Sentinel mode: the ACL user of the data nodes (master and replicas),
    /// when it differs from the sentinel URL's.
    #[arg(long, env = "PERMITD_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// Sentinel mode: the password of the data nodes, when it differs from
    /// the sentinel URL's (sentinels often have none, or their own).
    #[arg(long, env = "PERMITD_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<Secret>,

    /// After each write, wait until this many replicas of the semaphore's
    /// master have it (Redis `WAIT`, pipelined with the script), within
    /// --redis-timeout-ms; fewer acknowledgements answer 503. 0: do not wait.
    #[arg(long, env = "PERMITD_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// PEM file of the certificate authority that signed the Redis server's
    /// certificate, for a `rediss://` URL to a Redis with a private CA.
    /// Without it, the system's trusted roots are used.
    #[arg(long, env = "PERMITD_REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,

    /// PEM file of a client certificate, for a Redis that requires one
    /// (`tls-auth-clients yes`); give --redis-tls-key-file with it.
    #[arg(long, env = "PERMITD_REDIS_TLS_CERT_FILE")]
    pub redis_tls_cert_file: Option<PathBuf>,

    /// PEM file of the client certificate's private key.
    #[arg(long, env = "PERMITD_REDIS_TLS_KEY_FILE")]
    pub redis_tls_key_file: Option<PathBuf>,

    /// Prefix of every Redis key permitd writes, so several deployments can
    /// share one Redis.
    #[arg(long, env = "PERMITD_KEY_PREFIX", default_value = "permitd:")]
    pub key_prefix: String,

    /// Lease length of a permit whose acquire gives no ttl_ms.
    #[arg(long, env = "PERMITD_DEFAULT_TTL_MS", default_value_t = 30_000)]
    pub default_ttl_ms: u64,

    /// Shortest lease a client may ask for (ttl_ms on acquire and refresh); at
    /// least 100. Raising it spares the store the refresh traffic of very
    /// short leases.
    #[arg(long, env = "PERMITD_MIN_TTL_MS", default_value_t = 100)]
    pub min_ttl_ms: u64,

    /// Longest lease a client may ask for (ttl_ms on acquire and refresh).
    #[arg(long, env = "PERMITD_MAX_TTL_MS", default_value_t = 3_600_000)]
    pub max_ttl_ms: u64,

    /// A semaphore with no holders and no waiters for this long is forgotten
    /// (on Redis by key expiry); a PUT may set its own (`idle_ttl_ms`). Its
    /// fencing tokens keep increasing when it is created again. 0: never; at
    /// most a year.
    #[arg(
        long,
        env = "PERMITD_SEMAPHORE_IDLE_TTL_MS",
        default_value_t = 86_400_000,
        value_parser = clap::value_parser!(u64).range(0..=MAX_KEEP_MS)
    )]
    pub semaphore_idle_ttl_ms: u64,

    /// How long an Idempotency-Key is remembered after its permit ended: a
    /// retry within it answers 410 instead of taking a second permit. 0:
    /// forgotten with the permit; at most a year.
    #[arg(
        long,
        env = "PERMITD_IDEMPOTENCY_RETENTION_MS",
        default_value_t = 86_400_000,
        value_parser = clap::value_parser!(u64).range(0..=MAX_KEEP_MS)
    )]
    pub idempotency_retention_ms: u64,

    /// Longest an acquire may wait for capacity (wait_ms).
    #[arg(long, env = "PERMITD_MAX_WAIT_MS", default_value_t = 60_000)]
    pub max_wait_ms: u64,

    /// Longest a waiting acquire sleeps between two checks when no wake
    /// arrives: the bound on a lost notification. On Redis, a waiter keeps its
    /// place in the queue for its waiter lease, the longer of 3 x this and
    /// this + 2 x --redis-timeout-ms (5 s with the defaults), without a
    /// check: a waiter whose permitd instance died drops out after that, while
    /// a Redis stall shorter than the Redis timeout costs no waiter its place.
    #[arg(long, env = "PERMITD_WAIT_RECHECK_MS", default_value_t = 1_000)]
    pub wait_recheck_ms: u64,

    /// A bearer token clients must present (`Authorization: Bearer <token>`),
    /// as `scope[@prefix]:token`: scope `read` (status, listing, metrics),
    /// `use` (permits, demo, and read) or `admin` (create, change, delete,
    /// and use); with `@prefix`, only semaphores whose names start with it.
    /// A bare token may do everything. Repeat the flag for several; in the
    /// environment, separate them with commas. With no token configured (here
    /// or in --api-token-file), the API is open to anyone who can reach it.
    /// Prefer the environment or the file: flags are visible to other local
    /// users in the process list.
    #[arg(
        long = "api-token",
        env = "PERMITD_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_tokens: Vec<Secret>,

    /// A file of bearer tokens, one per line, each like --api-token; blank
    /// lines and lines starting with # are skipped. Adds to --api-token.
    #[arg(long, env = "PERMITD_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Whether GET /metrics stays readable without a token when tokens are
    /// configured (true or false). It shows counts by route, never semaphore
    /// names or permit ids.
    #[arg(
        long,
        env = "PERMITD_METRICS_PUBLIC",
        default_value_t = true,
        action = ArgAction::Set
    )]
    pub metrics_public: bool,

    /// Semaphores to export gauges of on /metrics (limit, held, waiting,
    /// labelled `semaphore`), comma-separated, at most 100; read from the
    /// store at each scrape. Only these names become labels, so the page
    /// stays small however many semaphores there are.
    #[arg(long, env = "PERMITD_METRICS_SEMAPHORES", value_delimiter = ',')]
    pub metrics_semaphores: Vec<String>,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(
        long,
        env = "PERMITD_MAX_BODY_BYTES",
        default_value_t = 16 * 1024
    )]
    pub max_body_bytes: usize,

    /// Bound on handling one request; past it the answer is a 503 problem. A
    /// waiting acquire gets its wait_ms on top, and GET /demo the length of
    /// its run, so a legitimate long poll is never cut short. Keep it above
    /// --redis-timeout-ms, so a slow Redis is answered by its own timeout.
    #[arg(long, env = "PERMITD_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// On SIGTERM or Ctrl-C, how long requests in flight may take to finish
    /// while /readyz already answers 503. Then (or once none is left)
    /// waiting acquires are answered 503 and leave their queues, and
    /// permitd exits.
    #[arg(long, env = "PERMITD_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// On SIGTERM or Ctrl-C, how long permitd first goes on accepting and
    /// serving every request as usual, with /readyz answering 503, before
    /// the drain (--shutdown-grace-ms) begins: load balancers and
    /// Kubernetes' endpoint updates take a while to stop sending. A second
    /// signal ends the delay. Default: 5000 on Kubernetes (where
    /// KUBERNETES_SERVICE_HOST is set), 0 elsewhere.
    #[arg(long, env = "PERMITD_SHUTDOWN_DELAY_MS")]
    pub shutdown_delay_ms: Option<u64>,

    /// Most acquires that may wait at once in this instance. Each holds a
    /// connection, so a descriptor, for its wait; past the bound a waiting
    /// acquire is tried once and, if no unit is free, answered 503 at once
    /// with Retry-After, so waiters never take the descriptors a release
    /// needs. Default: the open-descriptor limit less a reserve of a
    /// quarter of it (at least 64, at most 4096).
    #[arg(long, env = "PERMITD_MAX_WAITERS")]
    pub max_waiters: Option<usize>,

    /// Threads that serve requests; 0: one per CPU core. One costs the least
    /// CPU per request (a second one wakes the first for work it hands over)
    /// and serves tens of thousands of requests a second; raise it only when
    /// permitd alone keeps a core busy.
    #[arg(long, env = "PERMITD_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// Most Redis connections one instance keeps open.
    #[arg(long, env = "PERMITD_REDIS_POOL_SIZE", default_value_t = 16)]
    pub redis_pool_size: usize,

    /// Bound on opening one Redis connection.
    #[arg(
        long,
        env = "PERMITD_REDIS_CONNECT_TIMEOUT_MS",
        default_value_t = 1_000
    )]
    pub redis_connect_timeout_ms: u64,

    /// Bound on one whole store call (pool wait, connect and script): past it
    /// the request is answered 503 instead of hanging.
    #[arg(long, env = "PERMITD_REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,

    /// Whether the demo is served (true or false): with false, `/demo` and
    /// `/demo/upstream` answer 404 and are left out of the served OpenAPI
    /// document. `permitd demo` runs either way.
    #[arg(
        long,
        env = "PERMITD_DEMO",
        default_value_t = true,
        action = ArgAction::Set
    )]
    pub demo: bool,

    /// Hosts `GET /demo?url=...` may call, comma-separated, each `host` (any
    /// port) or `host:port`. The built-in upstream is always allowed; any
    /// other URL is refused unless its host is listed here.
    #[arg(long, env = "PERMITD_DEMO_ALLOWED_HOSTS", value_delimiter = ',')]
    pub demo_allowed_hosts: Vec<String>,

    /// Most requests one demo run may fan out (`requests` of `GET /demo` and
    /// `permitd demo`), 1-100. Stated in the served OpenAPI document.
    #[arg(
        long,
        env = "PERMITD_DEMO_MAX_REQUESTS",
        default_value_t = crate::demo::MAX_REQUESTS
    )]
    pub demo_max_requests: u64,

    /// Slowest the demo's built-in upstream may be asked to be (`delay_ms` of
    /// `GET /demo` and `GET /demo/upstream`), 0-5000. Stated in the served
    /// OpenAPI document.
    #[arg(
        long,
        env = "PERMITD_DEMO_MAX_DELAY_MS",
        default_value_t = crate::demo::MAX_DELAY_MS
    )]
    pub demo_max_delay_ms: u64,

    /// Log lines as human-readable text or as JSON objects.
    #[arg(long, env = "PERMITD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

/// Most names `--metrics-semaphores` may list.
const MAX_METERED: usize = 100;

/// Where semaphores live.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// Embedded, this process only.
    Memory,
    /// Redis, shared by every instance pointed at it.
    Redis(Box<RedisSettings>),
}

impl Settings {
    /// Settings for tests and embedding: every default, a port chosen by the OS,
    /// and the given store.
    pub fn for_tests(redis_url: Option<String>) -> Self {
        let mut settings = Cli::parse_from(["permitd"]).settings;
        settings.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.redis_url = redis_url.map(Secret::new);
        settings
    }

    /// The store these settings choose: memory without any Redis flag,
    /// otherwise exactly one of --redis-url, --redis-cluster and
    /// --redis-sentinels.
    ///
    /// # Errors
    /// When more than one Redis mode is given, Sentinel without its master's
    /// name (or the reverse), or an empty list of URLs.
    pub fn store(&self) -> anyhow::Result<StoreChoice> {
        let target = match (&self.redis_url, &self.redis_cluster, &self.redis_sentinels) {
            (None, None, None) => {
                if self.redis_sentinel_master.is_some() {
                    anyhow::bail!("--redis-sentinel-master needs --redis-sentinels");
                }
                return Ok(StoreChoice::Memory);
            }
            (Some(url), None, None) => RedisTarget::Standalone(url.clone()),
            (None, Some(seeds), None) => RedisTarget::Cluster(url_list("--redis-cluster", seeds)?),
            (None, None, Some(sentinels)) => RedisTarget::Sentinel {
                sentinels: url_list("--redis-sentinels", sentinels)?,
                master: self
                    .redis_sentinel_master
                    .clone()
                    .filter(|m| !m.is_empty())
                    .context("--redis-sentinels needs --redis-sentinel-master")?,
                username: self.redis_username.clone(),
                password: self.redis_password.clone(),
            },
            _ => anyhow::bail!(
                "give exactly one of --redis-url (REDIS_URL), --redis-cluster \
                 (PERMITD_REDIS_CLUSTER) and --redis-sentinels (PERMITD_REDIS_SENTINELS)"
            ),
        };
        if !matches!(target, RedisTarget::Sentinel { .. })
            && (self.redis_username.is_some() || self.redis_password.is_some())
        {
            anyhow::bail!(
                "--redis-username and --redis-password are for Sentinel mode; \
                 otherwise put the credentials in the Redis URLs"
            );
        }
        Ok(StoreChoice::Redis(Box::new(RedisSettings {
            target,
            tls: RedisTls {
                ca_file: self.redis_tls_ca_file.clone(),
                cert_file: self.redis_tls_cert_file.clone(),
                key_file: self.redis_tls_key_file.clone(),
            },
            key_prefix: self.key_prefix.clone(),
            pool_size: self.redis_pool_size.max(1),
            connect_timeout: Duration::from_millis(self.redis_connect_timeout_ms),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            waiter_lease: self.waiter_lease(),
            wait_replicas: self.redis_wait_replicas,
            lifecycle: self.lifecycle(),
        })))
    }

    /// How long the store keeps idle semaphores and ended Idempotency-Keys.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            idle_ttl: (self.semaphore_idle_ttl_ms > 0)
                .then(|| Duration::from_millis(self.semaphore_idle_ttl_ms)),
            idempotency_retention: Duration::from_millis(self.idempotency_retention_ms),
        }
    }

    /// Whether any Redis mode is configured.
    pub fn uses_redis(&self) -> bool {
        self.redis_url.is_some() || self.redis_cluster.is_some() || self.redis_sentinels.is_some()
    }

    /// How long the Redis queue keeps a waiter without a check (see
    /// `--wait-recheck-ms`): three re-checks, and never less than a re-check
    /// plus two Redis timeouts, so that a stall Redis is allowed (one timed-out
    /// call, then the next check) does not drop live waiters.
    pub fn waiter_lease(&self) -> Duration {
        let recheck = self.wait_recheck();
        let stall = Duration::from_millis(self.redis_timeout_ms).saturating_mul(2);
        recheck.saturating_mul(3).max(recheck + stall)
    }

    /// See `--wait-recheck-ms`; at least 10 ms.
    /// `--max-waiters`, or its default from `descriptors`, the soft limit
    /// on open descriptors: that less a reserve for everything else (the
    /// listener, Redis connections, the holders' own calls to release).
    pub fn max_waiters(&self, descriptors: u64) -> usize {
        self.max_waiters.unwrap_or_else(|| {
            let reserve = (descriptors / 4).clamp(64, 4096);
            usize::try_from(descriptors.saturating_sub(reserve).max(1)).unwrap_or(usize::MAX)
        })
    }

    /// `--shutdown-delay-ms`, or its default: 5 s in a Kubernetes pod, whose
    /// endpoints are removed as SIGTERM is sent and take seconds to reach
    /// every proxy; none elsewhere, where nothing routes around the process
    /// on its own.
    pub fn shutdown_delay(&self) -> Duration {
        let on_kubernetes = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let default = if on_kubernetes { 5_000 } else { 0 };
        Duration::from_millis(self.shutdown_delay_ms.unwrap_or(default))
    }

    pub fn wait_recheck(&self) -> Duration {
        Duration::from_millis(self.wait_recheck_ms.max(10))
    }

    /// # Errors
    /// When the default lease is outside the minimum … maximum lease, or a
    /// demo bound is outside its range.
    pub fn request_bounds(&self) -> anyhow::Result<RequestBounds> {
        let default_ttl = Ttl::within(self.default_ttl_ms, self.min_ttl_ms, self.max_ttl_ms)
            .map_err(|e| {
                anyhow::anyhow!(
                    "--default-ttl-ms must lie within --min-ttl-ms (at least 100) and \
                     --max-ttl-ms: {e}"
                )
            })?;
        WaitTime::new(0, self.max_wait_ms)?;
        let demo = DemoBounds {
            urls_allowed: self.demo_allowed_hosts.iter().any(|h| !h.trim().is_empty()),
            ..DemoBounds::new(self.demo_max_requests, self.demo_max_delay_ms)?
        };
        Ok(RequestBounds {
            default_ttl,
            min_ttl_ms: self.min_ttl_ms.max(Ttl::MIN_MS),
            max_ttl_ms: self.max_ttl_ms,
            max_wait_ms: self.max_wait_ms,
            demo,
        })
    }

    /// Every configured API token: `--api-token` and the lines of
    /// `--api-token-file`. Empty when access control is off.
    ///
    /// # Errors
    /// When the file cannot be read, or a token is not a valid bearer token
    /// (visible ASCII without spaces): a paste that brought a space or a
    /// stray line break along should stop the start, not lock clients out.
    pub fn api_tokens(&self) -> anyhow::Result<Vec<Secret>> {
        let mut tokens: Vec<Secret> = self
            .api_tokens
            .iter()
            .filter(|t| !t.expose().trim().is_empty())
            .map(|t| Secret::new(t.expose().trim()))
            .collect();
        if let Some(path) = &self.api_token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --api-token-file {}", path.display()))?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(Secret::new),
            );
        }
        for (n, token) in tokens.iter().enumerate() {
            // Says which token, never what it is.
            anyhow::ensure!(
                token.expose().bytes().all(|b| b.is_ascii_graphic()),
                "API token #{} has a space, a control or a non-ASCII character; tokens must be \
                 visible ASCII without spaces",
                n + 1
            );
        }
        Ok(tokens)
    }

    /// The names of `--metrics-semaphores`, blank entries skipped.
    ///
    /// # Errors
    /// When a name is not a valid semaphore name, or more than 100 are listed.
    pub fn metered_semaphores(&self) -> anyhow::Result<Vec<SemaphoreName>> {
        let names = self
            .metrics_semaphores
            .iter()
            .map(|name| name.trim())
            .filter(|name| !name.is_empty())
            .map(|name| {
                SemaphoreName::parse(name)
                    .map_err(|e| anyhow::anyhow!("--metrics-semaphores {name:?}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            names.len() <= MAX_METERED,
            "--metrics-semaphores lists {} names; at most {MAX_METERED}, to keep /metrics small",
            names.len()
        );
        Ok(names)
    }

    /// See `--request-timeout-ms`; at least 1 ms.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
}

/// A comma-separated list of URLs, each trimmed; empty entries are refused.
fn url_list(flag: &str, list: &Secret) -> anyhow::Result<Vec<Secret>> {
    let urls: Vec<Secret> = list
        .expose()
        .split(',')
        .map(str::trim)
        .map(Secret::new)
        .collect();
    if urls.iter().any(|url| url.expose().is_empty()) {
        anyhow::bail!("{flag} is a comma-separated list of Redis URLs, without empty entries");
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_error(args: &[&str]) -> String {
        let settings = Cli::parse_from([&["permitd"], args].concat()).settings;
        match settings.store() {
            Ok(choice) => panic!("{args:?} chose {choice:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn exactly_one_redis_mode_is_chosen_with_what_it_needs() {
        let two = store_error(&["--redis-url", "redis://a", "--redis-cluster", "redis://b"]);
        assert!(two.contains("exactly one"), "{two}");
        let nameless = store_error(&["--redis-sentinels", "redis://s1,redis://s2"]);
        assert!(nameless.contains("--redis-sentinel-master"), "{nameless}");
        let alone = store_error(&["--redis-sentinel-master", "m"]);
        assert!(alone.contains("--redis-sentinels"), "{alone}");
        let empty = store_error(&["--redis-cluster", "redis://a,,redis://b"]);
        assert!(empty.contains("empty"), "{empty}");
        let misplaced = store_error(&["--redis-url", "redis://a", "--redis-password", "pw"]);
        assert!(misplaced.contains("Sentinel"), "{misplaced}");

        let settings = Cli::parse_from([
            "permitd",
            "--redis-sentinels",
            "redis://:s-pw@s1:26379, redis://s2:26379",
            "--redis-sentinel-master",
            "data",
            "--redis-password",
            "d-pw",
        ])
        .settings;
        let Ok(StoreChoice::Redis(redis)) = settings.store() else {
            panic!("Sentinel mode")
        };
        let RedisTarget::Sentinel {
            sentinels, master, ..
        } = &redis.target
        else {
            panic!("{:?}", redis.target)
        };
        assert_eq!((sentinels.len(), master.as_str()), (2, "data"));
        let shown = format!("{redis:?} {}", redis.target.describe());
        assert!(
            !shown.contains("s-pw") && !shown.contains("d-pw"),
            "{shown}"
        );
    }

    #[test]
    fn defaults_choose_the_memory_store() {
        let settings = Cli::parse_from(["permitd"]).settings;
        assert!(matches!(settings.store().unwrap(), StoreChoice::Memory));
        assert_eq!(settings.listen.port(), 8080);
        assert!(settings.request_bounds().is_ok());
    }

    #[test]
    fn a_default_ttl_below_the_minimum_is_refused() {
        let cli = Cli::parse_from(["permitd", "--min-ttl-ms", "5000"]);
        assert!(cli.settings.request_bounds().is_ok(), "30 s default fits");
        let cli = Cli::parse_from(["permitd", "--min-ttl-ms", "40000"]);
        assert!(cli.settings.request_bounds().is_err());
    }

    #[test]
    fn demo_bounds_default_to_the_ceilings_and_cannot_exceed_them() {
        let bounds = Cli::parse_from(["permitd"])
            .settings
            .request_bounds()
            .unwrap();
        assert_eq!(bounds.demo, DemoBounds::default());
        let cli = Cli::parse_from([
            "permitd",
            "--demo-max-requests",
            "4",
            "--demo-max-delay-ms",
            "5",
        ]);
        let bounds = cli.settings.request_bounds().unwrap();
        assert_eq!(bounds.demo, DemoBounds::new(4, 5).unwrap());
        for args in [
            ["permitd", "--demo-max-requests", "0"],
            ["permitd", "--demo-max-requests", "101"],
            ["permitd", "--demo-max-delay-ms", "5001"],
        ] {
            assert!(Cli::parse_from(args).settings.request_bounds().is_err());
        }
    }

    #[test]
    fn a_default_ttl_above_the_maximum_is_refused() {
        let cli = Cli::parse_from([
            "permitd",
            "--default-ttl-ms",
            "5000",
            "--max-ttl-ms",
            "1000",
        ]);
        let settings = cli.settings;
        assert!(settings.request_bounds().is_err());
    }

    #[test]
    fn debug_output_never_shows_tokens_or_the_redis_password() {
        let cli = Cli::parse_from([
            "permitd",
            "--redis-url",
            "redis://:hunter2-pw@redis:6379",
            "--api-token",
            "tok-one-secret",
            "--api-token",
            "tok-two-secret",
        ]);
        let shown = format!("{cli:?} {:?}", cli.settings.store().unwrap());
        for secret in ["hunter2-pw", "tok-one-secret", "tok-two-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("***"));
        let tokens = cli.settings.api_tokens().unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1].expose(), "tok-two-secret");
    }

    #[test]
    fn the_demo_is_served_unless_switched_off() {
        assert!(Cli::parse_from(["permitd"]).settings.demo);
        assert!(
            !Cli::parse_from(["permitd", "--demo", "false"])
                .settings
                .demo
        );
    }

    #[test]
    fn metered_semaphores_are_valid_names() {
        let cli = Cli::parse_from(["permitd", "--metrics-semaphores", "pay, jobs:eu,"]);
        let names = cli.settings.metered_semaphores().unwrap();
        assert_eq!(
            names.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["pay", "jobs:eu"]
        );
        let cli = Cli::parse_from(["permitd", "--metrics-semaphores", "pay,no/slash"]);
        let error = cli.settings.metered_semaphores().unwrap_err().to_string();
        assert!(error.contains("no/slash"), "{error}");
    }

    #[test]
    fn metrics_are_public_unless_switched_off() {
        assert!(Cli::parse_from(["permitd"]).settings.metrics_public);
        let cli = Cli::parse_from(["permitd", "--metrics-public", "false"]);
        assert!(!cli.settings.metrics_public);
    }

    #[test]
    fn a_token_with_a_space_inside_stops_the_start() {
        let cli = Cli::parse_from(["permitd", "--api-token", "half token"]);
        let error = cli.settings.api_tokens().unwrap_err().to_string();
        assert!(error.contains("#1"), "{error}");
        assert!(!error.contains("half"), "the token itself is not shown");
        // Blank entries (a trailing comma in the environment) are skipped.
        let cli = Cli::parse_from(["permitd", "--api-token", " "]);
        assert!(cli.settings.api_tokens().unwrap().is_empty());
    }

    #[test]
    fn a_waiter_lease_outlasts_a_redis_stall_within_the_timeout() {
        let settings = Cli::parse_from(["permitd", "--wait-recheck-ms", "100"]).settings;
        // 3 x 100 ms would drop waiters during a 2 s stall of Redis.
        assert_eq!(settings.waiter_lease(), Duration::from_millis(4_100));
        let settings = Cli::parse_from(["permitd", "--wait-recheck-ms", "5000"]).settings;
        assert_eq!(settings.waiter_lease(), Duration::from_secs(15));
    }

    #[test]
    fn body_limit_and_request_timeout_have_their_defaults() {
        let settings = Cli::parse_from(["permitd"]).settings;
        assert_eq!(settings.max_body_bytes, 16 * 1024);
        assert_eq!(settings.request_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn the_allow_list_flag_takes_a_comma_separated_list() {
        let cli = Cli::parse_from([
            "permitd",
            "--demo-allowed-hosts",
            "api.example.com,127.0.0.1:9000",
        ]);
        assert_eq!(
            crate::demo::AllowedHosts::parse(&cli.settings.demo_allowed_hosts).unwrap(),
            crate::demo::AllowedHosts::Only(vec![
                ("api.example.com".into(), None),
                ("127.0.0.1".into(), Some(9000)),
            ])
        );
        let cli = Cli::parse_from(["permitd"]);
        assert_eq!(
            crate::demo::AllowedHosts::parse(&cli.settings.demo_allowed_hosts).unwrap(),
            crate::demo::AllowedHosts::Only(vec![])
        );
    }
}
