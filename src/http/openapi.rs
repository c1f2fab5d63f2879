//! The OpenAPI 3.1 document's frame (info, tags, shared components), what a
//! running server writes into it, and what serves it: `/openapi.json`,
//! `/openapi.yaml` and Swagger UI at `/docs/`.
//!
//! The paths come from the router declaration (`http::routes`), each from
//! its handler's `#[utoipa::path]`, so the document cannot drift from the
//! handlers; the checked-in `openapi.yaml` is the document with default
//! settings (`permitd openapi > openapi.yaml`), and a test keeps the two equal. The
//! bounds that are configuration (`ttl_ms`, `wait_ms`, the demo's `requests`
//! and `delay_ms`) are written into the
//! served document from the running server's settings, so a fuzzer or a
//! generated client sees the limits this server actually enforces. Access
//! control is stated the same way: the bearer scheme is always described (so
//! Swagger UI offers "Authorize"), and when this server has API tokens, every
//! operation that needs one says so, with the scope it needs (`read`, `use`
//! or `admin`, as `auth::required_scope` decides), and lists its 401 and 403.

use std::sync::Arc;

use axum::http::{Method, header};
use axum::response::IntoResponse;
use axum::{Extension, Router};
use utoipa::OpenApi;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, Required};
use utoipa_swagger_ui::SwaggerUi;

use super::RequestBounds;
use super::auth::{AccessControl, required_scope};
use crate::demo::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::error::{Forbidden, PayloadTooLarge, Unavailable};

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
    // The paths come from the router (`http::routes`); these are the
    // components no handler names by type.
    components(responses(Unavailable, PayloadTooLarge, Forbidden)),
    tags(
        (name = "semaphores", description = "Create, inspect, change and delete semaphores."),
        (name = "permits", description = "Acquire, look up, refresh and release permits."),
        (name = "demo", description = "The fan-out demo and its built-in slow upstream."),
        (name = "operations", description = "Probes, metrics and this document."),
    ),
)]
pub struct ApiDoc;

/// Writes the bounds a server enforces into the document the router
/// declared (see `http::document`).
pub fn with_bounds(mut doc: Document, bounds: &RequestBounds) -> Document {
    if let Some(components) = doc.components.as_mut() {
        let default_ttl = bounds.default_ttl.as_millis();
        for (body, what) in [
            ("AcquireBody", "Lease length in milliseconds"),
            ("RefreshBody", "The new lease, in milliseconds from now"),
        ] {
            let mut ttl = property(&mut components.schemas, body, "ttl_ms");
            // Stated in words, not as `default`: generators (openapi-typescript
            // among them) make a property with a `default` required.
            if let Some(ttl) = ttl.as_deref_mut() {
                ttl.description = Some(format!(
                    "{what}; left out, this server's default of {default_ttl}. The minimum \
                     and maximum are this server's configuration."
                ));
            }
            set_bounds(ttl, bounds.min_ttl_ms, bounds.max_ttl_ms, None);
        }
        let wait = property(&mut components.schemas, "AcquireBody", "wait_ms");
        set_bounds(wait, 0, bounds.max_wait_ms, None);
    }
    if doc.paths.paths.contains_key("/demo") {
        with_demo_bounds(&mut doc, bounds);
    }
    describe_bearer(&mut doc);
    with_optional_bodies(&mut doc);
    doc
}

/// States a body that may be left out as `required: false` with the
/// object's schema, where utoipa writes an `Option<Body>` as "null or the
/// object": generators read the former as an optional argument, while
/// `oneOf: [null, …]` made openapi-python-client send its "unset" marker as
/// the body. A `null` body is refused (see `extract::JsonBody`), as the
/// document now says.
fn with_optional_bodies(doc: &mut Document) {
    let items = doc.paths.paths.values_mut();
    let operations = items.flat_map(|item| {
        [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    });
    for body in operations.filter_map(|op| op.request_body.as_mut()) {
        for content in body.content.values_mut() {
            let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
                continue;
            };
            let object = one_of.items.iter().find_map(|item| match item {
                RefOr::Ref(object) => Some(object.clone()),
                RefOr::T(_) => None,
            });
            if let Some(object) = object {
                content.schema = Some(RefOr::Ref(object));
                body.required = Some(Required::False);
            }
        }
    }
}

/// The demo's bounds, on a document that has its routes (`--demo`).
fn with_demo_bounds(doc: &mut Document, bounds: &RequestBounds) {
    let demo = bounds.demo;
    if let Some(components) = doc.components.as_mut() {
        let reply = property(&mut components.schemas, "UpstreamReply", "delay_ms");
        set_bounds(reply, 0, demo.max_delay_ms, None);
    }
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
        let number = query_number(doc, path, name);
        set_bounds(number, minimum, maximum, Some(default));
    }
    if !demo.urls_allowed {
        // No host is listed: only an empty url (the built-in upstream) passes.
        let url = query_parameter(doc, "/demo", "url")
            .and_then(|p| match p.schema.as_mut()? {
                RefOr::T(Schema::Object(url)) => Some(url),
                _ => None,
            })
            .expect("GET /demo documents its url parameter");
        url.max_length = Some(0);
    }
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
                     Swagger UI (and `/metrics`, by default) never need one. A token has a \
                     scope: `read` (status, listing, metrics), `use` (permits and the demo, \
                     and `read`) or `admin` (create, change and delete semaphores, and \
                     `use`); each operation's security requirement names the scope it needs, \
                     and a token without it, or without the semaphore name prefix it is \
                     limited to, gets 403.",
                ))
                .build(),
        ),
    );
}

