//! permitd: a distributed counting semaphore served over HTTP.
//!
//! A client asks for a permit before some work and hands it back after; at most
//! `limit` units of a semaphore are held at once, across every process and
//! machine that asks. Permits are leases, so a crashed holder never leaks
//! capacity, and each carries a fencing token.
//!
//! A tour, top-down:
//! - [`config`]: flags and environment, and the choice of store;
//! - [`startup`]: `Application::build` and `run_until_stopped`;
//! - [`http`]: routes and handlers, turning JSON into domain values, and the
//!   layers around them: request ids and spans, bearer tokens, time and size
//!   bounds; and the OpenAPI document generated from them (`http::openapi`,
//!   Swagger UI at `/docs/`);
//! - [`telemetry`]: log output and the Prometheus metrics (names, meanings);
//! - [`error`]: the one error type, rendered as problem+json;
//! - [`semaphore`]: validated domain values and acquire outcomes;
//! - [`store`]: the `SemaphoreStore` trait, with the embedded memory store and
//!   the Redis store (Lua scripts in `store/scripts/`), and `Wakeups`, how a
//!   store tells a waiting acquire to try again;
//! - [`waiting`]: the long-poll acquire (`wait_ms`): FIFO tickets, wakes,
//!   timers, and withdrawal when the client goes away;
//! - [`demo`]: the fan-out scenario permitd grew out of, on top of the store
//!   trait, served as `GET /demo` and run by `permitd demo`.

// From the bottom up: a module uses only the modules listed above it.
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod secret;
pub mod semaphore;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod waiting;
