//! Handlers of `/semaphores` (the listing) and `/semaphores/{name}`: create
//! or change, status, delete.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::auth::{Access, Scope};
use super::extract::{JsonBody, QueryParams, SemaphorePath};
use super::models::{SemaphoreList, SemaphoreView, SetLimitBody};
use crate::error::{ApiError, PayloadTooLarge, Problem, Unavailable};
use crate::semaphore::{Limit, SemaphoreName, SetLimitOutcome};
use crate::store::{ListError, MAX_PAGE};

/// The listing's query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only semaphores whose names start with this.
    #[param(pattern = "^[A-Za-z0-9._:-]{0,128}$", max_length = 128)]
    prefix: Option<String>,
    /// Where to go on: the `next_cursor` of the page before.
    #[param(
        pattern = r"^[0-9]{1,9}\.[0-9]{1,19}(\.[A-Za-z0-9._:-]{1,128})?$",
        max_length = 160
    )]
    cursor: Option<String>,
    /// The most semaphores on this page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
}

/// `GET /semaphores`: one page of the semaphores, by name prefix.
#[utoipa::path(
    get,
    path = "/semaphores",
    tag = "semaphores",
    operation_id = "list_semaphores",
    summary = "List semaphores",
    description = "One page of the semaphores whose names start with `prefix`: name, limit, \
        held and waiting (never permit ids). Pass `next_cursor` as `cursor` for the next page; \
        it is `null` after the last. A page is not one snapshot: a semaphore created or \
        forgotten while the listing goes on may or may not appear, and a page may hold fewer \
        than `limit` even before the last.",
    params(ListQuery),
    responses(
        (status = 200, description = "One page.", body = SemaphoreList),
        (status = 400, description = "A bad prefix, cursor or limit.",
         body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list_semaphores(
    State(state): State<AppState>,
    access: Access,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<SemaphoreList>, ApiError> {
    let mut prefix = query.prefix.unwrap_or_default();
    if prefix.len() > SemaphoreName::MAX_LEN
        || !prefix.is_empty() && SemaphoreName::parse(&prefix).is_err()
    {
        return Err(ApiError::BadRequest(
            "prefix must be at most 128 characters of A-Z a-z 0-9 . _ - :".into(),
        ));
    }
    // A token limited to a name prefix lists only within it: the longer of
    // the two prefixes, when one extends the other; nothing otherwise.
    if let Some(allowed) = access.prefix().filter(|a| !prefix.starts_with(a)) {
        if !allowed.starts_with(&prefix) {
            return Ok(Json(SemaphoreList {
                semaphores: Vec::new(),
                next_cursor: None,
            }));
        }
        prefix = allowed.to_owned();
    }
    let limit = match query.limit {
        None => 100,
        Some(n) if (1..=MAX_PAGE as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE}, not {n}"
            )));
        }
    };
    let cursor = query.cursor;
    if cursor
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > 160)
    {
        return Err(ApiError::BadRequest(
            "cursor must be a next_cursor a listing returned".into(),
        ));
    }
    let page = state
        .store
        .list(&prefix, cursor.as_deref(), limit)
        .await
        .map_err(|e| match e {
            ListError::BadCursor => ApiError::BadRequest(
                "cursor is not one a listing returned; start again without it".into(),
            ),
            ListError::Store(e) => ApiError::Store(e),
        })?;
    Ok(Json(SemaphoreList::from(page)))
}

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
    let idle_ttl = body.idle_ttl()?;
    let outcome = state.store.set_limit(&name, limit, idle_ttl).await?;
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
    description = "Limit, units held and available, waiting acquires, the idle TTL, and the \
        live holders (label, count, fencing token, lease times). Permit ids only with \
        `?include=ids` and an admin token, so that one stuck permit can be released with \
        `DELETE` without deleting the semaphore.",
    params(SemaphorePath, StatusQuery),
    responses(
        (status = 200, description = "The semaphore's status.", body = SemaphoreView),
        (status = 400, description = "Bad name.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such semaphore.", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn get_semaphore(
    State(state): State<AppState>,
    access: Access,
    SemaphorePath(name): SemaphorePath,
    QueryParams(query): QueryParams<StatusQuery>,
) -> Result<Json<SemaphoreView>, ApiError> {
    let with_ids = match query.include.as_deref() {
        None => false,
        Some("ids") => {
            access.require(Scope::Admin, "permit ids in status")?;
            true
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "include may only be \"ids\", not {other:?}"
            )));
        }
    };
    let status = state.store.status(&name).await?;
    let status = status.ok_or_else(|| not_found(name))?;
    let view = SemaphoreView::from(&status);
    Ok(Json(if with_ids {
        view.with_ids(&status)
    } else {
        view
    }))
}

/// The status query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// `ids`: each holder's permit id too (admin tokens only).
    #[param(pattern = "^ids$")]
    include: Option<String>,
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
