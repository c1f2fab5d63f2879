//! The [`Permit`] guard: what the holder knows of its permit, the background
//! task that keeps the lease alive, and how the permit ends.
//!
//! The refresher asks for a new lease every third of the lease, and sooner
//! after a failed attempt. It keeps its own idea of when the lease ends, on
//! the local clock, since the client's clock and permitd's differ only by
//! what elapsed in flight. A refresh's lease counts from when it was *sent*
//! (permitd cannot have renewed it earlier). An acquire's lease counts from
//! the grant, and a waiting acquire is answered the moment it is granted, so
//! it counts from when the answer arrived: counted from the sending, any wait
//! longer than the lease would end the lease before the work began. Since
//! the grant may precede the answer by its time in flight, the first refresh
//! goes out a third of the lease after the acquire was sent, which is at once
//! after a long wait, and from then on the lease end is a sending time again.
//! A replayed acquire (an Idempotency-Key's earlier grant) is refreshed at
//! once too: its lease began with that earlier request.
//!
//! The permit is reported lost ([`Permit::lost`]) when permitd answers 404
//! (the lease ended, or someone released it or deleted the semaphore), or
//! when that local end passes without a confirmed refresh: from then on
//! another holder may have the unit.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::acquire::Granted;
use crate::{Client, Error, LostReason};

/// Lease assumed when the timestamps of a grant cannot be read (permitd's
/// default lease).
const FALLBACK_LEASE: Duration = Duration::from_secs(30);

/// A held permit. Release it with [`Permit::release`] to learn whether it
/// was still held; dropping it releases it too, best effort (in the
/// background, when a tokio runtime is still running, errors unreported).
#[derive(Debug)]
#[must_use = "dropping a permit releases it at once"]
pub struct Permit {
    client: Client,
    granted: Granted,
    /// `/semaphores/{name}/permits/{id}`.
    path: String,
    lease: Duration,
    lost: watch::Receiver<Option<LostReason>>,
    refresher: JoinHandle<()>,
    released: bool,
}

impl Permit {
    /// A granted permit and when its lease is known to run: `timing` says
    /// when its acquire was sent and answered. Starts its refresher (so it
    /// must be called inside a tokio runtime).
    pub(crate) fn start(client: Client, granted: Granted, timing: Grant) -> Self {
        let lease = lease_of(&granted).unwrap_or_else(|| {
            tracing::warn!(
                acquired_at = granted.acquired_at,
                expires_at = granted.expires_at,
                "unreadable lease timestamps; refreshing as if the lease were 30 s"
            );
            FALLBACK_LEASE
        });
        let path = format!("/semaphores/{}/permits/{}", granted.semaphore, granted.id);
        let (lost_tx, lost) = watch::channel(None);
        let refresher = tokio::spawn(refresh(
            client.clone(),
            path.clone(),
            lease,
            timing,
            lost_tx,
        ));
        Self {
            client,
            granted,
            path,
            lease,
            lost,
            refresher,
            released: false,
        }
    }

    /// The permit id: the capability to refresh and release it.
    pub fn id(&self) -> &str {
        &self.granted.id
    }

    /// The semaphore it is a permit of.
    pub fn semaphore(&self) -> &str {
        &self.granted.semaphore
    }

    /// Units it holds.
    pub fn count(&self) -> u32 {
        self.granted.count
    }

    /// Strictly increasing per semaphore: hand it to systems that can refuse
    /// work from a holder whose lease already ended.
    pub fn fencing_token(&self) -> u64 {
        self.granted.fencing_token
    }

    /// When permitd granted it (RFC 3339, permitd's clock).
    pub fn acquired_at(&self) -> &str {
        &self.granted.acquired_at
    }

    /// The label given at acquire, if any.
    pub fn holder(&self) -> Option<&str> {
        self.granted.holder.as_deref()
    }

