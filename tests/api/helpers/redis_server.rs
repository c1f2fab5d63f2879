//! A private `redis-server` per test, on a free port, in its own directory.
//!
//! By default it runs with `--save "" --appendonly no`: nothing is written
//! unless a test asks (`SAVE`, or its own `save` setting through
//! [`RedisServerBuilder::config`]). Its directory stays the same across
//! [`RedisServer::restart`], so a restart can load the snapshot a test saved.
//! The process is killed when the guard drops, and on Linux it is also told
//! to die with the thread that started it, so a test binary killed mid-run
//! leaves no server behind.
//!
//! Every method takes `&self`, so one server can be shared (`Arc`) by the
//! test and every permitd instance started on it.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{die_with_parent, free_port};

/// How long `command` waits for an answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How a test wants its server configured, before it starts.
pub struct RedisServerBuilder {
    /// `redis.conf` directives as `(name, value)`, passed as `--name value`.
    config: Vec<(String, String)>,
    /// Sentinel mode: `sentinel ...` lines of its config file (Sentinel needs
    /// a file it can rewrite).
    sentinel: Option<Vec<String>>,
    /// A cluster node: its bus port (+10000) must be free as well.
    cluster_bus: bool,
}

impl RedisServerBuilder {
    /// Sets a `redis.conf` directive (`"save"`, `"maxmemory-policy"`,
    /// `"replicaof"`, ...), replacing the default of that name if there is one.
    /// A value of several words (`"60 1"`, `"127.0.0.1 6380"`) is one string.
    pub fn config(mut self, name: &str, value: &str) -> Self {
        self.config.retain(|(n, _)| n != name);
        self.config.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A Sentinel, monitoring as these `sentinel ...` lines say.
    pub fn sentinel(mut self, lines: &[String]) -> Self {
        self.sentinel = Some(lines.to_vec());
        self.config
            .retain(|(n, _)| n != "save" && n != "appendonly");
        self
    }

    /// A Redis Cluster node (on a port whose bus port is free too).
    pub fn cluster_node(mut self, node_timeout_ms: u64) -> Self {
        self.cluster_bus = true;
        self.config("cluster-enabled", "yes")
            .config("cluster-node-timeout", &node_timeout_ms.to_string())
    }

    /// Starts the server; panics if it does not answer `PING`.
    pub fn start(self) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("permitd-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temporary directory for redis-server");
        // A port found free may be taken before redis-server binds it; retry.
        for _ in 0..5 {
            let port = if self.cluster_bus {
                free_cluster_port()
            } else {
                free_port()
            };
            let password = self
                .config
                .iter()
                .find(|(n, _)| n == "requirepass")
                .map(|(_, v)| v.clone());
            let server = RedisServer {
                port,
                dir: dir.clone(),
                config: self.config.clone(),
                sentinel: self.sentinel.clone(),
                password,
                child: Mutex::new(None),
            };
            if server.launch() {
                return server;
            }
        }
        panic!("redis-server did not start after 5 attempts");
    }
}

