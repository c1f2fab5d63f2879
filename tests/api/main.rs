//! permitd's black-box test suite, as one test binary: every module below
//! starts permitd (in-process or as the real binary) through `helpers` and
//! talks to it over HTTP, except `store_contract`, which checks both stores
//! at the `SemaphoreStore` trait.
//!
//! Scenarios that must hold on both stores are written once and run as
//! `<module>::memory::<name>` and `<module>::redis::<name>` (and, for what
//! every Redis deployment must keep, `cluster::` and `sentinel::` on a real
//! cluster and Sentinel setup shared by the binary); each test has its own
//! Redis where it matters, so tests run in parallel. `failover` breaks
//! private clusters and Sentinel setups.
//! `TEST_LOG=1 cargo test` shows the logs of the apps under test.

mod access;
mod browser;
mod capacity;
mod client;
mod contract;
mod demo;
mod deployments;
mod docs;
mod drain;
mod failover;
mod faults;
mod helpers;
mod layout;
mod lifecycle;
mod openapi;
mod operations;
mod redis_store;
mod store_contract;
mod store_model;
mod tls;
mod waiting;