    /// The lease each refresh asks for.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Why the permit was lost, if it has been.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.lost.borrow().clone()
    }

    /// Completes when the lease is lost (never, while it is held): race the
    /// work against it, and stop the work when it completes.
    pub async fn lost(&self) -> LostReason {
        let mut lost = self.lost.clone();
        match lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(LostReason::Ended),
            // The refresher ended without a verdict: only when the permit is
            // being released, which takes it by value; nothing to report.
            Err(_) => std::future::pending().await,
        }
    }

    /// Releases the permit and stops refreshing it.
    ///
    /// # Errors
    /// [`Error::PermitLost`] when the lease had already been lost (the work
    /// done under it may have overlapped with another holder's);
    /// [`Error::Unavailable`] when permitd could not be reached within the
    /// client's retry bounds (the lease then runs out by itself); any
    /// other refusal as its variant.
    pub async fn release(mut self) -> Result<(), Error> {
        self.released = true;
        self.refresher.abort();
        if let Some(reason) = self.lost_reason() {
            if reason == LostReason::Ended {
                return Err(Error::PermitLost(reason));
            }
            // Unconfirmed: permitd may still hold it (our idea of the lease
            // end is on the safe side), so one attempt may free the unit
            // now; not the retries of a live permit's release, since the
            // lease is over or nearly so, and the gap is reported either way.
            let timeout = self.client.request_timeout().min(Duration::from_secs(1));
            let _ = self
                .client
                .call(Method::DELETE, &self.path, None, None, timeout)
                .await;
            return Err(Error::PermitLost(reason));
        }
        self.delete().await
    }

    async fn delete(&self) -> Result<(), Error> {
        let policy = self.client.retry();
        let deadline = Instant::now() + policy.min_window;
        let mut backoff = policy.first_backoff;
        // Whether an earlier attempt may have reached permitd and released
        // the permit, its answer lost: then a 404 is our own release.
        let mut maybe_released = false;
        for retries in 0.. {
            let failure = match self
                .client
                .call(
                    Method::DELETE,
                    &self.path,
                    None,
                    None,
                    self.client.request_timeout(),
                )
                .await
            {
                Ok(answer) if answer.status.is_success() => return Ok(()),
                Ok(answer) if answer.status == StatusCode::NOT_FOUND => {
                    return if maybe_released {
                        Ok(())
                    } else {
                        Err(Error::PermitLost(LostReason::Ended))
                    };
                }
                Ok(answer) if answer.is_transient() => {
                    maybe_released |= answer.status != StatusCode::SERVICE_UNAVAILABLE;
                    answer.error()
                }
                Ok(answer) => return Err(answer.error()),
                Err(transport) => {
                    maybe_released |= !transport.not_sent;
                    Error::Unavailable {
                        reason: transport.message,
                        retry_after: None,
                    }
                }
            };
            let delay = match &failure {
                Error::Unavailable {
                    retry_after: Some(after),
                    ..
                } => *after,
                _ => backoff,
            };
            if retries >= policy.max_retries || Instant::now() + delay > deadline {
                return Err(failure);
            }
            tokio::time::sleep(delay).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
        unreachable!("the loop returns")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.refresher.abort();
        if self.released || self.lost_reason() == Some(LostReason::Ended) {
            return;
        }
        // Drop cannot wait, so the release runs as a task of its own; with
        // no runtime left (the program is ending) the lease runs out instead.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let path = std::mem::take(&mut self.path);
            runtime.spawn(async move {
                let timeout = client.request_timeout();
                match client
                    .call(Method::DELETE, &path, None, None, timeout)
                    .await
                {
                    Ok(answer) if answer.status.is_success() => {}
                    Ok(answer) => tracing::debug!(status = %answer.status, "release on drop"),
                    Err(e) => tracing::debug!(error = e.message, "release on drop"),
                }
            });
        }
    }
}

/// When the acquire that granted a permit was sent and answered, and whether
/// the answer was a replay of an earlier grant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    pub sent_at: Instant,
    pub answered_at: Instant,
    /// The acquire may have waited (`wait_ms` above 0): the grant came at the
    /// end of the wait, not at its start.
    pub waited: bool,
    pub replayed: bool,
}

