//! Handlers of `/semaphores/{name}`: create or change, status, delete.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::extract::{JsonBody, SemaphorePath};
use super::models::{SemaphoreView, SetLimitBody};
use crate::error::{ApiError, PayloadTooLarge, Problem, Unavailable};
use crate::semaphore::{Limit, SemaphoreName, SetLimitOutcome};

fn not_found(name: SemaphoreName) -> ApiError {
    ApiError::SemaphoreNotFound {
        name,
        to_acquire: false,
    }
}

/// `PUT /semaphores/{name}`: 201 when created, 200 when changed or unchanged.
#[utoipa::path(
    put,
    path = "/semaphores/{name}",
    tag = "semaphores",
    operation_id = "put_semaphore",
    summary = "Create a semaphore or change its limit",
    description = "Creates the semaphore (201) or changes its limit (200). Raising the limit \
        frees capacity at once; lowering it never revokes permits already held, new acquires \
        simply wait until what is held fits. The current limit again is a 200 that changes nothing.",
    params(SemaphorePath),
    request_body(content = SetLimitBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = SemaphoreView,
         headers(("Location" = String, description = "The semaphore's URL."))),
        (status = 200, description = "Limit changed, or unchanged.", body = SemaphoreView),
        (status = 400, description = "Bad name, bad JSON, unknown field, or a limit outside 1 … 1,000,000.",
         body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn put_semaphore(
    State(state): State<AppState>,
    SemaphorePath(name): SemaphorePath,
    JsonBody(body): JsonBody<SetLimitBody>,
) -> Result<Response, ApiError> {
    let limit = Limit::new(body.limit)?;
    let outcome = state.store.set_limit(&name, limit).await?;
    tracing::info!(semaphore = %name, limit = limit.get(), ?outcome, "limit set");
    // Read back so the reply shows what is held under the new limit.
    let status = state
        .store
        .status(&name)
        .await?
        .ok_or_else(|| not_found(name.clone()))?;
    let view = Json(SemaphoreView::from(&status));
    Ok(match outcome {
        SetLimitOutcome::Created => (
            StatusCode::CREATED,
            [(header::LOCATION, format!("/semaphores/{name}"))],
            view,
        )
            .into_response(),
        SetLimitOutcome::Changed { .. } | SetLimitOutcome::Unchanged => view.into_response(),
    })
}

/// `GET /semaphores/{name}`: limit, held, available, waiting and holders.
#[utoipa::path(
    get,
    path = "/semaphores/{name}",
    tag = "semaphores",
    operation_id = "get_semaphore",
    summary = "A semaphore's status",
    description = "Limit, units held and available, waiting acquires, and the live holders \
        (label, count, fencing token, lease times; never permit ids).",
    params(SemaphorePath),
    responses(
        (status = 200, description = "The semaphore's status.", body = SemaphoreView),
        (status = 400, description = "Bad name.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such semaphore.", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn get_semaphore(
    State(state): State<AppState>,
    SemaphorePath(name): SemaphorePath,
) -> Result<Json<SemaphoreView>, ApiError> {
    let status = state.store.status(&name).await?;
    let status = status.ok_or_else(|| not_found(name))?;
    Ok(Json(SemaphoreView::from(&status)))
}

/// `DELETE /semaphores/{name}`: the semaphore and every permit, 204.
#[utoipa::path(
    delete,
    path = "/semaphores/{name}",
    tag = "semaphores",
    operation_id = "delete_semaphore",
    summary = "Delete a semaphore and every permit of it",
    params(SemaphorePath),
    responses(
        (status = 204, description = "Deleted, with every permit."),
        (status = 400, description = "Bad name.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such semaphore.", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn delete_semaphore(
    State(state): State<AppState>,
    SemaphorePath(name): SemaphorePath,
) -> Result<StatusCode, ApiError> {
    if state.store.delete(&name).await? {
        tracing::info!(semaphore = %name, "semaphore deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(name))
    }
}
