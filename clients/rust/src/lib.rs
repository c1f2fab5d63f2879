//! permitd-client: the Rust client of permitd, a distributed counting
//! semaphore served over HTTP.
//!
//! ```no_run
//! # async fn example() -> Result<(), permitd_client::Error> {
//! use std::time::Duration;
//!
//! let client = permitd_client::Client::new("http://127.0.0.1:8080")?;
//! let permit = client
//!     .semaphore("payments")
//!     .limit(5)
//!     .acquire()
//!     .ttl(Duration::from_secs(30))
//!     .wait(Duration::from_secs(120))
//!     .await?;
//! // ... call the payments API, passing permit.fencing_token() along ...
//! permit.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! - [`acquire`]: one acquire as several long polls when the wait is longer
//!   than the server allows, retried on connection errors and 503 with one
//!   `Idempotency-Key`, so a retry never takes a second permit;
//! - [`permit`]: the [`Permit`] guard, its background refresh, how a lost
//!   lease is reported, release and the best-effort release on drop;
//! - [`error`]: the [`Error`] enum, one variant per documented refusal;
//! - this module: the [`Client`] (base URL, token, timeouts, retry bounds),
//!   [`Semaphore`] handles, and the one function that sends a request.

#![warn(missing_docs)]

pub mod acquire;
pub mod error;
pub mod permit;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::OnceCell;

pub use acquire::Acquire;
pub use error::{Error, LostReason, Problem};
pub use permit::Permit;

/// The longest wait permitd allows by default (`--max-wait-ms`), assumed when
/// the server's own bound cannot be read.
pub const DEFAULT_SERVER_MAX_WAIT: Duration = Duration::from_secs(60);

/// A connection to one permitd (or a load balancer in front of several).
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Without a trailing slash.
    base: String,
    token: Option<String>,
    request_timeout: Duration,
    retry: RetryPolicy,
    /// The server's `wait_ms` maximum: given to the builder, or read once from
    /// the served OpenAPI document.
    server_max_wait: OnceCell<Duration>,
}

/// How failed calls are retried: connection errors and 503 only, never a
/// refusal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub max_retries: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// How long an acquire that does not wait (or waits less) may still spend
    /// on retries.
    pub min_window: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .field("token", &self.inner.token.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Client`], from [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    server_max_wait: Option<Duration>,
    retry: RetryPolicy,
}

impl ClientBuilder {
    /// A bearer token (`Authorization: Bearer <token>`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Bound on opening a connection (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on one call, on top of the time a long poll asks the server to
    /// wait (default 10 s, permitd's own request budget).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The server's `--max-wait-ms`. Without it the client reads the bound
    /// from the server's `/openapi.json` the first time it waits.
    pub fn server_max_wait(mut self, max: Duration) -> Self {
        self.server_max_wait = Some(max);
        self
    }

    /// How long a call that cannot reach permitd keeps retrying when the
    /// acquire's own wait is shorter (default 2 s), and how many retries at
    /// most (default 10).
    pub fn retries(mut self, window: Duration, max_retries: u32) -> Self {
        self.retry.min_window = window;
        self.retry.max_retries = max_retries;
        self
    }

    /// # Errors
    /// [`Error::InvalidArgument`] when the URL is not an `http` or `https`
    /// URL without query or fragment, the token is not a valid header value,
    /// or the TLS setup fails.
    pub fn build(self) -> Result<Client, Error> {
        let url = reqwest::Url::parse(&self.base)
            .map_err(|e| Error::InvalidArgument(format!("URL {:?}: {e}", self.base)))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.query().is_some()
            || url.fragment().is_some()
            || url.host_str().is_none()
        {
            return Err(Error::InvalidArgument(format!(
                "URL {:?}: expected http(s)://host[:port][/path]",
                self.base
            )));
        }
        if let Some(token) = &self.token
            && (token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::InvalidArgument(
                "the token must be visible ASCII without spaces".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("HTTP client: {e}")))?;
        let server_max_wait = OnceCell::new();
        if let Some(max) = self.server_max_wait {
            let _ = server_max_wait.set(max);
        }
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base: url.as_str().trim_end_matches('/').to_owned(),
                token: self.token,
                request_timeout: self.request_timeout,
                retry: self.retry,
                server_max_wait,
            }),
        })
    }
}

impl Client {
    /// A client of the permitd at `base_url` (e.g. `http://127.0.0.1:8080`),
    /// with the default settings.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a URL that is not http(s).
    pub fn new(base_url: &str) -> Result<Self, Error> {
        Self::builder(base_url).build()
    }

    /// A builder for a client of `base_url`, to set a token, timeouts or
    /// retry bounds before [`ClientBuilder::build`].
    pub fn builder(base_url: &str) -> ClientBuilder {
        ClientBuilder {
            base: base_url.to_owned(),
            token: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            server_max_wait: None,
            retry: RetryPolicy {
                max_retries: 10,
                first_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                min_window: Duration::from_secs(2),
            },
        }
    }

    /// A handle on the semaphore `name`; nothing is sent yet.
    pub fn semaphore(&self, name: &str) -> Semaphore {
        Semaphore {
            client: self.clone(),
            name: name.to_owned(),
            limit: None,
        }
    }

    /// The connection check: `true` when permitd and its store answer
    /// `/readyz` with 200, `false` when either does not (one attempt, within
    /// the request timeout).
    pub async fn ready(&self) -> bool {
        self.call(Method::GET, "/readyz", None, None, self.request_timeout())
            .await
            .is_ok_and(|answer| answer.status == StatusCode::OK)
    }

    pub(crate) fn retry(&self) -> RetryPolicy {
        self.inner.retry
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The longest `wait_ms` the server accepts: configured, or read once from
    /// `/openapi.json` (where permitd states its bounds), else the default.
    pub(crate) async fn server_max_wait(&self) -> Duration {
        let read = self
            .inner
            .server_max_wait
            .get_or_try_init(|| async {
                let answer = self
                    .call(
                        Method::GET,
                        "/openapi.json",
                        None,
                        None,
                        self.request_timeout(),
                    )
                    .await
                    .map_err(|_| ())?;
                let document: serde_json::Value =
                    serde_json::from_slice(&answer.body).map_err(|_| ())?;
                document
                    .pointer("/components/schemas/AcquireBody/properties/wait_ms/maximum")
                    .and_then(serde_json::Value::as_u64)
                    .map(Duration::from_millis)
                    .ok_or(())
            })
            .await;
        match read {
            Ok(max) => *max,
            Err(()) => {
                tracing::debug!("the server's maximum wait is unknown; assuming 60 s");
                DEFAULT_SERVER_MAX_WAIT
            }
        }
    }

    /// Sends one request. An answer of any status is `Ok`; only a request
    /// that got no answer is `Err`.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer, Transport> {
        let mut request = self
            .inner
            .http
            .request(method, format!("{}{path}", self.inner.base))
            .timeout(timeout);
        if let Some(token) = &self.inner.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(Transport::from)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(Transport::from)?;
        Ok(Answer {
            status,
            retry_after,
            body: body.to_vec(),
        })
    }
}