impl Grant {
    /// The local time the lease surely lasts until, and the first refresh.
    fn schedule(&self, lease: Duration) -> (Instant, Instant) {
        let start = if self.waited {
            self.answered_at
        } else {
            self.sent_at
        };
        let first = if self.replayed {
            self.answered_at
        } else {
            self.sent_at + lease / 3
        };
        (start + lease, first)
    }
}

/// Keeps the lease alive until the permit is released or lost; reports a
/// loss on `lost`.
async fn refresh(
    client: Client,
    path: String,
    lease: Duration,
    grant: Grant,
    lost: watch::Sender<Option<LostReason>>,
) {
    let body = serde_json::json!({ "ttl_ms": lease.as_millis() });
    let (mut lease_end, mut next) = grant.schedule(lease);
    // After a failure, try again soon, but not in a tight loop.
    let retry_gap = (lease / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut last_error = String::from("no refresh attempted");
    loop {
        tokio::time::sleep_until(next.min(lease_end).into()).await;
        let sent_at = Instant::now();
        if sent_at >= lease_end {
            tracing::warn!(
                path,
                last_error,
                "permit lost: no refresh confirmed in time"
            );
            let _ = lost.send(Some(LostReason::Unconfirmed { last_error }));
            return;
        }
        let timeout = client.request_timeout().min(lease_end - sent_at);
        match client
            .call(Method::PATCH, &path, Some(&body), None, timeout)
            .await
        {
            Ok(answer) if answer.status.is_success() => {
                lease_end = sent_at + lease;
                next = sent_at + lease / 3;
                continue;
            }
            Ok(answer) if matches!(answer.status.as_u16(), 404 | 410) => {
                tracing::warn!(path, "permit lost: permitd no longer knows it");
                let _ = lost.send(Some(LostReason::Ended));
                return;
            }
            Ok(answer) => last_error = answer.error().to_string(),
            Err(transport) => last_error = transport.message,
        }
        tracing::warn!(path, error = last_error, "refresh failed; retrying");
        next = Instant::now() + retry_gap;
    }
}

/// The lease a grant was made with: `expires_at - acquired_at`.
fn lease_of(granted: &Granted) -> Option<Duration> {
    let start = unix_millis(&granted.acquired_at)?;
    let end = unix_millis(&granted.expires_at)?;
    let ms = end.checked_sub(start).filter(|ms| *ms > 0)?;
    Some(Duration::from_millis(u64::try_from(ms).ok()?))
}

/// Milliseconds since 1970 of an RFC 3339 UTC timestamp as permitd writes
/// them (`2026-11-28T07:36:53.712Z`; `+00:00` accepted too).
fn unix_millis(text: &str) -> Option<i64> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once(['T', 't'])?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock_parts = clock.splitn(3, ':');
    let hour: i64 = clock_parts.next()?.parse().ok()?;
    let minute: i64 = clock_parts.next()?.parse().ok()?;
    let second: i64 = clock_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let millis: i64 = if fraction.is_empty() {
        0
    } else {
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("{fraction:0<3}")[..3].parse().ok()?
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_as_unix_milliseconds() {
        assert_eq!(unix_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_millis("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            unix_millis("2000-03-01T00:00:00.000Z"),
            Some(951_868_800_000)
        );
        assert_eq!(
            unix_millis("2026-11-28T07:36:53.712+00:00"),
            Some(1_795_851_413_712)
        );
        for bad in [
            "",
            "2026-11-28",
            "2026-13-01T00:00:00Z",
            "2026-11-28T07:36:53.7x2Z",
        ] {
            assert_eq!(unix_millis(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_lease_is_the_span_of_the_grant_even_across_midnight() {
        let granted = Granted {
            id: "i".into(),
            semaphore: "s".into(),
            count: 1,
            fencing_token: 1,
            acquired_at: "2026-12-31T23:59:59.900Z".into(),
            expires_at: "2027-01-01T00:00:00.900Z".into(),
            holder: None,
        };
        assert_eq!(lease_of(&granted), Some(Duration::from_secs(1)));
    }
}
