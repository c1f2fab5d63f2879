//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the models' `ToSchema` derives, and the routes that serve
//! it: `/openapi.json`, `/openapi.yaml` and Swagger UI at `/docs/`.
//!
//! The document is built from code so it cannot drift from the handlers; the
//! checked-in `openapi.yaml` is this module's output with default settings
//! (`permitd openapi > openapi.yaml`), and a test keeps the two equal. The
//! bounds that are configuration (`ttl_ms`, `wait_ms`, the demo's `requests`
//! and `delay_ms`) are written into the
//! served document from the running server's settings, so a fuzzer or a
//! generated client sees the limits this server actually enforces. Access
//! control is stated the same way: the bearer scheme is always described (so
//! Swagger UI offers "Authorize"), and when this server has API tokens, every
//! operation that needs one says so and lists its 401.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use super::auth::AccessControl;
use super::models::{
    AcquireBody, HolderView, PermitView, RefreshBody, SemaphoreView, SetLimitBody,
};
use super::{demo, health, permits, semaphores};
use super::RequestBounds;
use crate::demo::{DEFAULT_LIMIT, MAX_LIMIT};

/// The path of a semaphore (documentation only: handlers parse the segment
/// into a `SemaphoreName` themselves, so a bad name is a problem+json 400).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SemaphorePath {
    /// The semaphore's name: 1–128 characters of `A–Z a–z 0–9 . _ - :`.
    #[param(
        pattern = "^[A-Za-z0-9._:-]{1,128}$",
        min_length = 1,
        max_length = 128,
        example = "payments"
    )]
    pub name: String,
}

/// The path of a permit (documentation only, like [`SemaphorePath`]).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PermitPath {
    /// The semaphore's name: 1–128 characters of `A–Z a–z 0–9 . _ - :`.
    #[param(
        pattern = "^[A-Za-z0-9._:-]{1,128}$",
        min_length = 1,
        max_length = 128,
        example = "payments"
    )]
    pub name: String,
    /// The permit's id, as returned by the acquire (and in its `Location`).
    #[param(example = "3b0c5a4e-8f1d-4c3a-9a57-2f6c1e0d9b21")]
    pub id: uuid::Uuid,
}

/// An error, as `application/problem+json` (RFC 9457).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:permitd:problem:not-found", "title": "Not found", "status": 404,
    "detail": "semaphore \"payments\" does not exist"
}))]
pub struct Problem {
    /// A stable identifier of the kind of problem, `urn:permitd:problem:<kind>`:
    /// clients switch on it.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:permitd:problem:[a-z-]+$")]
    pub kind: String,
    /// A short, human-readable summary of the kind.
    pub title: String,
    /// The HTTP status, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request, in words a client can act on.
    pub detail: String,
}

/// 409: the request conflicts with the semaphore's state. `limit`, when
/// present, is the limit it conflicts with.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:permitd:problem:limit-conflict", "title": "Semaphore exists with another limit",
    "status": 409, "detail": "the semaphore exists with limit 2; acquire without a limit, or with limit 2, or change it with PUT",
    "limit": 2
}))]
pub struct ConflictProblem {
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:permitd:problem:[a-z-]+$")]
    pub kind: String,
    pub title: String,
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    pub detail: String,
    /// The limit the request conflicts with (`limit-conflict` and
    /// `count-exceeds-limit` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000, nullable = false)]
    pub limit: Option<u32>,
}

