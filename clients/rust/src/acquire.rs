//! One acquire, from the caller's wait down to HTTP calls.
//!
//! permitd bounds how long one request may wait (`--max-wait-ms`, 60 s by
//! default), so a longer wait is a series of long polls. Every call of one
//! acquire carries the same `Idempotency-Key` (a fresh UUIDv4 per acquire),
//! and the same body apart from `wait_ms` (which permitd leaves out of the
//! idempotency comparison): when an answer is lost, the retry gets the permit
//! the first call took (200) instead of a second one. Connection errors, 502,
//! 503 and 504 are retried with backoff, honouring `Retry-After`, within the
//! wait (or the client's retry window, when the wait is shorter); a refusal
//! is returned at once.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::permit::{self, Permit};
use crate::{Client, Error, check_name};

/// An acquire being described; `.await` it to send it.
#[derive(Debug, Clone)]
#[must_use = "an acquire does nothing until it is awaited"]
pub struct Acquire {
    client: Client,
    name: String,
    limit: Option<u32>,
    count: u32,
    ttl: Option<Duration>,
    wait: Duration,
    holder: Option<String>,
}

/// The 201/200 body of an acquire.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Granted {
    pub id: String,
    pub semaphore: String,
    pub count: u32,
    pub fencing_token: u64,
    pub acquired_at: String,
    pub expires_at: String,
    #[serde(default)]
    pub holder: Option<String>,
}

impl Acquire {
    pub(crate) fn new(client: Client, name: String, limit: Option<u32>) -> Self {
        Self {
            client,
            name,
            limit,
            count: 1,
            ttl: None,
            wait: Duration::ZERO,
            holder: None,
        }
    }

    /// Units to take at once, all or nothing (default 1).
    pub fn count(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    /// The lease (default: the server's, 30 s unless configured). The permit
    /// refreshes it in the background while held.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long to wait for capacity (default: try once). Any length: waits
    /// beyond the server's maximum are several long polls.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// A label shown in the semaphore's status and permitd's logs.
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    fn body(&self, wait: Duration) -> serde_json::Value {
        let mut body = serde_json::json!({
            "count": self.count,
            "wait_ms": millis(wait),
        });
        if let Some(limit) = self.limit {
            body["limit"] = limit.into();
        }
        if let Some(ttl) = self.ttl {
            body["ttl_ms"] = millis(ttl).into();
        }
        if let Some(holder) = &self.holder {
            body["holder"] = holder.as_str().into();
        }
        body
    }

    fn check(&self) -> Result<(), Error> {
        check_name(&self.name)?;
        if self.count == 0 {
            return Err(Error::InvalidArgument("count must be at least 1".into()));
        }
        if self.limit == Some(0) {
            return Err(Error::InvalidArgument("limit must be at least 1".into()));
        }
        Ok(())
    }

    async fn send(self) -> Result<Permit, Error> {
        self.check()?;
        let key = uuid::Uuid::new_v4().to_string();
        let path = format!("/semaphores/{}/permits", self.name);
        let policy = self.client.retry();
        let started = Instant::now();
        let deadline = started + self.wait;
        let retry_deadline = deadline.max(started + policy.min_window);
        let server_max = if self.wait.is_zero() {
            Duration::ZERO
        } else {
            self.client.server_max_wait().await
        };
        let mut retries = 0;
        let mut backoff = policy.first_backoff;
        loop {
            let poll = deadline
                .saturating_duration_since(Instant::now())
                .min(server_max);
            let sent_at = Instant::now();
            let answer = self
                .client
                .call(
                    Method::POST,
                    &path,
                    Some(&self.body(poll)),
                    Some(&key),
                    poll + self.client.request_timeout(),
                )
                .await;
            let failure = match answer {
                Ok(answer) if answer.status.is_success() => {
                    let grant = permit::Grant {
                        sent_at,
                        answered_at: Instant::now(),
                        waited: !poll.is_zero(),
                        replayed: answer.status == StatusCode::OK,
                    };
                    let granted: Granted = answer.json()?;
                    return Ok(Permit::start(self.client.clone(), granted, grant));
                }
                Ok(answer) if answer.status == StatusCode::TOO_MANY_REQUESTS => {
                    // Another long poll while the wait lasts; a full
                    // semaphore is no failure, so the retry count restarts.
                    if millis(deadline.saturating_duration_since(Instant::now())) == 0 {
                        return Err(answer.error());
                    }
                    retries = 0;
                    backoff = policy.first_backoff;
                    continue;
                }
                Ok(answer) if answer.is_transient() || first_call_running(&answer) => {
                    answer.error()
                }
                Ok(answer) => return Err(answer.error()),
                Err(transport) => Error::Unavailable {
                    reason: transport.message,
                    retry_after: None,
                },
            };
            let delay = match &failure {
                Error::Unavailable {
                    retry_after: Some(after),
                    ..
                } => *after,
                _ => backoff,
            };
            retries += 1;
            // Within the caller's wait, retries go on as long as it lasts (an
            // outage may outlast any count); past it, only a few, within the
            // short window a try-once acquire gets.
            let retry_at = Instant::now() + delay;
            if retry_at > retry_deadline || (retry_at > deadline && retries > policy.max_retries) {
                return Err(failure);
            }
            tracing::debug!(error = %failure, ?delay, retries, "acquire retried");
            tokio::time::sleep(delay).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }
}

/// A 409 that is none of the documented refusals: the key's first request
/// is still being answered (a retry that overtook it), so try again shortly.
fn first_call_running(answer: &crate::Answer) -> bool {
    answer.status == StatusCode::CONFLICT
        && !matches!(
            answer.error(),
            Error::LimitConflict { .. }
                | Error::CountExceedsLimit { .. }
                | Error::IdempotencyMismatch(_)
        )
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl IntoFuture for Acquire {
    type Output = Result<Permit, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_only_what_was_chosen() {
        let client = Client::new("http://h").unwrap();
        let plain = client.semaphore("s").acquire();
        assert_eq!(
            plain.body(Duration::ZERO),
            serde_json::json!({"count": 1, "wait_ms": 0})
        );
        let full = client
            .semaphore("s")
            .limit(3)
            .acquire()
            .count(2)
            .ttl(Duration::from_secs(5))
            .holder("w");
        assert_eq!(
            full.body(Duration::from_millis(1500)),
            serde_json::json!({"limit": 3, "count": 2, "ttl_ms": 5000, "wait_ms": 1500, "holder": "w"})
        );
    }

    #[tokio::test]
    async fn bad_values_are_refused_before_anything_is_sent() {
        // Port 9 (discard) on a TEST-NET address: nothing is ever sent there.
        let client = Client::new("http://192.0.2.1:9").unwrap();
        for acquire in [
            client.semaphore("a/b").acquire(),
            client.semaphore("s").acquire().count(0),
            client.semaphore("s").limit(0).acquire(),
        ] {
            assert!(matches!(acquire.await, Err(Error::InvalidArgument(_))));
        }
    }
}
