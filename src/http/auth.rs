//! Access control: optional bearer tokens, each with a scope and optionally a
//! name prefix, checked in constant time.
//!
//! With no token configured every route is open (the default, so `cargo run`
//! and the README's curl lines work). With one or more, every request needs
//! `Authorization: Bearer <token>` except the probes (`/healthz`, `/readyz`),
//! the API description and its viewer (`/docs/…`, `/openapi.json`,
//! `/openapi.yaml`: static text, so Swagger UI can load and then authorize),
//! and `/metrics` unless `--metrics-public false`. A missing or wrong token is
//! a 401 problem with `WWW-Authenticate: Bearer realm="permitd"`.
//!
//! Each configured entry is `scope[@prefix]:token` ([`TokenEntry`]): the
//! scope ([`Scope`]: `read`, `use`, `admin`, each including the ones before
//! it) says which operations the token may call ([`required_scope`]), the
//! prefix which semaphores it may touch. An entry without a scope is a token
//! that may do everything, as before scopes existed. A token that lacks the
//! scope or the prefix is a 403 problem. What a request's token allows is
//! put in its extensions as [`Access`], for handlers that decide more finely
//! (a listing filtered by prefix, ids in a status for `admin` only, the
//! per-semaphore gauges on `/metrics` shown only for names it may read).
//!
//! Tokens are kept only as SHA-256 digests and a presented token is compared
//! with every one of them, without stopping at a match and byte by byte in
//! constant time (`subtle`): neither the time to answer nor the token lengths
//! tell an attacker how close a guess was.

use std::sync::Arc;

use axum::extract::{
    FromRequestParts, MatchedPath, OptionalFromRequestParts, RawPathParams, Request,
};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::error::ApiError;
use crate::secret::Secret;

/// What a token may do. Each scope includes the ones before it, so they can
/// be compared: `Admin > Use > Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Status, the listing, and `/metrics` when it is not public.
    Read,
    /// Acquire, look up, refresh and release permits; the demo.
    Use,
    /// Create, change and delete semaphores; permit ids in a status.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Use, Scope::Admin];

    /// The word used in a token entry and in the OpenAPI document.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Use => "use",
            Scope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured token entry: `scope[@prefix]:token`, or a bare token.
pub struct TokenEntry {
    pub scope: Scope,
    /// Only semaphores whose names start with it may be touched.
    pub prefix: Option<String>,
    pub token: Secret,
}

impl TokenEntry {
    /// Reads one entry. It is scoped when it starts with `read`, `use` or
    /// `admin` followed by `:` (no prefix) or `@` (a prefix). The token is
    /// what follows the last `:`, so a prefix may hold `:` like semaphore
    /// names do, and the token of a scoped entry may not. Anything else is a
    /// bare token that may do everything, as entries did before scopes, so
    /// no configuration changes meaning by accident.
    ///
    /// # Errors
    /// A scoped entry with an empty token, a `:` in its token, or a prefix
    /// outside the name alphabet. The message never shows the token.
    pub fn parse(entry: &Secret) -> Result<Self, String> {
        let raw = entry.expose();
        for scope in Scope::ALL {
            let Some(rest) = raw.strip_prefix(scope.as_str()) else {
                continue;
            };
            let (prefix, token) = if let Some(token) = rest.strip_prefix(':') {
                if token.contains(':') {
                    return Err(format!(
                        "a {scope}: entry's token may not contain ':'; a name prefix goes \
                         after '@' ({scope}@prefix:token)"
                    ));
                }
                (None, token)
            } else if let Some(rest) = rest.strip_prefix('@') {
                let Some((prefix, token)) = rest.rsplit_once(':') else {
                    return Err(format!(
                        "a {scope}@prefix entry needs ':token' after the prefix"
                    ));
                };
                let alphabet =
                    |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':');
                if prefix.is_empty() || prefix.len() > 128 || !prefix.bytes().all(alphabet) {
                    return Err(
                        "a name prefix is 1 to 128 characters of A-Z a-z 0-9 . _ - :".to_owned(),
                    );
                }
                (Some(prefix.to_owned()), token)
            } else {
                continue;
            };
            if token.is_empty() {
                return Err(format!("the {scope} entry has an empty token"));
            }
            return Ok(Self {
                scope,
                prefix,
                token: Secret::new(token),
            });
        }
        Ok(Self {
            scope: Scope::Admin,
            prefix: None,
            token: entry.clone(),
        })
    }
}