/// 429: not enough units free within `wait_ms`; `Retry-After` says when a
/// lease next runs out.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:permitd:problem:no-capacity", "title": "No permit available", "status": 429,
    "detail": "2 of 2 units are held; not enough are free", "limit": 2, "held": 2, "available": 0
}))]
pub struct NoCapacityProblem {
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:permitd:problem:[a-z-]+$")]
    pub kind: String,
    pub title: String,
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    pub detail: String,
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub limit: u32,
    pub held: u32,
    pub available: u32,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "permitd",
        description = "A distributed counting semaphore served over HTTP.\n\n\
            Ask for a permit (`POST /semaphores/{name}/permits`) before the work and release it \
            (`DELETE` its `Location`) after: at most `limit` units of a semaphore are held at \
            once, across every client and every permitd instance sharing one Redis. Permits are \
            leases that run out unless refreshed, and carry a strictly increasing fencing token.\n\n\
            Every error is `application/problem+json` (RFC 9457) with `type`, `title`, `status` \
            and `detail`; 429 and 503 carry `Retry-After`.",
        license(name = "MIT", identifier = "MIT"),
    ),
    // Relative, so Swagger UI's "Try it out" and any client that loaded the
    // spec from a server call that same server.
    servers((url = "/", description = "the permitd that served this document")),
    paths(
        semaphores::put_semaphore,
        semaphores::get_semaphore,
        semaphores::delete_semaphore,
        permits::acquire_permit,
        permits::get_permit,
        permits::refresh_permit,
        permits::release_permit,
        health::healthz,
        health::readyz,
        health::metrics,
        demo::run_demo,
        demo::demo_upstream,
        openapi_json,
        openapi_yaml,
    ),
    components(schemas(
        SetLimitBody,
        AcquireBody,
        RefreshBody,
        PermitView,
        HolderView,
        SemaphoreView,
        Problem,
        ConflictProblem,
        NoCapacityProblem,
        health::Health,
        health::Readiness,
        crate::demo::DemoReport,
        crate::demo::RequestResult,
        demo::UpstreamReply,
    )),
    tags(
        (name = "semaphores", description = "Create, inspect, change and delete semaphores."),
        (name = "permits", description = "Acquire, look up, refresh and release permits."),
        (name = "demo", description = "The fan-out demo and its built-in slow upstream."),
        (name = "operations", description = "Probes, metrics and this document."),
    ),
)]
struct ApiDoc;

/// The OpenAPI document for a server enforcing `bounds`.
pub fn document(bounds: &RequestBounds) -> Document {
    let mut doc = ApiDoc::openapi();
    if let Some(components) = doc.components.as_mut() {
        let default_ttl = bounds.default_ttl.as_millis();
        for body in ["AcquireBody", "RefreshBody"] {
            let ttl = property(&mut components.schemas, body, "ttl_ms");
            set_bounds(ttl, bounds.min_ttl_ms, bounds.max_ttl_ms, Some(default_ttl));
        }
        let wait = property(&mut components.schemas, "AcquireBody", "wait_ms");
        set_bounds(wait, 0, bounds.max_wait_ms, None);
        let reply = property(&mut components.schemas, "UpstreamReply", "delay_ms");
        set_bounds(reply, 0, bounds.demo.max_delay_ms, None);
    }
    let demo = bounds.demo;
    for (path, name, minimum, maximum, default) in [
        (
            "/demo",
            "requests",
            1,
            demo.max_requests,
            demo.default_requests(),
        ),
        ("/demo", "limit", 1, MAX_LIMIT, DEFAULT_LIMIT),
        (
            "/demo",
            "delay_ms",
            0,
            demo.max_delay_ms,
            demo.default_delay_ms(),
        ),
        (
            "/demo/upstream",
            "delay_ms",
            0,
            demo.max_delay_ms,
            demo.default_delay_ms(),
        ),
    ] {
        let number = query_number(&mut doc, path, name);
        set_bounds(number, minimum, maximum, Some(default));
    }
    if !demo.urls_allowed {
        // No host is listed: only an empty url (the built-in upstream) passes.
        let url = query_parameter(&mut doc, "/demo", "url")
            .and_then(|p| match p.schema.as_mut()? {
                RefOr::T(Schema::Object(url)) => Some(url),
                _ => None,
            })
            .expect("GET /demo documents its url parameter");
        url.max_length = Some(0);
    }
    describe_bearer(&mut doc);
    doc
}

/// The name of the bearer scheme in the document.
const BEARER: &str = "bearer";

/// Describes the bearer scheme, whether or not this server requires it: it is
/// what Swagger UI's "Authorize" asks for.
fn describe_bearer(doc: &mut Document) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token of this server (`--api-token`, `PERMITD_API_TOKENS` or \
                     `--api-token-file`), sent as `Authorization: Bearer <token>`. Needed only \
                     when the server has tokens configured; the probes, this document and \
                     Swagger UI (and `/metrics`, by default) never need one.",
                ))
                .build(),
        ),
    );
}