/// An HTTP answer, read whole.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The error this (non-success) answer stands for.
    pub(crate) fn error(&self) -> Error {
        let status = self.status.as_u16();
        let problem = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Problem::from_text(status, &String::from_utf8_lossy(&self.body)));
        Error::from_answer(status, problem, self.retry_after)
    }

    /// Whether a retry may get another answer: 503 (the store, or permitd
    /// draining), 502/504 from a proxy in front of permitd.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self.status.as_u16(), 502..=504)
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Api {
            status: self.status.as_u16(),
            problem: Problem::from_text(self.status.as_u16(), &format!("unexpected body: {e}")),
        })
    }
}

/// A request that got no answer.
#[derive(Debug)]
pub(crate) struct Transport {
    pub message: String,
    /// Whether the request certainly never reached the server (the
    /// connection was refused or could not be opened).
    pub not_sent: bool,
}

impl From<reqwest::Error> for Transport {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's Display names only the outer layer ("error sending
        // request"); the cause ("connection refused") is what helps.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        Transport {
            message,
            not_sent: e.is_connect(),
        }
    }
}

/// A semaphore of one permitd, by name.
#[derive(Debug, Clone)]
pub struct Semaphore {
    client: Client,
    name: String,
    limit: Option<u32>,
}

/// A semaphore's state, from [`Semaphore::status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    /// At most this many units are held at once.
    pub limit: u32,
    /// Units held by live permits.
    pub held: u32,
    /// `limit - held`.
    pub available: u32,
    /// Waiting acquires in line.
    pub waiting: u32,
    /// The live permits, oldest first.
    #[serde(default)]
    pub holders: Vec<Holder>,
}

/// One live permit, as [`Status`] shows it (its id stays with its holder).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Holder {
    /// The holder's own label, when it gave one.
    pub holder: Option<String>,
    /// Units the permit holds.
    pub count: u32,
    /// The permit's fencing token.
    pub fencing_token: u64,
    /// When it was granted (RFC 3339, permitd's clock).
    pub acquired_at: String,
    /// When its lease ends unless refreshed (RFC 3339, permitd's clock).
    pub expires_at: String,
}

