//! `back-server`: consumes the request queue, applies writes to SQLite and answers reads.
//!
//! [`startup`] wires the process and runs it until shutdown; [`consumer`] is its session on each
//! RabbitMQ connection, which `kv_runtime`'s supervisor opens, runs and reopens (the reconnects
//! happen there, not here): it turns deliveries into database work, replies and acks. [`store`]
//! owns the SQLite connection on a thread of its own, and [`admin`] serves `/health`, `/ready`
//! and `/metrics` on a listener of its own. [`reshard`] is the `reshard` command, which changes
//! the number of partitions.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod outbox;
pub mod reshard;
pub mod startup;
pub mod store;

pub use config::Config;
pub use startup::Application;