/// Marks every operation `access` guards as needing the bearer token, with
/// its 401 answer: the document a server with API tokens serves.
pub fn require_bearer(doc: &mut Document, access: &AccessControl) {
    let unauthorized = ResponseBuilder::new()
        .description(
            "No bearer token, or not one this server accepts (`WWW-Authenticate` says which).",
        )
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(
                    r#"`Bearer realm="permitd"`, with `error="invalid_token"` for a wrong token."#,
                ))
                .build(),
        )
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        if access.is_open(path) {
            continue;
        }
        let operations: [&mut Option<Operation>; 8] = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            operation
                .responses
                .responses
                .insert("401".into(), RefOr::T(unauthorized.clone()));
        }
    }
}

/// A query parameter of a GET operation.
fn query_parameter<'a>(
    doc: &'a mut Document,
    path: &str,
    name: &str,
) -> Option<&'a mut utoipa::openapi::path::Parameter> {
    let operation = doc.paths.paths.get_mut(path)?.get.as_mut()?;
    operation
        .parameters
        .as_mut()?
        .iter_mut()
        .find(|p| p.name == name)
}

/// The integer alternative of a numeric query parameter of a GET operation
/// (see `demo::number_param`).
fn query_number<'a>(doc: &'a mut Document, path: &str, name: &str) -> Option<&'a mut Object> {
    let parameter = query_parameter(doc, path, name)?;
    match parameter.schema.as_mut()? {
        RefOr::T(Schema::OneOf(one_of)) => match one_of.items.first_mut()? {
            RefOr::T(Schema::Object(integer)) => Some(integer),
            _ => None,
        },
        _ => None,
    }
}

/// The document as YAML, as checked in at the repository root.
///
/// # Errors
/// Never in practice: the document is plain data.
pub fn yaml(bounds: &RequestBounds) -> anyhow::Result<String> {
    Ok(document(bounds).to_yaml()?)
}

/// One property of a component schema, when both are plain objects.
fn property<'a>(
    schemas: &'a mut std::collections::BTreeMap<String, RefOr<Schema>>,
    schema: &str,
    name: &str,
) -> Option<&'a mut Object> {
    match schemas.get_mut(schema)? {
        RefOr::T(Schema::Object(object)) => match object.properties.get_mut(name)? {
            RefOr::T(Schema::Object(property)) => Some(property),
            _ => None,
        },
        _ => None,
    }
}

/// Writes configured bounds (and default) into an integer property. The
/// property is found by name, so a renamed field fails loudly here (and in
/// the tests) instead of silently keeping the compiled-in bound.
fn set_bounds(property: Option<&mut Object>, minimum: u64, maximum: u64, default: Option<u64>) {
    let property = property.expect("a configured bound names a property of its schema");
    property.minimum = Some(minimum.into());
    property.maximum = Some(maximum.into());
    if let Some(default) = default {
        property.default = Some(default.into());
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi_json",
    summary = "This OpenAPI document, as JSON",
    responses((status = 200, description = "This OpenAPI document as JSON.",
               content_type = "application/json", body = serde_json::Value)),
)]
async fn openapi_json(json: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json)
}

/// `GET /openapi.yaml`: this document.
#[utoipa::path(
    get,
    path = "/openapi.yaml",
    tag = "operations",
    operation_id = "openapi_yaml",
    summary = "This OpenAPI document, as YAML",
    responses((status = 200, description = "This OpenAPI document as YAML.",
               content_type = "application/yaml", body = serde_json::Value)),
)]
async fn openapi_yaml(yaml: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], yaml)
}

/// The routes serving the document and Swagger UI; merged into the API router.
///
/// Both renderings are made once, here, and the UI's assets are embedded in
/// the binary, so `/docs/` works offline.
pub fn routes<S>(bounds: &RequestBounds, access: &AccessControl) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut doc = document(bounds);
    if access.is_enabled() {
        require_bearer(&mut doc, access);
    }
    let json = doc
        .to_json()
        .expect("the OpenAPI document serialises to JSON");
    let yaml = doc
        .to_yaml()
        .expect("the OpenAPI document serialises to YAML");
    Router::new()
        .route("/openapi.json", get(move || openapi_json(json.clone())))
        .route("/openapi.yaml", get(move || openapi_yaml(yaml.clone())))
        .merge(
            SwaggerUi::new("/docs").config(
                utoipa_swagger_ui::Config::from("/openapi.json")
                    .try_it_out_enabled(true)
                    .display_operation_id(true),
            ),
        )
}