/// What the token of a request allows, in its extensions: the scope and the
/// name prefix. Every request that passed access control on a route needing
/// a token has one, and so does one to public `/metrics` with a valid token;
/// with access control off it allows everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    scope: Scope,
    prefix: Option<Arc<str>>,
}

impl Access {
    /// No restriction: access control is off, or a bare token.
    pub fn everything() -> Self {
        Self {
            scope: Scope::Admin,
            prefix: None,
        }
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The prefix every semaphore name this caller touches must start with
    /// (a listing shows only those).
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// Whether the token has `scope` (or a broader one).
    pub fn may(&self, scope: Scope) -> bool {
        self.scope >= scope
    }

    /// Whether the token may touch the semaphore called `name`.
    pub fn may_touch(&self, name: &str) -> bool {
        self.prefix().is_none_or(|prefix| name.starts_with(prefix))
    }

    /// Whether the token may read the semaphore called `name`
    /// (`GET /semaphores/{name}`): its scope and its prefix, judged as the
    /// middleware judges that call, for what else shows a semaphore by name
    /// (its gauges on `/metrics`).
    pub fn may_read(&self, name: &str) -> bool {
        self.may(reading_scope()) && self.may_touch(name)
    }

    /// Whether the token may read every semaphore, so nothing shown by name
    /// needs filtering for it.
    pub fn may_read_all(&self) -> bool {
        self.prefix.is_none() && self.may(reading_scope())
    }

    /// `Ok` when the token has `scope`.
    ///
    /// # Errors
    /// A 403 problem naming the scope needed.
    pub fn require(&self, scope: Scope, what: &str) -> Result<(), ApiError> {
        if self.may(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{what} needs a token with the {scope} scope; this one has {}",
                self.scope
            )))
        }
    }
}

/// Handlers take the request's [`Access`] as an extractor. Only routes that
/// never check tokens (probes, documents) lack one: refused rather than
/// guessed.
impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Access>()
            .cloned()
            .ok_or_else(|| ApiError::Forbidden("this route does not take a token".into()))
    }
}

/// `Option<Access>` for a route open to anyone that still shows more to a
/// token (public `/metrics`): `None` for an anonymous caller.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Access {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> Result<Option<Self>, std::convert::Infallible> {
        Ok(parts.extensions.get::<Access>().cloned())
    }
}

/// The scope `GET /semaphores/{name}` needs: what showing a semaphore by
/// name needs elsewhere too.
fn reading_scope() -> Scope {
    required_scope(&Method::GET, Some("/semaphores/{name}"))
}

/// The scope an operation needs, by method and matched route template.
/// Used by the middleware and by the OpenAPI document, so the two agree.
/// An unknown path needs only a valid token (its answer is a 404); a route
/// this table does not know yet needs `admin` until it is classified here.
pub fn required_scope(method: &Method, route: Option<&str>) -> Scope {
    let reading = matches!(*method, Method::GET | Method::HEAD);
    match route {
        None => Scope::Read,
        Some("/semaphores" | "/semaphores/{name}" | "/metrics") if reading => Scope::Read,
        Some("/semaphores/{name}/permits") if *method == Method::POST => Scope::Use,
        Some("/semaphores/{name}/permits/{id}")
            if reading || matches!(*method, Method::PATCH | Method::DELETE) =>
        {
            Scope::Use
        }
        Some("/demo" | "/demo/upstream") => Scope::Use,
        Some("/semaphores/{name}") if matches!(*method, Method::PUT | Method::DELETE) => {
            Scope::Admin
        }
        // Other methods of known routes are answered 405.
        Some(
            "/semaphores"
            | "/semaphores/{name}"
            | "/semaphores/{name}/permits"
            | "/semaphores/{name}/permits/{id}"
            | "/metrics",
        ) => Scope::Read,
        Some(_) => Scope::Admin,
    }
}

