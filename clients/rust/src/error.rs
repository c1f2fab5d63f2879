//! What can go wrong, as one enum a caller can match on: each refusal permitd
//! documents has its own variant, anything else keeps the problem+json body.

use std::time::Duration;

use serde::Deserialize;

/// An `application/problem+json` body (RFC 9457) as permitd sends it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Problem {
    /// `urn:permitd:problem:<kind>`.
    /// The problem type, a URI naming the kind of refusal.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// A short summary of the kind.
    #[serde(default)]
    pub title: String,
    /// The HTTP status.
    #[serde(default)]
    pub status: u16,
    /// What happened this time, for people.
    #[serde(default)]
    pub detail: String,
    /// The members beyond the standard four (`limit`, `held`, `available`, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// The kind without its `urn:permitd:problem:` prefix.
    pub fn short_kind(&self) -> &str {
        self.kind
            .strip_prefix("urn:permitd:problem:")
            .unwrap_or(&self.kind)
    }

    fn number(&self, member: &str) -> Option<u32> {
        self.extra
            .get(member)
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    }

    /// What a response that was not JSON is reported as.
    pub(crate) fn from_text(status: u16, text: &str) -> Self {
        Self {
            status,
            detail: text.chars().take(200).collect(),
            ..Self::default()
        }
    }
}

/// Why a permit is no longer held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// permitd answered that the permit does not exist: its lease ran out, or
    /// someone released it or deleted its semaphore.
    Ended,
    /// No refresh was confirmed before the lease would have run out (permitd
    /// unreachable or refusing), so the permit must be taken as gone.
    Unconfirmed {
        /// Why the last refresh attempt failed.
        last_error: String,
    },
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::Ended => f.write_str("permitd no longer knows the permit"),
            LostReason::Unconfirmed { last_error } => write!(
                f,
                "no refresh was confirmed before the lease ran out ({last_error})"
            ),
        }
    }
}

/// Every error of this crate.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 429: no capacity within the wait. The counts are the semaphore's at
    /// the last answer; `retry_after` is when a lease next runs out.
    #[error("no permit available: {} of {} units held", shown(*.held), shown(*.limit))]
    NoCapacity {
        /// The semaphore's limit.
        limit: Option<u32>,
        /// Units held when it answered.
        held: Option<u32>,
        /// Units free when it answered (fewer than asked for).
        available: Option<u32>,
        /// When a lease next runs out (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// 409: the semaphore exists with another limit, `current`.
    #[error("the semaphore exists with another limit, {}", shown(*.current))]
    LimitConflict {
        /// The limit the semaphore has.
        current: Option<u32>,
    },
    /// 409: more units asked for than the limit, so it could never succeed.
    #[error("count is more than the limit, {}", shown(*.limit))]
    CountExceedsLimit {
        /// The semaphore's limit.
        limit: Option<u32>,
    },
    /// 404: no such semaphore (acquire without a limit), or no such permit.
    #[error("not found: {}", .0.detail)]
    NotFound(Problem),
    /// permitd could not be reached, timed out, or answered 503, after the
    /// retries the wait allowed.
    #[error("permitd unavailable: {reason}")]
    Unavailable {
        /// The last failure: a transport error or the 503's detail.
        reason: String,
        /// The server's `Retry-After`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// The permit's lease was lost while it was held.
    #[error("permit lost: {0}")]
    PermitLost(LostReason),
    /// 401: no token, or one permitd does not accept.
    #[error("unauthorized: {}", .0.detail)]
    Unauthorized(Problem),
    /// 403: the token lacks the scope for this call.
    #[error("forbidden: {}", .0.detail)]
    Forbidden(Problem),
    /// 410: the permit this acquire's idempotency key made has already ended;
    /// permitd will not grant a second one for the same key.
    #[error("the permit for this idempotency key has ended: {}", .0.detail)]
    PermitEnded(Problem),
    /// 422 (409 `idempotency-key-reused` from older servers): the key was
    /// used with another request body.
    #[error("idempotency key reused with another request: {}", .0.detail)]
    IdempotencyMismatch(Problem),
    /// A value refused before anything was sent (bad URL, name, count).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Any other answer, with its problem body.
    #[error("permitd answered {status}: {}", .problem.detail)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The problem body.
        problem: Problem,
    },
}

/// A number permitd may have left out of a problem body.
fn shown(n: Option<u32>) -> String {
    n.map_or_else(|| "?".into(), |n| n.to_string())
}

impl Error {
    /// The error an answer of `status` with `problem` stands for.
    pub(crate) fn from_answer(
        status: u16,
        problem: Problem,
        retry_after: Option<Duration>,
    ) -> Self {
        match (status, problem.short_kind()) {
            (401, _) => Error::Unauthorized(problem),
            (403, _) => Error::Forbidden(problem),
            (404, _) => Error::NotFound(problem),
            (409, "limit-conflict") => Error::LimitConflict {
                current: problem.number("limit"),
            },
            (409, "count-exceeds-limit") => Error::CountExceedsLimit {
                limit: problem.number("limit"),
            },
            (409, "idempotency-key-reused") | (422, _) => Error::IdempotencyMismatch(problem),
            (410, _) => Error::PermitEnded(problem),
            (429, _) => Error::NoCapacity {
                limit: problem.number("limit"),
                held: problem.number("held"),
                available: problem.number("available"),
                retry_after,
            },
            (503, _) => Error::Unavailable {
                reason: if problem.detail.is_empty() {
                    "503 Service Unavailable".into()
                } else {
                    format!("503: {}", problem.detail)
                },
                retry_after,
            },
            _ => Error::Api { status, problem },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(json: serde_json::Value) -> Problem {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn each_documented_refusal_has_its_variant() {
        let full = problem(serde_json::json!({
            "type": "urn:permitd:problem:no-capacity", "title": "No permit available",
            "status": 429, "detail": "2 of 2", "limit": 2, "held": 2, "available": 0
        }));
        let secs = Some(Duration::from_secs(3));
        match Error::from_answer(429, full, secs) {
            Error::NoCapacity {
                limit: Some(2),
                held: Some(2),
                available: Some(0),
                retry_after,
            } => assert_eq!(retry_after, secs),
            other => panic!("{other:?}"),
        }
        let conflict = problem(serde_json::json!({
            "type": "urn:permitd:problem:limit-conflict", "status": 409, "limit": 7
        }));
        assert!(matches!(
            Error::from_answer(409, conflict, None),
            Error::LimitConflict { current: Some(7) }
        ));
        let reused = problem(serde_json::json!({
            "type": "urn:permitd:problem:idempotency-key-reused", "status": 409
        }));
        assert!(matches!(
            Error::from_answer(409, reused, None),
            Error::IdempotencyMismatch(_)
        ));
        for (status, check) in [
            (401, "unauthorized"),
            (403, "forbidden"),
            (404, "not found"),
            (410, "ended"),
            (422, "reused"),
            (503, "unavailable"),
            (500, "answered 500"),
        ] {
            let error = Error::from_answer(status, Problem::from_text(status, "x"), None);
            assert!(error.to_string().contains(check), "{status}: {error}");
        }
    }

    #[test]
    fn a_problem_without_the_usual_members_still_parses() {
        let bare: Problem = serde_json::from_str("{}").unwrap();
        assert_eq!(bare.short_kind(), "");
        assert!(matches!(
            Error::from_answer(409, bare, None),
            Error::Api { status: 409, .. }
        ));
    }
}
