//! The back-server's admin HTTP listener (`ADMIN_LISTEN`): `GET /health`, `GET /ready` and
//! `GET /metrics`, with the front-server's answers ([`kv_runtime::probe`]).
//!
//! Ready means the back-server is doing its job: connected to RabbitMQ, consuming the request
//! queue, and its database took the last write it was given. The consume loop and the store's
//! retry loop report those three facts to a [`Status`]; the probe only reads it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use kv_runtime::probe::{self, Probe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The back-server's series, named once here.
pub const BATCH_SIZE: &str = "kv_batch_size";
pub const COMMIT_DURATION: &str = "kv_commit_duration_seconds";
pub const MESSAGES_APPLIED: &str = "kv_messages_applied_total";
pub const DEAD_LETTERED: &str = "kv_messages_dead_lettered_total";
pub const ROWS: &str = "kv_rows";

/// Installs the process's metrics recorder (once) and names and explains the back-server's
/// series (the `# HELP` lines of `/metrics`).
pub fn install_metrics() {
    kv_runtime::install_metrics();
    metrics::describe_histogram!(BATCH_SIZE, "Requests applied per SQLite transaction");
    metrics::describe_histogram!(
        COMMIT_DURATION,
        metrics::Unit::Seconds,
        "Time to apply a batch in one SQLite transaction, its commit (fsync) included"
    );
    metrics::describe_counter!(
        MESSAGES_APPLIED,
        "Requests applied to SQLite (committed), by kind: put or get"
    );
    metrics::describe_counter!(
        DEAD_LETTERED,
        "Messages moved to the dead-letter queue, by reason: unparseable, misrouted (a key of \
         another partition) or redelivered"
    );
    metrics::describe_gauge!(ROWS, "Rows in the key-value table");
    // Present from the start at 0, so that `rate()` and `increase()` see the first event too.
    for kind in ["put", "get"] {
        metrics::counter!(MESSAGES_APPLIED, "kind" => kind).increment(0);
    }
    for reason in ["unparseable", "misrouted", "redelivered"] {
        metrics::counter!(DEAD_LETTERED, "reason" => reason).increment(0);
    }
}

/// What `GET /ready` reports, kept up to date by the consume loop.
#[derive(Debug, Default)]
pub struct Status {
    connected: AtomicBool,
    consuming: AtomicBool,
    /// Why the database refused the last write, while it does.
    refused: Mutex<Option<String>>,
}

impl Status {
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    /// The database refused a write (disk full, file not writable…), or took one again (`None`).
    pub fn set_refused(&self, reason: Option<String>) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// `Ok` while ready, else what is missing.
    pub fn ready(&self) -> Result<(), String> {
        if !self.connected.load(Ordering::Relaxed) {
            return Err("no working connection to RabbitMQ".into());
        }
        if !self.consuming.load(Ordering::Relaxed) {
            return Err("not consuming the request queue".into());
        }
        match &*self.refused.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(format!("the database refuses writes: {reason}")),
            None => Ok(()),
        }
    }
}

pub fn router(status: Arc<Status>) -> Router {
    Router::new()
        .route("/health", get(probe::health))
        .route("/ready", get(ready))
        .route("/metrics", get(kv_runtime::render_metrics))
        .with_state(status)
}

async fn ready(State(status): State<Arc<Status>>) -> (StatusCode, Json<Probe>) {
    probe::readiness(status.ready())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_a_connection_a_consumer_and_a_database_that_takes_writes() {
        let status = Status::default();
        assert_eq!(
            status.ready(),
            Err("no working connection to RabbitMQ".into())
        );
        status.set_connected(true);
        assert_eq!(
            status.ready(),
            Err("not consuming the request queue".into())
        );
        status.set_consuming(true);
        assert_eq!(status.ready(), Ok(()));
        status.set_refused(Some("disk I/O error".into()));
        assert_eq!(
            status.ready(),
            Err("the database refuses writes: disk I/O error".into())
        );
        status.set_refused(None);
        assert_eq!(status.ready(), Ok(()));
    }
}