/// Who may call the API.
#[derive(Default)]
pub struct AccessControl {
    /// SHA-256 of each accepted token; empty means the API is open.
    digests: Vec<[u8; 32]>,
    /// What each token allows, in the order of `digests`.
    grants: Vec<Access>,
    /// Whether `/metrics` is served without a token.
    metrics_public: bool,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl")
            .field("tokens", &self.digests.len())
            .field("metrics_public", &self.metrics_public)
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(token.as_bytes()));
    out
}

impl AccessControl {
    /// Everything open: no token configured.
    pub fn open() -> Self {
        Self::default()
    }

    /// Access control for these token entries (see [`TokenEntry::parse`]).
    ///
    /// # Errors
    /// When an entry is malformed, or one token is configured twice (with
    /// two scopes it would be unclear which applies).
    pub fn new(entries: &[Secret], metrics_public: bool) -> anyhow::Result<Self> {
        let mut digests = Vec::with_capacity(entries.len());
        let mut grants = Vec::with_capacity(entries.len());
        for (n, entry) in entries.iter().enumerate() {
            let entry = TokenEntry::parse(entry)
                .map_err(|e| anyhow::anyhow!("API token #{}: {e}", n + 1))?;
            let token = digest(entry.token.expose());
            if let Some(earlier) = digests.iter().position(|d| *d == token) {
                anyhow::bail!(
                    "API tokens #{} and #{} are the same token",
                    earlier + 1,
                    n + 1
                );
            }
            digests.push(token);
            grants.push(Access {
                scope: entry.scope,
                prefix: entry.prefix.map(Arc::from),
            });
        }
        Ok(Self {
            digests,
            grants,
            metrics_public,
        })
    }

    /// Whether any token is configured.
    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `presented` is one of the tokens. Compares with all of them,
    /// whatever matches, so the time taken depends only on how many there are.
    pub fn accepts(&self, presented: &str) -> bool {
        self.identify(presented).is_some()
    }

    /// Who presented `presented` and what the token allows, when it is one of
    /// the tokens. The caller is named from the token's digest (stable across
    /// restarts and token order, telling nothing of the token). Constant
    /// time, like [`Self::accepts`]: which entry matched is selected without
    /// branching on it.
    pub fn identify(&self, presented: &str) -> Option<(Caller, Access)> {
        let presented = digest(presented);
        let mut any = Choice::from(0);
        let mut index = 0u32;
        for (i, accepted) in self.digests.iter().enumerate() {
            let matched = accepted.ct_eq(&presented);
            index.conditional_assign(&(i as u32), matched);
            any |= matched;
        }
        // Only the presented token's own digest is named, after the match.
        bool::from(any).then(|| {
            // The first 8 bytes as 16 hex digits, in one allocation.
            let head = u64::from_be_bytes(presented[..8].try_into().expect("8 of 32 bytes"));
            (
                Caller(format!("{head:016x}")),
                self.grants[index as usize].clone(),
            )
        })
    }

    /// Routes anyone may call, tokens or not (also used to mark the OpenAPI
    /// document's operations that need a token).
    pub fn is_open(&self, path: &str) -> bool {
        matches!(
            path,
            "/healthz" | "/readyz" | "/openapi.json" | "/openapi.yaml"
        ) || path == "/docs"
            || path.starts_with("/docs/")
            || (path == "/metrics" && self.metrics_public)
    }
}

