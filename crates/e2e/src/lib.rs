//! The system tests' helpers, shared with the benchmark (`kv-bench`). The tests themselves are in
//! `tests/`: `tests/api` is one binary with a file per feature, and `tests/broker_restart.rs`
//! runs alone because it takes RabbitMQ away.
//!
//! - [`app`]: [`spawn_app`](app::spawn_app) starts a test system (the real servers, in process, on a queue and a
//!   database no other test uses) and returns a [`TestApp`](app::TestApp) with request helpers, direct looks
//!   into SQLite, and cleanup of its queues.
//! - [`server`]: the servers as real processes, for tests that kill, stop or starve them and for
//!   the benchmark: logs, signals, CPU time and memory.
//! - [`metrics`]: a server's `/metrics` page, read back sample by sample.
//! - [`queues`]: looks into RabbitMQ's queues and their deletion.
//! - [`broker_faults`]: a resource alarm and a frozen broker, always undone; connections closed
//!   by RabbitMQ.
//! - [`rng`]: a seeded generator, so that a seed replays a run.
//! - [`system`]: a scaled-out system of processes: partitions, several front-servers, standbys.
//! - [`tls`]: certificates, and a RabbitMQ node that speaks only AMQPS, for the TLS tests.
//! - [`writers`]: clients that keep writing (and reading back) while a test breaks something,
//!   and the audit after.
//!
//! Everything talks to the real RabbitMQ at `AMQP_URL` (default: the local broker).

pub mod app;
pub mod broker_faults;
pub mod metrics;
pub mod queues;
pub mod rng;
pub mod server;
pub mod system;
pub mod tls;
pub mod writers;

/// How long a test waits for a condition (a log line, a row, a queue's length) before it fails.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);
