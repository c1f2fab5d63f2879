//! Access control: optional bearer tokens, checked in constant time.
//!
//! With no token configured every route is open (the default, so `cargo run`
//! and the README's curl lines work). With one or more, every request needs
//! `Authorization: Bearer <token>` except the probes (`/healthz`, `/readyz`),
//! the API description and its viewer (`/docs/…`, `/openapi.json`,
//! `/openapi.yaml`: static text, so Swagger UI can load and then authorize),
//! and `/metrics` unless `--metrics-public false`. A missing or wrong token is
//! a 401 problem with `WWW-Authenticate: Bearer realm="permitd"`.
//!
//! Tokens are kept only as SHA-256 digests and a presented token is compared
//! with every one of them, without stopping at a match and byte by byte in
//! constant time (`subtle`): neither the time to answer nor the token lengths
//! tell an attacker how close a guess was.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::AppState;
use crate::error::ApiError;
use crate::secret::Secret;

/// Who may call the API.
#[derive(Default)]
pub struct AccessControl {
    /// SHA-256 of each accepted token; empty means the API is open.
    digests: Vec<[u8; 32]>,
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

    pub fn new(tokens: &[Secret], metrics_public: bool) -> Self {
        Self {
            digests: tokens.iter().map(|t| digest(t.expose())).collect(),
            metrics_public,
        }
    }

    /// Whether any token is configured.
    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `presented` is one of the tokens. Compares with all of them,
    /// whatever matches, so the time taken depends only on how many there are.
    pub fn accepts(&self, presented: &str) -> bool {
        self.caller(presented).is_some()
    }

    /// Who presented `presented`, when it is one of the tokens: a name derived
    /// from the token's digest (stable across restarts and token order,
    /// telling nothing of the token). Constant time, like [`Self::accepts`].
    pub fn caller(&self, presented: &str) -> Option<Caller> {
        let presented = digest(presented);
        let mut any = Choice::from(0);
        for accepted in &self.digests {
            any |= accepted.ct_eq(&presented);
        }
        // Only the presented token's own digest is named, after the match.
        bool::from(any).then(|| {
            let name: String = presented[..8].iter().map(|b| format!("{b:02x}")).collect();
            Caller(name)
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

/// Middleware: lets a request through when access control is off, the route
/// is open, or it carries an accepted token; answers 401 otherwise.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let access = &state.access;
    if !access.is_enabled() || access.is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let caller = bearer_token(&request).map(|token| access.caller(token));
    match caller {
        Some(Some(caller)) => {
            let mut request = request;
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Some(None) => ApiError::Unauthorized { presented: true }.into_response(),
        None => ApiError::Unauthorized { presented: false }.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(tokens: &[&str], metrics_public: bool) -> AccessControl {
        let tokens: Vec<Secret> = tokens.iter().map(|t| Secret::new(*t)).collect();
        AccessControl::new(&tokens, metrics_public)
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