/// The caller a request's token names, for scoping what it may see of other
/// callers' state (`Idempotency-Key`). Only present with access control on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110).
fn bearer_token(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Lets a request through (with its caller and grant in its extensions)
/// when access control is off, the route is open, or it carries an accepted
/// token with the scope and name prefix the request needs; the 401 or 403
/// answer otherwise.
///
/// # Errors
/// The refusal to answer with.
pub async fn require_token(
    access: &AccessControl,
    mut request: Request,
) -> Result<Request, Response> {
    if !access.is_enabled() {
        request.extensions_mut().insert(Access::everything());
        return Ok(request);
    }
    if access.is_open(request.uri().path()) {
        // Public metrics show the gauges of the semaphores a token may read
        // (anonymous scrapers see none), so a token presented there is
        // identified. A wrong one is ignored rather than refused, as on any
        // open route: the page is served, without those gauges.
        if request.uri().path() == "/metrics"
            && let Some((_, grant)) = bearer_token(&request).and_then(|t| access.identify(t))
        {
            request.extensions_mut().insert(grant);
        }
        return Ok(request);
    }
    let (caller, grant) = match bearer_token(&request).map(|token| access.identify(token)) {
        Some(Some(identified)) => identified,
        Some(None) => return Err(ApiError::Unauthorized { presented: true }.into_response()),
        None => return Err(ApiError::Unauthorized { presented: false }.into_response()),
    };
    // A clone of the matched route is a reference count, not a copy.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map(MatchedPath::as_str);
    let needed = required_scope(request.method(), route);
    if !grant.may(needed) {
        // Worded only for a refusal: the common case allocates nothing.
        let operation = format!("{} {}", request.method(), route.unwrap_or("this path"));
        if let Err(forbidden) = grant.require(needed, &operation) {
            return Err(forbidden.into_response());
        }
    }
    if let Some(prefix) = grant.prefix()
        && route.is_some_and(|r| r.contains("{name}"))
    {
        let (mut parts, body) = request.into_parts();
        // Percent-decoded, as the handler's path extractor will read it.
        let name = RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(key, _)| *key == "name")
                    .map(|(_, value)| value.to_owned())
            });
        if !name.is_some_and(|name| grant.may_touch(&name)) {
            return Err(ApiError::Forbidden(format!(
                "this token may only touch semaphores whose names start with {prefix:?}"
            ))
            .into_response());
        }
        request = Request::from_parts(parts, body);
    }
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(grant);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(tokens: &[&str], metrics_public: bool) -> AccessControl {
        let tokens: Vec<Secret> = tokens.iter().map(|t| Secret::new(*t)).collect();
        AccessControl::new(&tokens, metrics_public).unwrap()
    }

    fn entry(raw: &str) -> Result<(Scope, Option<String>, String), String> {
        TokenEntry::parse(&Secret::new(raw))
            .map(|e| (e.scope, e.prefix, e.token.expose().to_owned()))
    }

    #[test]
    fn only_configured_tokens_are_accepted() {
        let access = control(&["alpha-token", "beta-token"], true);
        assert!(access.is_enabled());
        assert!(access.accepts("alpha-token"));
        assert!(access.accepts("beta-token"));
        assert!(!access.accepts("alpha-toke"));
        assert!(!access.accepts("alpha-token2"));
        assert!(!access.accepts(""));
    }

    #[test]
    fn no_token_means_access_control_is_off() {
        let access = AccessControl::open();
        assert!(!access.is_enabled());
        assert!(!access.accepts(""));
    }

    #[test]
    fn entries_name_a_scope_and_optionally_a_prefix() {
        assert_eq!(entry("read:r-tok"), Ok((Scope::Read, None, "r-tok".into())));
        assert_eq!(entry("use:u-tok"), Ok((Scope::Use, None, "u-tok".into())));
        assert_eq!(
            entry("admin:a-tok"),
            Ok((Scope::Admin, None, "a-tok".into()))
        );
        assert_eq!(
            entry("use@payments.:s3cr3t"),
            Ok((Scope::Use, Some("payments.".into()), "s3cr3t".into()))
        );
        // Names may hold ':', and so may a prefix: the token follows the last one.
        assert_eq!(
            entry("read@team:pay:s3cr3t"),
            Ok((Scope::Read, Some("team:pay".into()), "s3cr3t".into()))
        );
        // Without a scope word in front, an entry is a bare token, as before.
        for bare in [
            "plain-token",
            "useful:token",
            "reader@x:y",
            "read",
            "x:use:y",
        ] {
            assert_eq!(entry(bare), Ok((Scope::Admin, None, bare.into())), "{bare}");
        }
    }

    #[test]
    fn ambiguous_or_empty_scoped_entries_stop_the_start() {
        for bad in [
            "use:payments-:s3cr3t",
            "use:",
            "admin@:tok",
            "read@pay",
            "use@pay/x:tok",
            "use@p:",
        ] {
            let error = entry(bad).unwrap_err();
            assert!(!error.contains("s3cr3t"), "{error}");
        }
        let twice =
            AccessControl::new(&[Secret::new("read:same"), Secret::new("admin:same")], true);
        assert!(twice.unwrap_err().to_string().contains("#1 and #2"));
    }

    #[test]
    fn the_matching_entry_decides_scope_and_prefix() {
        let access = control(&["read:r-tok", "use@pay.:u-tok", "bare-tok"], true);
        let (_, read) = access.identify("r-tok").unwrap();
        assert!(read.may(Scope::Read) && !read.may(Scope::Use));
        let (_, using) = access.identify("u-tok").unwrap();
        assert!(using.may(Scope::Use) && !using.may(Scope::Admin));
        assert!(using.may_touch("pay.eu") && !using.may_touch("payroll"));
        assert!(using.may_read("pay.eu") && !using.may_read("payroll") && !using.may_read_all());
        assert!(read.may_read_all());
        let (_, bare) = access.identify("bare-tok").unwrap();
        assert_eq!(bare, Access::everything());
        assert!(bare.may_touch("anything"));
    }

    #[test]
    fn every_operation_needs_its_scope() {
        let needs = |method: Method, route: &str| required_scope(&method, Some(route));
        assert_eq!(needs(Method::GET, "/semaphores/{name}"), Scope::Read);
        assert_eq!(needs(Method::GET, "/semaphores"), Scope::Read);
        assert_eq!(needs(Method::GET, "/metrics"), Scope::Read);
        assert_eq!(
            needs(Method::POST, "/semaphores/{name}/permits"),
            Scope::Use
        );
        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            assert_eq!(needs(method, "/semaphores/{name}/permits/{id}"), Scope::Use);
        }
        assert_eq!(needs(Method::GET, "/demo"), Scope::Use);
        assert_eq!(needs(Method::PUT, "/semaphores/{name}"), Scope::Admin);
        assert_eq!(needs(Method::DELETE, "/semaphores/{name}"), Scope::Admin);
        assert_eq!(
            needs(Method::POST, "/semaphores/{name}"),
            Scope::Read,
            "a 405"
        );
        assert_eq!(needs(Method::GET, "/a-route-added-later"), Scope::Admin);
        assert_eq!(required_scope(&Method::GET, None), Scope::Read, "a 404");
    }

    #[test]
    fn probes_docs_and_optionally_metrics_are_open() {
        let public = control(&["t"], true);
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/docs",
            "/docs/",
            "/docs/index.html",
            "/openapi.json",
            "/openapi.yaml",
        ] {
            assert!(public.is_open(path), "{path}");
        }
        for path in [
            "/semaphores/x",
            "/demo",
            "/demo/upstream",
            "/healthz/x",
            "/docsx",
        ] {
            assert!(!public.is_open(path), "{path}");
        }
        assert!(!control(&["t"], false).is_open("/metrics"));
    }

    #[test]
    fn debug_shows_how_many_tokens_never_which() {
        let shown = format!("{:?}", control(&["very-secret-token"], true));
        assert!(!shown.contains("very-secret"));
        assert!(shown.contains("tokens: 1"));
    }
}
