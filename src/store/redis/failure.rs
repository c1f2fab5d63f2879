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
        || has_code(e, |code| code == "READONLY")
}

/// Whether the error, or any command's error in a pipeline (a write followed
/// by `WAIT`), carries a server code that `matches`. redis-rs gives a code
/// of its own only for the kinds it knows (not `OOM` or `NOREPLICAS`) once
/// the error came from a pipeline, so the server errors are read as well.
fn has_code(e: &redis::RedisError, matches: impl Fn(&str) -> bool) -> bool {
    if e.code().is_some_and(&matches) {
        return true;
    }
    e.clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, error)| matches(error.code())))
}

/// What a Redis error means to a caller: retry later, refused, or a bug.
pub(super) fn classify(e: redis::RedisError) -> StoreError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return StoreError::Refused(format!("{e}; check the user and password of the Redis URL"));
    }
    // rustls says why it does not trust the server's certificate in its
    // message (UnknownIssuer, NotValidForName, Expired, ...).
    let text = e.to_string();
    if text.contains("CaUsedAsEndEntity") {
        // Trusting that same file cannot help: rustls refuses a CA
        // certificate as a server's own by design (webpki), where OpenSSL's
        // clients (redis-cli --tls) accept it.
        return StoreError::Refused(format!(
            "{text}; the Redis server presents a CA certificate (CA:TRUE) as its own, which \
             permitd's TLS refuses even when it is the file given with --redis-tls-ca-file: \
             make a CA and a server certificate that CA signs (as Redis's \
             utils/gen-test-certs.sh does), give Redis the server certificate and its key \
             (tls-cert-file, tls-key-file) and permitd the CA"
        ));
    }
    if text.contains("certificate") {
        return StoreError::Refused(format!(
            "{text}; the Redis server's TLS certificate is not trusted: give the CA that \
             signed it with --redis-tls-ca-file"
        ));
    }
    if has_code(&e, |code| TRANSIENT_CODES.contains(&code)) {
        return StoreError::Unavailable(e.to_string());
    }
    match e.retry_method() {
        RetryMethod::NoRetry => StoreError::Internal(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use deadpool_redis::redis::{ConnectionLike, RedisResult, Value};

    use super::*;

    /// A connection that answers every pipeline with the values given, so
    /// that redis-rs itself makes the error a pipeline of them gives.
    struct Answers(Vec<Value>);

    impl ConnectionLike for Answers {
        fn req_packed_command(&mut self, _: &[u8]) -> RedisResult<Value> {
            Ok(self.0[0].clone())
        }
        fn req_packed_commands(&mut self, _: &[u8], _: usize, _: usize) -> RedisResult<Vec<Value>> {
            Ok(self.0.clone())
        }
        fn get_db(&self) -> i64 {
            0
        }
        fn check_connection(&mut self) -> bool {
            true
        }
        fn is_open(&self) -> bool {
            true
        }
    }

    fn server_error(text: &str) -> Value {
        redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).unwrap()
    }

    /// The error of a script call alone, and of the same call pipelined with
    /// `WAIT` (`--redis-wait-replicas`).
    fn both_forms(text: &str) -> [redis::RedisError; 2] {
        let alone = redis::cmd("FCALL")
            .query::<Value>(&mut Answers(vec![server_error(text)]))
            .unwrap_err();
        let mut pipe = redis::pipe();
        pipe.cmd("FCALL").cmd("WAIT").arg(1).arg(500);
        let pipelined = pipe
            .query::<Vec<Value>>(&mut Answers(vec![server_error(text), Value::Int(0)]))
            .unwrap_err();
        [alone, pipelined]
    }

    #[test]
    fn every_transient_code_is_a_503_alone_and_pipelined_with_wait() {
        for code in TRANSIENT_CODES {
            for (form, e) in ["alone", "pipelined"]
                .iter()
                .zip(both_forms(&format!("{code} x")))
            {
                let classified = classify(e);
                assert!(
                    matches!(classified, StoreError::Unavailable(_)),
                    "{code} {form}: {classified:?}"
                );
            }
        }
    }

    #[test]
    fn readonly_makes_the_connection_unusable_in_both_forms() {
        for e in both_forms("READONLY You can't write against a read only replica.") {
            assert!(is_unusable(&e), "{e:?}");
        }
        for e in both_forms("ERR unknown command") {
            assert!(!is_unusable(&e), "{e:?}");
            assert!(matches!(classify(e), StoreError::Internal(_)));
        }
    }
}
