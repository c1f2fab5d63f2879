//! Handlers of `/semaphores/{name}/permits`: acquire, look up, refresh, release.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::AppState;
use super::auth::Caller;
use super::extract::{JsonBody, PermitPath, SemaphorePath};
use super::models::{AcquireBody, PermitView, RefreshBody};
use crate::error::{ApiError, PayloadTooLarge, Problem, Unavailable};
use crate::semaphore::{AcquireOutcome, IdempotencyKey, Permit, ReleaseOutcome};
use crate::{telemetry, waiting};

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn permit_not_found() -> ApiError {
    ApiError::NotFound(
        "no such permit: it was released, its lease ran out, or it never existed".into(),
    )
}

/// The request's `Idempotency-Key`, scoped to the caller's token when access
/// control is on.
fn idempotency_key(
    headers: &HeaderMap,
    caller: Option<&Caller>,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::BadRequest("Idempotency-Key must be visible ASCII characters".into())
    })?;
    let key = IdempotencyKey::parse(text)?;
    Ok(Some(match caller {
        Some(Caller(scope)) => key.scoped(scope),
        None => key,
    }))
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
            same key with the same body returns that permit (200) instead of taking another; \
            while the first request still waits for capacity, a retry is a 409; once the \
            permit ended (released or expired), a retry is a 410 for the server's retention \
            (default 24 h), never a second permit. The same key with a different body is a \
            422. Keys are scoped to the semaphore and, with API tokens, to the token that \
            sent them. 1–255 visible ASCII characters.",
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
            (`count-exceeds-limit`), or the first request with this `Idempotency-Key` is still \
            waiting (`idempotency-key-in-use`). `limit` is present for the first two.",
         body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The permit this `Idempotency-Key` was granted has ended \
            (`permit-ended`): a retry never takes a second permit.",
         body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The `Idempotency-Key` was used with a different request \
            body (`idempotency-key-reused`).",
         body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 429, description = "Not enough units free within `wait_ms`.",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds until the next lease runs out (at least 1)."))),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn acquire_permit(
    State(state): State<AppState>,
    path: Result<SemaphorePath, ApiError>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Result<JsonBody<AcquireBody>, ApiError>,
) -> Result<Response, ApiError> {
    let parsed = path.and_then(|SemaphorePath(name)| {
        let key = idempotency_key(&headers, caller.as_ref().map(|Extension(c)| c))?;
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
    // Bounded by the route's time budget (see `limits`): the wait asked
    // for, each store call by the store's own timeout.
    let outcome = match waiting::acquire(&state.store, &request, &state.waiting).await {
        Ok(outcome) => outcome,
        Err(e) => {
            count_acquire(match e {
                waiting::WaitError::TooManyWaiters { .. } => "too_many_waiters",
                _ => "error",
            });
            return Err(e.into());
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
        AcquireOutcome::NotFound => Err(ApiError::SemaphoreNotFound {
            name: request.name,
            to_acquire: true,
        }),
        AcquireOutcome::LimitConflict { current } => Err(ApiError::LimitConflict { current }),
        AcquireOutcome::CountExceedsLimit { limit } => Err(ApiError::CountExceedsLimit {
            count: request.count.get(),
            limit,
        }),
        AcquireOutcome::IdempotencyMismatch => Err(ApiError::IdempotencyMismatch),
        AcquireOutcome::IdempotencyInFlight => Err(ApiError::IdempotencyInFlight),
        AcquireOutcome::PermitEnded => Err(ApiError::PermitEnded),
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
        AcquireOutcome::IdempotencyInFlight => "idempotency_in_flight",
        AcquireOutcome::PermitEnded => "permit_ended",
    }
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
        (status = 503, response = Unavailable),
    ),
)]
pub async fn get_permit(
    State(state): State<AppState>,
    PermitPath(name, id): PermitPath,
) -> Result<Json<PermitView>, ApiError> {
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
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn refresh_permit(
    State(state): State<AppState>,
    PermitPath(name, id): PermitPath,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Json<PermitView>, ApiError> {
    let ttl = match body.ttl_ms {
        Some(ms) => state.bounds.ttl(ms)?,
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
        (status = 503, response = Unavailable),
    ),
)]
pub async fn release_permit(
    State(state): State<AppState>,
    PermitPath(name, id): PermitPath,
) -> Result<StatusCode, ApiError> {
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
        ReleaseOutcome::NoSemaphore => Err(ApiError::SemaphoreNotFound {
            name,
            to_acquire: false,
        }),
    }
}
