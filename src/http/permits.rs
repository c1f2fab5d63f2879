//! Handlers of `/semaphores/{name}/permits`: acquire, look up, refresh, release.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::extract::{JsonBody, PathParams};
use super::models::{AcquireBody, PermitView, RefreshBody};
use super::semaphores::{parse_name, semaphore_not_found};
use crate::error::ApiError;
use crate::semaphore::{AcquireOutcome, IdempotencyKey, Permit, PermitId, SemaphoreName, Ttl};
use crate::{telemetry, waiting};

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn parse_id(raw: &str) -> Result<PermitId, ApiError> {
    PermitId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn permit_not_found() -> ApiError {
    ApiError::NotFound(
        "no such permit: it was released, its lease ran out, or it never existed".into(),
    )
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::BadRequest("Idempotency-Key must be visible ASCII characters".into())
    })?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn permit_response(status: StatusCode, permit: &Permit) -> Response {
    let location = format!("/semaphores/{}/permits/{}", permit.semaphore, permit.id);
    (
        status,
        [(header::LOCATION, location)],
        Json(PermitView::from(permit)),
    )
        .into_response()
}

/// `POST /semaphores/{name}/permits`: 201 with the permit, 200 for an
/// idempotent replay, 429 when no capacity. Every answer is counted in
/// `permitd_acquires_total` by outcome, refusals of bad input included (which
/// is why the path and body arrive as `Result`s).
pub async fn acquire_permit(
    State(state): State<AppState>,
    path: Result<PathParams<String>, ApiError>,
    headers: HeaderMap,
    body: Result<JsonBody<AcquireBody>, ApiError>,
) -> Result<Response, ApiError> {
    let parsed = path.and_then(|PathParams(name)| {
        let name = parse_name(&name)?;
        let key = idempotency_key(&headers)?;
        let JsonBody(body) = body?;
        body.into_request(name, key, &state.bounds)
    });
    let request = match parsed {
        Ok(request) => request,
        Err(e) => {
            count_acquire("invalid");
            return Err(e);
        }
    };
    // The request timeout starts again on top of the wait the client asked
    // for, so a long poll is bounded but never cut short (see `limits`).
    let bound = request.wait.as_duration() + state.limits.request_timeout;
    let outcome = match tokio::time::timeout(
        bound,
        waiting::acquire(&state.store, &request, &state.waiting),
    )
    .await
    {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            count_acquire("error");
            return Err(e.into());
        }
        Err(_) => {
            count_acquire("error");
            tracing::warn!(bound_ms = bound.as_millis() as u64, "acquire timed out");
            return Err(ApiError::Timeout);
        }
    };
    let waited = request.wait.as_millis() > 0;
    count_acquire(outcome_label(&outcome, waited));
    match outcome {
        AcquireOutcome::Granted(permit) => {
            tracing::info!(
                semaphore = %permit.semaphore,
                count = permit.count,
                fencing_token = permit.fencing_token,
                holder = permit.holder.as_deref().unwrap_or(""),
                "permit granted"
            );
            Ok(permit_response(StatusCode::CREATED, &permit))
        }
        AcquireOutcome::Replayed(permit) => Ok(permit_response(StatusCode::OK, &permit)),
        AcquireOutcome::Unavailable {
            limit,
            held,
            retry_after_ms,
        } => Err(ApiError::NoCapacity {
            limit,
            held,
            // Whole seconds, rounded up, at least one: the header cannot say less.
            retry_after_secs: retry_after_ms.map_or(1, |ms| ms.div_ceil(1000).max(1)),
        }),
        AcquireOutcome::NotFound => Err(ApiError::NotFound(format!(
            "semaphore {:?} does not exist; give a limit to create it",
            request.name.as_str()
        ))),
        AcquireOutcome::LimitConflict { current } => Err(ApiError::LimitConflict { current }),
        AcquireOutcome::CountExceedsLimit { limit } => Err(ApiError::BadRequest(format!(
            "count {} is more than the semaphore's limit {limit}: it could never be granted",
            request.count.get()
        ))),
        AcquireOutcome::IdempotencyMismatch => Err(ApiError::IdempotencyMismatch),
    }
}

fn count_acquire(outcome: &'static str) {
    metrics::counter!(telemetry::ACQUIRES, "outcome" => outcome).increment(1);
}

/// The `outcome` label of an acquire's answer. "No capacity" is split by
/// whether the client waited: a try-once refusal is normal back-pressure, a
/// wait that ran out says the semaphore is too small for its load.
fn outcome_label(outcome: &AcquireOutcome, waited: bool) -> &'static str {
    match outcome {
        AcquireOutcome::Granted(_) => "granted",
        AcquireOutcome::Replayed(_) => "replayed",
        AcquireOutcome::Unavailable { .. } if waited => "timed_out",
        AcquireOutcome::Unavailable { .. } => "unavailable",
        AcquireOutcome::NotFound => "not_found",
        AcquireOutcome::LimitConflict { .. } => "conflict",
        AcquireOutcome::CountExceedsLimit { .. } => "too_large",
        AcquireOutcome::IdempotencyMismatch => "idempotency_mismatch",
    }
}

fn parse_path(name: &str, id: &str) -> Result<(SemaphoreName, PermitId), ApiError> {
    Ok((parse_name(name)?, parse_id(id)?))
}

/// `GET /semaphores/{name}/permits/{id}`: 200 while the permit is live.
pub async fn get_permit(
    State(state): State<AppState>,
    PathParams((name, id)): PathParams<(String, String)>,
) -> Result<Json<PermitView>, ApiError> {
    let (name, id) = parse_path(&name, &id)?;
    match state.store.permit(&name, id).await? {
        Some(permit) => Ok(Json(PermitView::from(&permit))),
        None => Err(permit_not_found()),
    }
}

/// `PATCH /semaphores/{name}/permits/{id}`: a new lease of `ttl_ms` from now.
pub async fn refresh_permit(
    State(state): State<AppState>,
    PathParams((name, id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Json<PermitView>, ApiError> {
    let (name, id) = parse_path(&name, &id)?;
    let ttl = match body.ttl_ms {
        Some(ms) => Ttl::new(ms, state.bounds.max_ttl_ms)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        None => state.bounds.default_ttl,
    };
    let refreshed = state.store.refresh(&name, id, ttl).await?;
    let outcome = if refreshed.is_some() {
        "refreshed"
    } else {
        "gone"
    };
    metrics::counter!(telemetry::REFRESHES, "outcome" => outcome).increment(1);
    match refreshed {
        Some(permit) => Ok(Json(PermitView::from(&permit))),
        None => Err(permit_not_found()),
    }
}

/// `DELETE /semaphores/{name}/permits/{id}`: 204, or 404 once gone.
pub async fn release_permit(
    State(state): State<AppState>,
    PathParams((name, id)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (name, id) = parse_path(&name, &id)?;
    let released = state.store.release(&name, id).await?;
    let outcome = if released { "released" } else { "gone" };
    metrics::counter!(telemetry::RELEASES, "outcome" => outcome).increment(1);
    if released {
        tracing::info!(semaphore = %name, "permit released");
        Ok(StatusCode::NO_CONTENT)
    } else if state.store.status(&name).await?.is_none() {
        Err(semaphore_not_found(&name))
    } else {
        Err(permit_not_found())
    }
}