/// Marks every operation `access` guards as needing the bearer token with
/// the scope it needs, with its 401 and 403 answers: the document a server
/// with API tokens serves.
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
        let operations: [(Method, &mut Option<Operation>); 8] = [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
            (Method::HEAD, &mut item.head),
            (Method::OPTIONS, &mut item.options),
            (Method::TRACE, &mut item.trace),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let scope = required_scope(&method, Some(path));
            operation.security = Some(vec![SecurityRequirement::new(BEARER, [scope.as_str()])]);
            let responses = &mut operation.responses.responses;
            responses.insert("401".into(), RefOr::T(unauthorized.clone()));
            responses.insert(
                "403".into(),
                RefOr::Ref(Ref::from_response_name("Forbidden")),
            );
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

/// The document as YAML that every parser reads the same. The YAML writer
/// follows YAML 1.2, where `2026-11-28T07:36:53.712Z`, `yes` or `1:30` are
/// plain strings; YAML 1.1 parsers (PyYAML, many tools built on it) read
/// them as a timestamp, a boolean, a number. Such plain scalars are quoted,
/// so the YAML and the JSON document are the same data for everyone.
///
/// # Panics
/// Never in practice: the document is plain data.
pub fn to_yaml(doc: &Document) -> String {
    let yaml = doc
        .to_yaml()
        .expect("the OpenAPI document serialises to YAML");
    quote_yaml_1_1_scalars(&yaml)
}

/// Quotes every plain scalar value that YAML 1.1 would not read as a
/// string (see [`to_yaml`]), leaving block scalars (`|`, `>`) alone.
fn quote_yaml_1_1_scalars(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len() + 64);
    // Lines indented deeper than this belong to a block scalar.
    let mut block_at: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(at) = block_at {
            if line.trim().is_empty() || indent > at {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block_at = None;
        }
        let (head, value) = split_scalar(line);
        if value.starts_with('|') || value.starts_with('>') {
            block_at = Some(indent);
        }
        out.push_str(head);
        if is_yaml_1_1_non_string(value) {
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        } else {
            out.push_str(value);
        }
        out.push('\n');
    }
    out
}

/// A line as what comes before its scalar value (indent, `- ` markers, a
/// key and its `: `) and the value itself (possibly empty).
fn split_scalar(line: &str) -> (&str, &str) {
    let mut at = line.len() - line.trim_start().len();
    while line[at..].starts_with("- ") {
        at += 2;
    }
    let rest = &line[at..];
    // A quoted key ends at its closing quote; a plain one at the first ": ".
    let key_end = match rest.chars().next() {
        Some(quote @ ('\'' | '"')) => rest[1..].find(quote).map(|end| end + 2),
        _ => Some(0),
    };
    match key_end.and_then(|from| rest[from..].find(": ").map(|colon| from + colon + 2)) {
        Some(value_at) => line.split_at(at + value_at),
        None if rest.ends_with(':') => (line, ""),
        None => line.split_at(at),
    }
}

/// Whether a plain YAML scalar is something other than a string to a YAML
/// 1.1 parser, though YAML 1.2 reads it as one: a boolean word, a
/// timestamp, a sexagesimal or underscored number.
fn is_yaml_1_1_non_string(value: &str) -> bool {
    const BOOLEANS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let number = value.trim_start_matches(['-', '+']);
    let sexagesimal = number.contains(':')
        && number
            .split(':')
            .all(|part| digits(part.split('.').next().unwrap_or("")));
    let underscored = number.contains('_')
        && number.starts_with(|c: char| c.is_ascii_digit())
        && number
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'_' || b == b'x' || b == b'.');
    let timestamp = value.len() >= 10
        && digits(&value[..4])
        && value.as_bytes()[4] == b'-'
        && value[5..].starts_with(|c: char| c.is_ascii_digit())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-:.+ ".contains(&b));
    BOOLEANS.contains(&value) || sexagesimal || underscored || timestamp
}

/// The document as served: rendered once, at start.
pub struct Rendered {
    json: String,
    yaml: String,
}

impl Rendered {
    /// # Panics
    /// Never in practice: the document is plain data.
    pub fn new(doc: &Document) -> Self {
        Self {
            json: doc
                .to_json()
                .expect("the OpenAPI document serialises to JSON"),
            yaml: to_yaml(doc),
        }
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
pub async fn openapi_json(Extension(doc): Extension<Arc<Rendered>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.json.clone(),
    )
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
pub async fn openapi_yaml(Extension(doc): Extension<Arc<Rendered>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        doc.yaml.clone(),
    )
}

/// Swagger UI at `/docs/`, reading `/openapi.json`. Its assets are embedded
/// in the binary, so it works offline.
pub fn swagger_ui<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    SwaggerUi::new("/docs")
        .config(
            utoipa_swagger_ui::Config::from("/openapi.json")
                .try_it_out_enabled(true)
                .display_operation_id(true),
        )
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_yaml_1_1_reads_otherwise_are_quoted() {
        let yaml = "a:\n  at: 2026-11-28T07:36:53.712Z\n  day: 2026-11-28\n  b: yes\n  \
                    c: 1:30\n  d: 1_000\n  e: payments\n  f: '2026-11-28'\n  \
                    text: |\n    on\n    2026-11-28T07:36:53Z\n  list:\n  - off\n  \
                    - worker-7\n  'key: x': no\n";
        let quoted = quote_yaml_1_1_scalars(yaml);
        assert_eq!(
            quoted,
            "a:\n  at: '2026-11-28T07:36:53.712Z'\n  day: '2026-11-28'\n  b: 'yes'\n  \
             c: '1:30'\n  d: '1_000'\n  e: payments\n  f: '2026-11-28'\n  \
             text: |\n    on\n    2026-11-28T07:36:53Z\n  list:\n  - 'off'\n  \
             - worker-7\n  'key: x': 'no'\n"
        );
    }
}