/// A port free on 127.0.0.1 whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A running `redis-server`, killed (and its directory removed) when dropped.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    config: Vec<(String, String)>,
    sentinel: Option<Vec<String>>,
    /// Its `requirepass`, sent with every `command`.
    password: Option<String>,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// A server with the default configuration.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// A replica of `master`, returned once its replication link is up.
    pub fn replica_of(master: &RedisServer) -> Self {
        let replica = Self::builder()
            .config("replicaof", &format!("127.0.0.1 {}", master.port()))
            .start();
        let deadline = Instant::now() + Duration::from_secs(10);
        while replica
            .info_field("replication", "master_link_status")
            .as_deref()
            != Some("up")
        {
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }

    /// A server to configure before it starts.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder {
            config: vec![
                ("save".into(), String::new()),
                ("appendonly".into(), "no".into()),
            ],
            sentinel: None,
            cluster_bus: false,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The URL with its `requirepass`, if it has one.
    pub fn authed_url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => self.url(),
        }
    }

    /// One field (`field:value`) of `INFO section`; `None` also when the node did not answer
    /// (Sentinel closes every client of a node it reconfigures in a
    /// failover), so that callers polling for a state simply ask again.
    pub fn info_field(&self, section: &str, name: &str) -> Option<String> {
        let Ok(Reply::Bulk(info)) = self.try_command(&["INFO", section], COMMAND_TIMEOUT) else {
            return None;
        };
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    }

    /// Until some client is subscribed to a channel matching `pattern`
    /// (a permitd instance's wake channel: a release hands a waiter its
    /// permit only while its instance listens); panics after 5 s.
    pub async fn until_subscribed(&self, pattern: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let channels = self.command(&["PUBSUB", "CHANNELS", pattern]);
            if matches!(channels, Reply::Array(ref c) if !c.is_empty()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nobody subscribed to {pattern}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// How many times `command` (lower case, as `INFO commandstats` names
    /// it) ran since the start or the last `CONFIG RESETSTAT`; panics if
    /// Redis does not answer, so a silent node never reads as zero calls.
    pub fn calls(&self, command: &str) -> u64 {
        let Reply::Bulk(stats) = self.command(&["INFO", "commandstats"]) else {
            panic!("INFO commandstats did not answer a bulk string");
        };
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Ids of the connections that serve calls: neither a subscriber's nor
    /// the one asking.
    pub fn call_connections(&self) -> HashSet<String> {
        let Reply::Bulk(clients) = self.command(&["CLIENT", "LIST"]) else {
            panic!("CLIENT LIST did not answer a bulk string");
        };
        clients
            .lines()
            .filter(|line| line.contains(" sub=0 psub=0 ") && !line.contains("cmd=client|list"))
            .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
            .map(str::to_owned)
            .collect()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it keeps its snapshot (`dump.rdb`); the same after a restart.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends one command and returns the whole reply; panics if Redis does not
    /// answer. An error reply is a [`Reply::Error`], not a panic.
    pub fn command(&self, args: &[&str]) -> Reply {
        self.try_command(args, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("redis-server :{} did not answer {args:?}: {e}", self.port))
    }

    /// Sends one command; `Err` when Redis is down or silent for `timeout`.
    ///
    /// # Errors
    /// Connection, time-out and protocol failures.
    pub fn try_command(&self, args: &[&str], timeout: Duration) -> std::io::Result<Reply> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut reader = BufReader::new(&stream);
        if let Some(password) = &self.password {
            send(&stream, &["AUTH", password])?;
            Reply::read(&mut reader)?;
        }
        send(&stream, args)?;
        Reply::read(&mut reader)
    }

    /// Kills the server with SIGKILL, like a crash: no save, no goodbye.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and
    /// in the same directory (so it loads a snapshot saved there).
    pub fn restart(&self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.launch() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.lock().unwrap();
        let pid = child.as_ref().expect("redis-server is running").id();
        let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // SAFETY: kill(2) with the pid of our own child, which we have not
        // reaped (it is still in `self.child`), so the pid cannot be reused.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "signal {signal} to redis-server");
    }

    /// Starts the process and waits until it answers `PING` (a server still
    /// loading its snapshot answers `-LOADING` and is waited for).
    fn launch(&self) -> bool {
        let mut command = Command::new("redis-server");
        if let Some(lines) = &self.sentinel {
            // Written once: on a restart Sentinel finds what it rewrote.
            let file = self.dir.join("sentinel.conf");
            if !file.exists() {
                std::fs::write(&file, lines.join("\n") + "\n").expect("sentinel.conf");
            }
            command.arg(&file).arg("--sentinel");
        }
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (name, value) in &self.config {
            command.arg(format!("--{name}")).arg(value);
        }
        die_with_parent(&mut command);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed; the tests need a real Redis. Install the Debian \
                 package: `sudo apt-get install -y redis-server` (scripts/test does this for you)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let ping = self.try_command(&["PING"], COMMAND_TIMEOUT);
            if matches!(ping, Ok(Reply::Status(ref s)) if s == "PONG") {
                return true;
            }
            let mut child = self.child.lock().unwrap();
            if let Some(Ok(Some(_))) = child.as_mut().map(Child::try_wait) {
                // It exited: most likely the port was taken.
                *child = None;
                return false;
            }
            drop(child);
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }
}

/// Sends one command as a RESP array of bulk strings, so arguments may hold
/// spaces.
fn send(mut stream: &TcpStream, args: &[&str]) -> std::io::Result<()> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3\r\nabc`, read as UTF-8 (lossily).
    Bulk(String),
    Array(Vec<Reply>),
    /// A null bulk string or array.
    Nil,
}

impl Reply {
    /// Whether it is `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Status(s) if s == "OK")
    }

    /// The integer; panics on any other reply.
    pub fn integer(&self) -> i64 {
        match self {
            Reply::Integer(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// The bulk strings of an array reply (as `KEYS` gives); panics otherwise.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(items) => items
                .iter()
                .map(|item| match item {
                    Reply::Bulk(s) => s.clone(),
                    other => panic!("expected bulk strings, got {other:?}"),
                })
                .collect(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }

    fn read(reader: &mut impl BufRead) -> std::io::Result<Reply> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
        let number = || -> std::io::Result<i64> {
            rest.parse()
                .map_err(|_| invalid(format!("bad length in {line:?}")))
        };
        Ok(match kind {
            "+" => Reply::Status(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Integer(number()?),
            "$" => match usize::try_from(number()?) {
                Err(_) => Reply::Nil,
                Ok(len) => {
                    let mut bytes = vec![0; len + 2];
                    reader.read_exact(&mut bytes)?;
                    bytes.truncate(len);
                    Reply::Bulk(String::from_utf8_lossy(&bytes).into_owned())
                }
            },
            "*" => match usize::try_from(number()?) {
                Err(_) => Reply::Nil,
                Ok(len) => Reply::Array(
                    (0..len)
                        .map(|_| Reply::read(reader))
                        .collect::<Result<_, _>>()?,
                ),
            },
            _ => return Err(invalid(format!("not a RESP reply: {line:?}"))),
        })
    }
}

// The harness's own promises, which later tests (restarts, stalls,
// replicas) build on.

#[test]
fn a_restarted_redis_server_loads_the_snapshot_in_its_directory() {
    let redis = RedisServer::start();
    assert!(redis.command(&["SET", "kept", "a value"]).is_ok());
    assert!(redis.command(&["SAVE"]).is_ok());
    assert!(redis.dir().join("dump.rdb").is_file());
    redis.kill();
    assert!(redis.try_command(&["PING"], COMMAND_TIMEOUT).is_err());
    redis.restart();
    assert_eq!(
        redis.command(&["GET", "kept"]),
        Reply::Bulk("a value".into())
    );
}

#[test]
fn a_paused_redis_server_answers_once_resumed() {
    let redis = RedisServer::start();
    redis.pause();
    let silent = redis.try_command(&["PING"], Duration::from_millis(200));
    assert!(silent.is_err(), "a paused server answered {silent:?}");
    redis.resume();
    assert_eq!(redis.command(&["PING"]), Reply::Status("PONG".into()));
}

#[test]
fn extra_configuration_replaces_a_default_and_adds_to_the_rest() {
    let redis = RedisServer::builder()
        .config("save", "3600 1")
        .config("maxmemory-policy", "noeviction")
        .start();
    let get = |name: &str| redis.command(&["CONFIG", "GET", name]).strings();
    assert_eq!(get("save"), ["save", "3600 1"]);
    assert_eq!(get("maxmemory-policy"), ["maxmemory-policy", "noeviction"]);
    assert_eq!(get("appendonly"), ["appendonly", "no"]);
    let dir = get("dir");
    assert_eq!(
        std::path::Path::new(&dir[1]).canonicalize().unwrap(),
        redis.dir().canonicalize().unwrap()
    );
}

#[test]
fn a_replica_follows_its_primary() {
    let primary = RedisServer::start();
    let replica = RedisServer::builder()
        .config("replicaof", &format!("127.0.0.1 {}", primary.port()))
        .start();
    assert!(primary.command(&["SET", "copied", "yes"]).is_ok());
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.command(&["GET", "copied"]) != Reply::Bulk("yes".into()) {
        assert!(Instant::now() < deadline, "the replica never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
}
