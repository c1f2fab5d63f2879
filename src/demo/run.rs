//! The run itself: `requests` tasks at once, each acquiring a unit of a fresh
//! demo semaphore through the store trait, calling the target while holding
//! it, and releasing it; the semaphore is removed at the end, also when the
//! caller goes away mid-run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::outbound::{DemoConfig, call};
use super::report::{DemoReport, RequestResult, headline, mean_call_ms, round};
use super::request::{DemoRequest, Target};
use crate::secret::Secret;
use crate::semaphore::{
    AcquireOutcome, AcquireRequest, Count, Holder, IdleTtl, SemaphoreName, Ttl, WaitTime,
};
use crate::store::{SemaphoreStore, StoreError};
use crate::telemetry::TraceContext;
use crate::waiting::{self, WaitError, WaitSettings};

/// Hard end of one demo: a request without a permit by then gives up.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The demo's permits must outlive the slowest call, or a second task could
/// be granted the unit while the first is still calling. They are released
/// explicitly; the lease only matters if this process dies mid-demo.
const PERMIT_TTL: Duration = Duration::from_secs(40);
/// Pause before asking again when a wait ended without a permit (the wait is
/// capped by `--max-wait-ms`, which may be shorter than the demo's deadline).
const RETRY_PAUSE: Duration = Duration::from_millis(3);

/// Why a demo could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The store failed; the demo is abandoned (503 or 500, like the API).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything the tasks of one run share.
struct Run {
    store: Arc<dyn SemaphoreStore>,
    name: SemaphoreName,
    url: String,
    client: reqwest::Client,
    /// Sent as a bearer token with each call (built-in upstream only).
    token: Option<Secret>,
    /// Each call passes on a child of this trace (`traceparent`).
    trace: Option<TraceContext>,
    max_wait_ms: u64,
    waiting: WaitSettings,
    started: Instant,
    deadline: Instant,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
}

impl Run {
    fn elapsed_ms(&self) -> f64 {
        round(self.started.elapsed().as_secs_f64() * 1000.0, 1)
    }
}

/// Runs the demo once and reports it. `on_handled` sees each request as it
/// finishes (the terminal prints it), in the order they finish.
///
/// # Errors
/// When the store fails; the demo semaphore is still removed if possible.
pub async fn run(
    store: Arc<dyn SemaphoreStore>,
    config: &DemoConfig,
    request: &DemoRequest,
    mut on_handled: impl FnMut(&RequestResult),
) -> Result<DemoReport, DemoError> {
    let name = SemaphoreName::parse(&format!("demo-{}", uuid::Uuid::new_v4()))
        .expect("a demo- prefix and a UUID fit the name alphabet");
    store
        .set_limit(&name, request.limit(), IdleTtl::Keep)
        .await?;
    // From here on the semaphore exists; the guard removes it however this
    // function ends, also when the caller drops it (a client hung up).
    let guard = Cleanup {
        store: Some(Arc::clone(&store)),
        name: name.clone(),
    };
    let started = Instant::now();
    let shared = Arc::new(Run {
        store: Arc::clone(&store),
        name: name.clone(),
        url: config.url_of(request.target()),
        client: config.client_for(request.target()).clone(),
        token: config.token_for(request.target()),
        trace: request.trace().copied(),
        max_wait_ms: config.max_wait_ms,
        waiting: config.waiting.clone(),
        started,
        deadline: started + DEADLINE,
        in_flight: AtomicU32::new(0),
        max_in_flight: AtomicU32::new(0),
    });
    let mut tasks = JoinSet::new();
    for index in 1..=request.requests() {
        tasks.spawn(one_request(Arc::clone(&shared), index));
    }
    let mut results = Vec::with_capacity(request.requests() as usize);
    while let Some(joined) = tasks.join_next().await {
        // A task only ends early through a store failure; a panic is a bug
        // and is reported as one rather than swallowed.
        let result = joined.expect("a demo task panicked")?;
        on_handled(&result);
        results.push(result);
    }
    let total = started.elapsed();
    guard.delete_now().await?;

    results.sort_by_key(|r| r.index);
    let total_seconds = round(total.as_secs_f64(), 4);
    let rounds = f64::from(request.requests().div_ceil(request.limit().get()));
    let delay_ms = match request.target() {
        Target::BuiltIn { delay_ms } => *delay_ms as f64,
        Target::Url(_) => mean_call_ms(&results),
    };
    Ok(DemoReport {
        requests: request.requests(),
        limit: request.limit().get(),
        total_seconds,
        ideal_seconds: round(rounds * delay_ms / 1000.0, 4),
        max_concurrency: shared.max_in_flight.load(Ordering::SeqCst),
        summary: headline(total_seconds, request.requests(), request.limit().get()),
        url: shared.url.clone(),
        store: store.kind(),
        semaphore: name.to_string(),
        results,
    })
}

