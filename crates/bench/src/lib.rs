//! The benchmark of the key-value system (`kv-bench`, run by `scripts/bench`, with its scale-out
//! matrix over partitions, queue types and a cluster in [`scale`]), the probe of RabbitMQ's own
//! limits it measures the system against (`limits-probe`), and the chaos soak (`kv-soak`, run by
//! `scripts/soak`).

pub mod check;
pub mod load;
pub mod probe;
pub mod scale;
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

/// Where the servers' release binaries are, for both binaries that run them.
#[derive(Debug, Clone, clap::Args)]
pub struct BinDir {
    /// Where front-server and back-server are; by default, next to this binary.
    #[arg(long)]
    pub bin_dir: Option<std::path::PathBuf>,
}

impl BinDir {
    /// The directory given, or this binary's own.
    pub fn resolve(&self) -> anyhow::Result<std::path::PathBuf> {
        match &self.bin_dir {
            Some(dir) => Ok(dir.clone()),
            None => {
                let exe = std::env::current_exe()?;
                let dir = exe
                    .parent()
                    .ok_or_else(|| anyhow::anyhow!("{} has no directory", exe.display()))?;
                Ok(dir.to_owned())
            }
        }
    }
}
