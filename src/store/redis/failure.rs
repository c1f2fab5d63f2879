//! What Redis answers mean to a caller, in every mode: retry later (503),
//! refused for good (a wrong password, an untrusted certificate), or a bug;
//! and which failures make a connection unusable.

use deadpool_redis::redis::{self, RetryMethod};

use crate::store::StoreError;

/// Server answers that mean "not now" rather than "never": a demoted master
/// (`READONLY`), a restart loading its data (`LOADING`), a long script
/// (`BUSY`), a full or unwritable Redis (`OOM`, `MISCONF`), too few replicas
/// for `min-replicas-to-write` (`NOREPLICAS`), a replica without its master
/// (`MASTERDOWN`) and a cluster between states (`CLUSTERDOWN`, `TRYAGAIN`).
/// Each is a 503 with `Retry-After`, never a 500.
const TRANSIENT_CODES: [&str; 9] = [
    "READONLY",
    "LOADING",
    "BUSY",
    "OOM",
    "MISCONF",
    "NOREPLICAS",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
];

/// Whether this connection must not be used again: it broke, or it reaches a
/// Redis that is no longer the master (`READONLY`), so a new connection may
/// find the current one.
pub(super) fn is_unusable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.code() == Some("READONLY")
}

/// What a Redis error means to a caller: retry later, refused, or a bug.
pub(super) fn classify(e: redis::RedisError) -> StoreError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return StoreError::Refused(format!("{e}; check the user and password of the Redis URL"));
    }
    // rustls says why it does not trust the server's certificate in its
    // message (UnknownIssuer, NotValidForName, Expired, ...).
    let text = e.to_string();
    if text.contains("certificate") {
        return StoreError::Refused(format!(
            "{text}; the Redis server's TLS certificate is not trusted: give the CA that \
             signed it with --redis-tls-ca-file"
        ));
    }
    if e.code().is_some_and(|code| TRANSIENT_CODES.contains(&code)) {
        return StoreError::Unavailable(e.to_string());
    }
    match e.retry_method() {
        RetryMethod::NoRetry => StoreError::Internal(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}
