//! Handlers of `/semaphores/{name}`: create or change, status, delete.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::extract::{JsonBody, PathParams};
use super::models::{SemaphoreView, SetLimitBody};
use crate::error::ApiError;
use crate::semaphore::{Limit, SemaphoreName, SetLimitOutcome};

/// The semaphore of the path, also recorded in the request's span so every
/// log line of the request names it.
pub(super) fn parse_name(raw: &str) -> Result<SemaphoreName, ApiError> {
    let name = SemaphoreName::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    super::observe::record_semaphore(name.as_str());
    Ok(name)
}

pub(super) fn semaphore_not_found(name: &SemaphoreName) -> ApiError {
    ApiError::NotFound(format!("semaphore {name:?} does not exist"))
}

/// `PUT /semaphores/{name}`: 201 when created, 200 when changed or unchanged.
pub async fn put_semaphore(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    JsonBody(body): JsonBody<SetLimitBody>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    let limit = Limit::new(body.limit).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let outcome = state.store.set_limit(&name, limit).await?;
    tracing::info!(semaphore = %name, limit = limit.get(), ?outcome, "limit set");
    // Read back so the reply shows what is held under the new limit.
    let status = state
        .store
        .status(&name)
        .await?
        .ok_or_else(|| semaphore_not_found(&name))?;
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
pub async fn get_semaphore(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<SemaphoreView>, ApiError> {
    let name = parse_name(&name)?;
    let status = state
        .store
        .status(&name)
        .await?
        .ok_or_else(|| semaphore_not_found(&name))?;
    Ok(Json(SemaphoreView::from(&status)))
}

/// `DELETE /semaphores/{name}`: the semaphore and every permit, 204.
pub async fn delete_semaphore(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let name = parse_name(&name)?;
    if state.store.delete(&name).await? {
        tracing::info!(semaphore = %name, "semaphore deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(semaphore_not_found(&name))
    }
}
