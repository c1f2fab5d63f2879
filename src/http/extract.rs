//! Extractors whose rejections are `ApiError`s, so that bad JSON, an oversized
//! body or a bad path segment come back as problem+json like every other error.
//!
//! The path extractors yield domain values: a handler that takes a
//! [`SemaphorePath`] holds a valid `SemaphoreName`, already recorded in the
//! request's span. They also describe their parameters to the OpenAPI
//! document, so the pattern documented is the one enforced.

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;
use utoipa::openapi::path::{Parameter, ParameterIn};

use super::{AppState, observe};
use crate::error::ApiError;
use crate::semaphore::{PermitId, SemaphoreName};

/// A JSON request body.
///
/// Deliberately lenient about `Content-Type`: `curl -d '{"limit":5}'` sends a
/// form content type, and refusing it would make the one-line curl fail. An
/// empty body is read as `{}`, so every body whose fields are all optional
/// may be left out (the OpenAPI document states such a body as not
/// required). `null` is not an object, and is refused like any other.
pub struct JsonBody<T>(pub T);

impl<T> FromRequest<AppState> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| bytes_rejection(rejection, state.limits.max_body_bytes))?;
        // JSON's own whitespace, not ASCII's (which has the form feed too).
        let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
        let end = bytes
            .iter()
            .rposition(|b| !blank(b))
            .map_or(start, |at| at + 1);
        let trimmed = &bytes[start..end];
        let text: &[u8] = if trimmed.is_empty() { b"{}" } else { trimmed };
        // Every body is an object: serde would otherwise read a struct from
        // a JSON array too (`[]` as "all defaults"), which the document
        // does not allow (schemathesis found `[]` accepted).
        if !text.starts_with(b"{") {
            return Err(ApiError::BadRequest(
                "request body: expected a JSON object".into(),
            ));
        }
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("request body: {e}")))
    }
}

fn bytes_rejection(rejection: BytesRejection, max_body_bytes: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!(
            "request bodies are limited to {max_body_bytes} bytes"
        ))
    } else {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// Query parameters, with a problem+json rejection (a malformed query string,
/// or an unknown parameter when `T` denies them).
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| QueryParams(value))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// The `{name}` segment, as documented.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct NameSegment {
    /// The semaphore's name: 1–128 characters of `A–Z a–z 0–9 . _ - :`.
    #[param(
        pattern = "^[A-Za-z0-9._:-]{1,128}$",
        min_length = 1,
        max_length = 128,
        example = "payments"
    )]
    #[allow(dead_code)]
    name: String,
}

/// The `{id}` segment, as documented.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct IdSegment {
    /// The permit's id, as returned by the acquire (and in its `Location`).
    #[param(example = "3b0c5a4e-8f1d-4c3a-9a57-2f6c1e0d9b21")]
    id: uuid::Uuid,
}

/// The semaphore of `/semaphores/{name}…`, parsed and recorded in the span.
pub struct SemaphorePath(pub SemaphoreName);

/// The permit of `/semaphores/{name}/permits/{id}`.
pub struct PermitPath(pub SemaphoreName, pub PermitId);

fn path_rejection(e: PathRejection) -> ApiError {
    ApiError::BadRequest(e.body_text())
}

fn semaphore_name(raw: &str) -> Result<SemaphoreName, ApiError> {
    let name = SemaphoreName::parse(raw)?;
    observe::record_semaphore(name.as_str());
    Ok(name)
}

impl<S: Send + Sync> FromRequestParts<S> for SemaphorePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        Ok(Self(semaphore_name(&name)?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PermitPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((name, id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        Ok(Self(semaphore_name(&name)?, PermitId::parse(&id)?))
    }
}

impl IntoParams for SemaphorePath {
    fn into_params(parameter_in: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        NameSegment::into_params(parameter_in)
    }
}

impl IntoParams for PermitPath {
    fn into_params(parameter_in: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut params = NameSegment::into_params(&parameter_in);
        params.extend(IdSegment::into_params(&parameter_in));
        params
    }
}
