//! What both servers run on, apart from the wire itself (`kv-protocol`): their shared settings and
//! the loader that layers them, the connection to RabbitMQ, logging and metrics, the answers of
//! their health probes, and the shutdown signal. A server's own crate holds only what makes it
//! that server.

mod amqp_tls;
mod lifecycle;
pub mod probe;
mod settings;
mod signal;
mod telemetry;

pub use amqp_tls::Nodes;
pub use lifecycle::{
    CLOSE_TIMEOUT, Connections, End, OpenError, SETUP_TIMEOUT, Session, Supervisor, redact,
};
pub use settings::{AmqpSettings, DEFAULT_AMQP_URL, DEFAULT_QUEUE_TYPE, parse_with_config_file};
pub use signal::shutdown_signal;
pub use telemetry::{
    LATENCY_BUCKETS, LogFormat, LogSettings, init_tracing, install_metrics, render_metrics,
    render_metrics_with,
};
