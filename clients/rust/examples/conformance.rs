//! The Rust client's adapter for the conformance suite
//! (`clients/conformance/PROTOCOL.md`): one operation through the client,
//! reported as JSON lines. The harness judges; this only does and tells.
//!
//! ```text
//! conformance hold --url http://127.0.0.1:8080 --semaphore s --limit 3 \
//!     --ttl-ms 1000 --wait-ms 10000 --hold-ms 1500
//! ```

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use permitd_client::{Client, Error};
use serde_json::{Value, json};

/// Prints one event, stamped with the wall clock now.
fn emit(event: &str, mut fields: Value) {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    fields["event"] = event.into();
    fields["t"] = t.into();
    println!("{fields}");
}

fn error_event(error: &Error) -> Value {
    let kind = match error {
        Error::NoCapacity { .. } => "NoCapacity",
        Error::LimitConflict { .. } => "LimitConflict",
        Error::NotFound(_) => "NotFound",
        Error::Unavailable { .. } => "Unavailable",
        Error::Unauthorized(_) => "Unauthorized",
        _ => "Other",
    };
    let retry_after = match error {
        Error::NoCapacity { retry_after, .. } => retry_after.map(|d| d.as_millis() as u64),
        _ => None,
    };
    json!({ "kind": kind, "retry_after_ms": retry_after, "detail": error.to_string() })
}

fn millis(options: &HashMap<String, String>, name: &str) -> Duration {
    Duration::from_millis(options.get(name).map_or(0, |v| v.parse().expect(name)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let operation = args.next().expect("an operation: check, create or hold");
    let mut options = HashMap::new();
    while let Some(flag) = args.next() {
        let name = flag.strip_prefix("--").expect("--flag value").to_owned();
        options.insert(name, args.next().expect("a value"));
    }
    // Short request timeouts, as the harness expects of every adapter: its
    // bounds are the wait plus about 2 s.
    let client = Client::builder(&options["url"])
        .request_timeout(Duration::from_secs(2))
        .build()
        .expect("a usable URL");
    let mut semaphore = client.semaphore(&options["semaphore"]);
    if let Some(limit) = options.get("limit") {
        semaphore = semaphore.limit(limit.parse().expect("limit"));
    }
    match operation.as_str() {
        "check" => emit("ready", json!({ "ready": client.ready().await })),
        "create" => match semaphore.create().await {
            Ok(_) => emit("created", json!({})),
            Err(e) => emit("error", error_event(&e)),
        },
        "hold" => {
            let mut acquire = semaphore.acquire().wait(millis(&options, "wait-ms"));
            if options.contains_key("ttl-ms") {
                acquire = acquire.ttl(millis(&options, "ttl-ms"));
            }
            let permit = match acquire.await {
                Ok(permit) => permit,
                Err(e) => return emit("error", error_event(&e)),
            };
            emit(
                "acquired",
                json!({ "id": permit.id(), "token": permit.fencing_token() }),
            );
            tokio::select! {
                reason = permit.lost() => {
                    emit("lost", json!({ "detail": format!("{reason:?}") }));
                }
                _ = tokio::signal::ctrl_c() => {
                    // Cancellation is the guard's drop, which releases in a
                    // task of its own: keep the runtime (and so that task)
                    // alive until the permit is gone, for at most 2 s.
                    let token = permit.fencing_token();
                    drop(permit);
                    for _ in 0..100 {
                        let status = semaphore.status().await;
                        if status.is_ok_and(|s| s.holders.iter().all(|h| h.fencing_token != token)) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    emit("cancelled", json!({}));
                }
                () = tokio::time::sleep(millis(&options, "hold-ms")) => {
                    emit("released", json!({}));
                    if let Err(e) = permit.release().await {
                        emit("error", error_event(&e));
                    }
                }
            }
        }
        other => panic!("unknown operation {other}"),
    }
}
