//! Draining on shutdown: what a request sees between the signal and the exit.
//!
//! When shutdown begins, `/readyz` answers 503 at once (so load balancers
//! stop sending), while the server keeps accepting and serving: for the
//! shutdown delay as usual (`startup`), then while it drains. Requests in
//! flight are counted here ([`Drain::enter`]) so the shutdown can wait until none is
//! left, within `--shutdown-grace-ms`; then the waiting acquires are answered
//! 503 and leave their queues (`waiting`), and the server stops. Acquires are
//! not counted: one that tries once is answered within the store's timeout
//! anyway, and one that waits would hold the shutdown for its whole wait,
//! which is exactly what the drain ends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::extract::Request;
use axum::http::Method;
use tokio::sync::Notify;

use super::observe::route_of;

/// Whether shutdown has begun, and how many requests it waits for.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Drain {
    /// Shutdown has begun: `/readyz` answers 503 from now on.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Requests being served now, acquires left out.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts `request` while the returned guard lives, unless it is an
    /// acquire (see the module docs).
    pub fn enter(&self, request: &Request) -> Option<InFlight<'_>> {
        let acquire =
            request.method() == Method::POST && route_of(request) == "/semaphores/{name}/permits";
        if acquire {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(InFlight(self))
    }

    /// Completes once no counted request is in flight.
    pub async fn until_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before looking, so a request that ends in between
            // still wakes us.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one request while it is served, also when its future is dropped
/// (the client went away, the time budget ran out).
pub struct InFlight<'a>(&'a Drain);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_is_reached_when_the_last_request_ends() {
        let drain = std::sync::Arc::new(Drain::default());
        drain.until_idle().await;
        drain.in_flight.fetch_add(2, Ordering::SeqCst);
        let waiting = tokio::spawn({
            let drain = drain.clone();
            async move { drain.until_idle().await }
        });
        drop(InFlight(&drain));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(InFlight(&drain));
        waiting.await.unwrap();
    }
}
