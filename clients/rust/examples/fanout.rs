//! The fan-out the project grew out of, on the Rust client: 5 calls to
//! permitd's built-in slow upstream (`/demo/upstream`), at most `limit` at
//! once, each under a permit of the semaphore `fanout-example`.
//!
//! ```text
//! cargo run -p permitd-client --example fanout -- http://127.0.0.1:8080 1
//! ```
//!
//! With limit 1 the five calls take about 5 × 100 ms; with limit 5, about
//! 100 ms.

use std::time::{Duration, Instant};

use permitd_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let limit: u32 = args.next().map_or(Ok(1), |l| l.parse())?;
    let client = Client::new(&url)?;
    // The demo's upstream is plain HTTP on the same server; any HTTP client
    // would do, and reqwest is what permitd-client uses already.
    let http = reqwest::Client::new();
    let upstream = format!("{url}/demo/upstream?delay_ms=100");
    let started = Instant::now();
    let calls = (1..=5).map(|i| {
        let (client, http, upstream) = (client.clone(), http.clone(), upstream.clone());
        tokio::spawn(async move {
            let permit = client
                .semaphore("fanout-example")
                .limit(limit)
                .acquire()
                .ttl(Duration::from_secs(10))
                .wait(Duration::from_secs(30))
                .holder(format!("call-{i}"))
                .await?;
            let status = http.get(&upstream).send().await?.status();
            permit.release().await?;
            println!(
                "Handled api request №{i} with status code {}",
                status.as_u16()
            );
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await?.map_err(|e| e.to_string())?;
    }
    println!(
        "takes ~{:.4} seconds to handle 5 with {limit} bounded limit",
        started.elapsed().as_secs_f64()
    );
    // The example's own semaphore, gone again (an open or admin server).
    let _ = client.semaphore("fanout-example").delete().await;
    Ok(())
}
