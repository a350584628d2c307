//! The benchmark of the key-value system (`kv-bench`, run by `scripts/bench`), the probe of
//! RabbitMQ's own limits it measures the system against (`limits-probe`), and the chaos soak
//! (`kv-soak`, run by `scripts/soak`).

pub mod check;
pub mod load;
pub mod probe;
pub mod soak;
pub mod system;

/// The broker both binaries measure, named as the servers name it.
#[derive(Debug, Clone, clap::Args)]
pub struct Broker {
    /// The AMQP URL of RabbitMQ.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = kv_runtime::DEFAULT_AMQP_URL,
        hide_env_values = true
    )]
    pub amqp_url: String,
}