impl Semaphore {
    /// The limit this caller expects: an unknown semaphore is created with it,
    /// one with another limit is [`Error::LimitConflict`]. Without it, an
    /// unknown semaphore is [`Error::NotFound`].
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An acquire of one unit with the server's default lease, trying once;
    /// change it with the [`Acquire`] methods, then `.await` it.
    pub fn acquire(&self) -> Acquire {
        Acquire::new(self.client.clone(), self.name.clone(), self.limit)
    }

    /// Limit, held, available and waiting, now.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown semaphore, [`Error::Unavailable`]
    /// when permitd does not answer, or the refusal it answers.
    pub async fn status(&self) -> Result<Status, Error> {
        let answer = self.call(Method::GET, None).await?;
        if answer.status == StatusCode::OK {
            answer.json()
        } else {
            Err(answer.error())
        }
    }

    /// Makes sure the semaphore exists with the handle's [`limit`](Self::limit):
    /// one with that limit is shared as it is, one with another is
    /// [`Error::LimitConflict`] and left unchanged, and an unknown one is made.
    /// permitd has no create-only call, so this reads first: two creators
    /// racing with different limits leave the later one's (an acquire with a
    /// limit checks atomically).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] without a limit, [`Error::LimitConflict`],
    /// [`Error::Unavailable`] when permitd does not answer, or the refusal it
    /// answers.
    pub async fn create(&self) -> Result<Status, Error> {
        let limit = self
            .limit
            .ok_or_else(|| Error::InvalidArgument("create needs a limit".into()))?;
        match self.status().await {
            Ok(status) if status.limit == limit => Ok(status),
            Ok(status) => Err(Error::LimitConflict {
                current: Some(status.limit),
            }),
            Err(Error::NotFound(_)) => self.set_limit(limit).await,
            Err(e) => Err(e),
        }
    }

    /// Creates the semaphore with `limit`, or changes its limit (holders
    /// keep their permits; an admin token's call when a token is needed).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when permitd does not answer, or the refusal it
    /// answers.
    pub async fn set_limit(&self, limit: u32) -> Result<Status, Error> {
        let body = serde_json::json!({ "limit": limit });
        let answer = self.call(Method::PUT, Some(&body)).await?;
        if answer.status.is_success() {
            answer.json()
        } else {
            Err(answer.error())
        }
    }

    /// Removes the semaphore and every permit of it (an admin token's call).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown semaphore, [`Error::Unavailable`]
    /// when permitd does not answer, or the refusal it answers.
    pub async fn delete(&self) -> Result<(), Error> {
        let answer = self.call(Method::DELETE, None).await?;
        if answer.status == StatusCode::NO_CONTENT {
            Ok(())
        } else {
            Err(answer.error())
        }
    }

    /// `method` on the semaphore's own URL, once; no answer is `Unavailable`.
    async fn call(
        &self,
        method: Method,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, Error> {
        check_name(&self.name)?;
        let path = format!("/semaphores/{}", self.name);
        self.client
            .call(method, &path, body, None, self.client.request_timeout())
            .await
            .map_err(|t| Error::Unavailable {
                reason: t.message,
                retry_after: None,
            })
    }
}

/// A semaphore name as permitd accepts it (1-128 of `A-Z a-z 0-9 . _ - :`),
/// checked before it becomes part of a URL path (where `.` and `..` would be
/// resolved away as path segments, so they are refused too).
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let ok = (1..=128).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "semaphore name {name:?}: 1-128 characters of A-Z a-z 0-9 . _ - :"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_without_query_are_accepted() {
        for good in [
            "http://127.0.0.1:8080",
            "https://permitd.example/",
            "http://h/base/",
        ] {
            assert!(Client::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1:8080",
            "ftp://h",
            "http://h/?x=1",
            "http://h/#f",
        ] {
            assert!(
                matches!(Client::new(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
        let client = Client::new("http://h/base/").unwrap();
        assert_eq!(client.inner.base, "http://h/base");
    }

    #[test]
    fn a_token_with_a_space_is_refused_and_never_shown() {
        let bad = Client::builder("http://h").token("a b").build();
        assert!(matches!(bad, Err(Error::InvalidArgument(_))));
        let client = Client::builder("http://h")
            .token("secret-1")
            .build()
            .unwrap();
        assert!(!format!("{client:?}").contains("secret-1"));
    }

    #[test]
    fn names_outside_the_alphabet_are_refused_before_sending() {
        assert!(check_name("payments:eu-1.v_2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "..%2f", &"x".repeat(129), "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
