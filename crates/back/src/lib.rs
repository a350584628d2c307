//! `back-server`: consumes the request queue, applies writes to SQLite and answers reads.
//!
//! [`startup`] owns the process's life (connect, reconnect, shut down), [`consumer`] turns
//! deliveries into database work and acks, and [`store`] owns the SQLite connection on a thread
//! of its own. [`admin`] serves `/health`, `/ready` and `/metrics` on a listener of its own.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod startup;
pub mod store;

pub use config::Config;
pub use startup::Application;