/// One task: acquire, call while holding, release.
async fn one_request(run: Arc<Run>, index: u32) -> Result<RequestResult, StoreError> {
    let Some(permit) = acquire(&run, index).await? else {
        let at = run.elapsed_ms();
        return Ok(RequestResult {
            index,
            status: None,
            wait_ms: at,
            start_ms: at,
            end_ms: at,
            error: Some("no permit before the deadline".into()),
        });
    };
    let wait_ms = run.elapsed_ms();
    // Counted only between grant and release, so it can never exceed what
    // the store lets be held: this is the measurement the report shows.
    let now_in_flight = run.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    run.max_in_flight.fetch_max(now_in_flight, Ordering::SeqCst);
    let start_ms = run.elapsed_ms();
    let traceparent = run.trace.map(|trace| trace.child());
    let outcome = call(&run.client, &run.url, run.token.as_ref(), traceparent).await;
    let end_ms = run.elapsed_ms();
    run.in_flight.fetch_sub(1, Ordering::SeqCst);
    run.store.release(&run.name, permit).await?;
    let (status, error) = match outcome {
        Ok(status) => (Some(status), None),
        Err(kind) => (None, Some(kind.to_owned())),
    };
    Ok(RequestResult {
        index,
        status,
        wait_ms,
        start_ms,
        end_ms,
        error,
    })
}

/// Acquires one unit of the demo semaphore before the run's deadline.
///
/// It waits the way `POST …/permits` with `wait_ms` does (the same FIFO queue
/// and wakes, so a unit is handed over as soon as it is released), for the
/// time left in the run; should that wait end without a permit (it is capped
/// by `--max-wait-ms`), it pauses briefly and asks again until the deadline.
async fn acquire(run: &Run, index: u32) -> Result<Option<crate::semaphore::PermitId>, StoreError> {
    let holder = Holder::parse(&format!("demo request {index}")).ok();
    let ttl = Ttl::new(PERMIT_TTL.as_millis() as u64, PERMIT_TTL.as_millis() as u64)
        .expect("the demo lease is within its own bound");
    loop {
        let left = run.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let wait_ms = (left.as_millis() as u64).min(run.max_wait_ms);
        let request = AcquireRequest {
            name: run.name.clone(),
            // No limit: the semaphore was created with it. Should it be gone
            // (the demo was abandoned), the acquire must not recreate it.
            limit: None,
            count: Count::ONE,
            ttl,
            wait: WaitTime::new(wait_ms, run.max_wait_ms).unwrap_or_default(),
            holder: holder.clone(),
            idempotency_key: None,
        };
        let outcome = waiting::acquire(&run.store, &request, &run.waiting).await;
        // A demo cut short by a shutdown is abandoned like one whose store
        // failed.
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(WaitError::Store(e)) => return Err(e),
            Err(WaitError::ShuttingDown) => {
                return Err(StoreError::Unavailable("permitd is shutting down".into()));
            }
            // As full as can be: wait a little, as for a unit.
            Err(WaitError::TooManyWaiters { .. }) => {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        match outcome {
            AcquireOutcome::Granted(permit) | AcquireOutcome::Replayed(permit) => {
                return Ok(Some(permit.id));
            }
            AcquireOutcome::Unavailable { .. } => tokio::time::sleep(RETRY_PAUSE).await,
            other => {
                return Err(StoreError::Internal(format!(
                    "demo semaphore {}: unexpected acquire outcome {other:?}",
                    run.name
                )));
            }
        }
    }
}

/// Removes the demo semaphore when dropped, unless already removed.
struct Cleanup {
    store: Option<Arc<dyn SemaphoreStore>>,
    name: SemaphoreName,
}

impl Cleanup {
    async fn delete_now(mut self) -> Result<(), StoreError> {
        if let Some(store) = self.store.take() {
            store.delete(&self.name).await?;
        }
        Ok(())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // `Drop` cannot await: hand the delete to a task. Without a runtime
        // (process shutting down) the leases still run out by themselves.
        if let (Some(store), Ok(runtime)) =
            (self.store.take(), tokio::runtime::Handle::try_current())
        {
            let name = self.name.clone();
            runtime.spawn(async move {
                if let Err(e) = store.delete(&name).await {
                    tracing::warn!(semaphore = %name, error = %e, "demo semaphore not removed");
                }
            });
        }
    }
}
