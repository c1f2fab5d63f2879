//! permitd: a distributed counting semaphore served over HTTP.
//!
//! A client asks for a permit before some work and hands it back after; at most
//! `limit` units of a semaphore are held at once, across every process and
//! machine that asks. Permits are leases, so a crashed holder never leaks
//! capacity, and each carries a fencing token.
//!
//! A tour, top-down (each module uses only those below it):
//! - [`cli`]: the binary's commands (`serve`, `demo`, `healthcheck`, `run`,
//!   `openapi`), each a small module;
//! - [`startup`]: `Application::build` and `run_until_stopped`;
//! - [`config`]: flags and environment, assembled into each part's settings;
//! - [`http`]: the routes, declared once for the router and the OpenAPI
//!   document; handlers turning JSON into domain values; the layers around
//!   them (request ids and spans, bearer tokens, per-route time budgets);
//!   Swagger UI at `/docs/`;
//! - [`error`]: the one error type and its problem+json body;
//! - [`demo`]: the fan-out scenario permitd grew out of, on top of the store
//!   trait, served as `GET /demo` and run by `permitd demo`;
//! - [`waiting`]: the long-poll acquire (`wait_ms`): FIFO tickets, wakes,
//!   timers, and withdrawal when the client goes away;
//! - [`store`]: the `SemaphoreStore` trait, with the embedded memory store and
//!   the Redis store (connections, Lua scripts, the wake subscriber), and
//!   `Wakeups`, how a store tells a waiting acquire to try again;
//! - [`semaphore`]: validated domain values and acquire outcomes;
//! - [`telemetry`]: log output and the Prometheus metric names;
//! - [`secret`]: values never logged (passwords, tokens) and URL redaction.

// Top-down, as the tour: each module uses only the modules after it. (One
// per paragraph, so formatting keeps this order.)
pub mod cli;

pub mod startup;

pub mod config;

pub mod http;

pub mod error;

pub mod demo;

pub mod waiting;

pub mod store;

pub mod semaphore;

pub mod telemetry;

pub mod secret;
