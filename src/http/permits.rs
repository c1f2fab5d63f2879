//! Handlers of `/semaphores/{name}/permits`: acquire, look up, refresh, release.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::extract::{JsonBody, PathParams};
use super::models::{AcquireBody, PermitView, RefreshBody};
use super::openapi::{ConflictProblem, NoCapacityProblem, PermitPath, Problem, SemaphorePath};
use super::semaphores::{parse_name, semaphore_not_found};
use crate::error::ApiError;
use crate::semaphore::{
    AcquireOutcome, IdempotencyKey, Permit, PermitId, ReleaseOutcome, SemaphoreName,
};
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
#[utoipa::path(
    post,
    path = "/semaphores/{name}/permits",
    tag = "permits",
    operation_id = "acquire_permit",
    summary = "Acquire a permit",
    description = "Takes `count` units (default 1), all or nothing, for a lease of `ttl_ms`. \
        With `limit`, an unknown semaphore is created, so a one-line curl works. `wait_ms` is a \
        long poll: the request waits up to that long for capacity, first come first served \
        (0, the default, tries once). Every field of the body may be left out, and so may \
        the body. Release the permit by sending `DELETE` to its `Location`.",
    params(
        SemaphorePath,
        ("Idempotency-Key" = Option<String>, Header,
         description = "Makes a retried acquire safe: while the permit it made is held, the \
            same key with the same body returns that permit (200) instead of taking another. \
            The same key with a different body is a 409. 1–255 visible ASCII characters.",
         nullable = false, pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255, example = "order-42"),
    ),
    request_body(content = Option<AcquireBody>, content_type = "application/json"),
    responses(
        (status = 201, description = "Granted.", body = PermitView,
         headers(("Location" = String, description = "The permit's URL: refresh it with PATCH, release it with DELETE."))),
        (status = 200, description = "An idempotent replay: the permit this `Idempotency-Key` already holds.",
         body = PermitView,
         headers(("Location" = String, description = "The permit's URL."))),
        (status = 400, description = "Bad name, bad JSON, unknown field, a value outside its bound, or a bad `Idempotency-Key`.",
         body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such semaphore, and no `limit` to create it with.",
         body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A conflict with the semaphore's state: it exists with another \
            limit (`limit-conflict`), `count` is more than the limit so it could never be granted \
            (`count-exceeds-limit`), or the `Idempotency-Key` names a live permit acquired with a \
            different body (`idempotency-key-reused`). `limit` is present for the first two.",
         body = ConflictProblem, content_type = "application/problem+json"),
        (status = 413, description = "Request body over the size limit (`--max-body-bytes`, 16 KiB by default).", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Not enough units free within `wait_ms`.",
         body = NoCapacityProblem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds until the next lease runs out (at least 1)."))),
        (status = 503, description = "The store cannot be reached, or the request took longer than the server allows (`request-timeout`); retry after `Retry-After` seconds.",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
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
        AcquireOutcome::CountExceedsLimit { limit } => Err(ApiError::CountExceedsLimit {
            count: request.count.get(),
            limit,
        }),
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
#[utoipa::path(
    get,
    path = "/semaphores/{name}/permits/{id}",
    tag = "permits",
    operation_id = "get_permit",
    summary = "Is this permit still held?",
    params(PermitPath),
    responses(
        (status = 200, description = "The permit is live.", body = PermitView),
        (status = 400, description = "Bad name, or an id that is not a UUID.",
         body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Released, expired, or never existed.",
         body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store cannot be reached, or the request took longer than the server allows (`request-timeout`); retry after `Retry-After` seconds.",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
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
#[utoipa::path(
    patch,
    path = "/semaphores/{name}/permits/{id}",
    tag = "permits",
    operation_id = "refresh_permit",
    summary = "Refresh a permit's lease",
    description = "A new lease of `ttl_ms` from now. An expired permit is never brought back: 404.",
    params(PermitPath),
    request_body(content = Option<RefreshBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Refreshed; `expires_at` is the new lease end.", body = PermitView),
        (status = 400, description = "Bad name, an id that is not a UUID, bad JSON, or `ttl_ms` outside its bound.",
         body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Released, expired, or never existed.",
         body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Request body over the size limit (`--max-body-bytes`, 16 KiB by default).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store cannot be reached, or the request took longer than the server allows (`request-timeout`); retry after `Retry-After` seconds.",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn refresh_permit(
    State(state): State<AppState>,
    PathParams((name, id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Json<PermitView>, ApiError> {
    let (name, id) = parse_path(&name, &id)?;
    let ttl = match body.ttl_ms {
        Some(ms) => state
            .bounds
            .ttl(ms)
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
#[utoipa::path(
    delete,
    path = "/semaphores/{name}/permits/{id}",
    tag = "permits",
    operation_id = "release_permit",
    summary = "Release a permit",
    params(PermitPath),
    responses(
        (status = 204, description = "Released; its units are free."),
        (status = 400, description = "Bad name, or an id that is not a UUID.",
         body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such semaphore, or the permit was released, expired, or never existed.",
         body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store cannot be reached, or the request took longer than the server allows (`request-timeout`); retry after `Retry-After` seconds.",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn release_permit(
    State(state): State<AppState>,
    PathParams((name, id)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (name, id) = parse_path(&name, &id)?;
    let outcome = state.store.release(&name, id).await?;
    let label = match outcome {
        ReleaseOutcome::Released => "released",
        ReleaseOutcome::NoPermit | ReleaseOutcome::NoSemaphore => "gone",
    };
    metrics::counter!(telemetry::RELEASES, "outcome" => label).increment(1);
    match outcome {
        ReleaseOutcome::Released => {
            tracing::info!(semaphore = %name, "permit released");
            Ok(StatusCode::NO_CONTENT)
        }
        ReleaseOutcome::NoPermit => Err(permit_not_found()),
        ReleaseOutcome::NoSemaphore => Err(semaphore_not_found(&name)),
    }
}
