//! The fan-out demo: the scenario permitd grew out of, as a library function.
//!
//! `requests` tasks start at once. Each acquires a permit of a fresh demo
//! semaphore through the `SemaphoreStore` trait (so through Redis whenever
//! the API uses Redis), waiting in line as `POST …/permits` with `wait_ms`
//! does ([`crate::waiting`]), calls an upstream URL while holding it, and
//! releases it; the semaphore is deleted at the end. The report says how long that took
//! against the ideal `ceil(requests / limit) × delay`, and how many calls were
//! in flight at once: measured with a counter around the calls, never derived
//! from the limit.
//!
//! One file per part: `bounds` (ceilings, defaults, configured bounds),
//! `request` (a validated run and the host allow-list), `outbound` (the HTTP
//! clients and the one call made under a permit), `run` (the fan-out),
//! `report` (its results) and [`page`] (a report as HTML with an SVG
//! timeline). `crate::http::demo` serves it as `GET /demo`, and
//! `crate::cli::demo` runs it from the terminal.

mod bounds;
mod outbound;
pub mod page;
mod report;
mod request;
mod run;

pub use bounds::{
    DEFAULT_DELAY_MS, DEFAULT_LIMIT, DEFAULT_REQUESTS, DemoBounds, MAX_DELAY_MS, MAX_IDEAL_MS,
    MAX_LIMIT, MAX_REQUESTS,
};
pub use outbound::{CALL_TIMEOUT, DemoConfig, MAX_CONCURRENT_RUNS};
pub use report::{DemoReport, RequestResult, headline};
pub use request::{AllowedHosts, DemoRequest, Target};
pub use run::{DEADLINE, DemoError, run};
