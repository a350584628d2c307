//! The back-server's settings; `back-server --help` prints them with their defaults.

use crate::reshard::ReshardArgs;
use clap::Parser;
use kv_protocol::Layout;
use kv_runtime::{AmqpSettings, LogSettings};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Consumes the key-value request queue and owns the SQLite database.
#[derive(Debug, Clone, Parser)]
#[command(name = "back-server", version)]
pub struct Config {
    /// Optional YAML file of settings (`name: value`); flags and environment variables win over it.
    #[arg(long, env = "CONFIG_FILE", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub amqp: AmqpSettings,

    #[command(flatten)]
    pub log: LogSettings,

    /// Without a command, the back-server serves its partition.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The partition this back-server serves, from 0 to KV_PARTITIONS - 1, with its own DB_PATH.
    /// A second back-server for the same partition, on the same database file, waits as a hot
    /// standby and takes over when the first stops.
    #[arg(long, env = "KV_PARTITION", value_name = "I", default_value_t = 0)]
    pub partition: u32,

    /// SQLite database file; created, with its table, if missing.
    #[arg(long, env = "DB_PATH", value_name = "FILE", default_value = "kv.db")]
    pub db_path: PathBuf,

    /// How many unacknowledged messages RabbitMQ may hand the back-server at once (AMQP reads 0
    /// as "unlimited", so at least 1).
    #[arg(long, env = "PREFETCH", value_name = "COUNT", default_value_t = 256,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// Most requests applied in one SQLite transaction. A batch is never waited for: it holds
    /// whatever has already arrived, so this only caps it (and PREFETCH caps it too).
    #[arg(long, env = "BATCH_SIZE", value_name = "COUNT", default_value_t = 128,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_size: u16,

    /// How many times a message may come back unfinished (each try crashed or stopped the
    /// back-server) before it is moved to `<KV_QUEUE>.dead` instead of being tried again.
    #[arg(
        long,
        env = "MAX_REDELIVERIES",
        value_name = "COUNT",
        default_value_t = 5
    )]
    pub max_redeliveries: u32,

    /// Address and port of the admin HTTP listener: `GET /health`, `GET /ready` and `GET /metrics`
    /// (port 0 picks a free one). Loopback by default: it is for the local orchestrator and
    /// scraper, not for the world.
    #[arg(
        long,
        env = "ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub admin_listen: SocketAddr,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Changes the number of partitions: moves every row to the database of its new partition
    /// and replaces the queues. Run it with the front-servers and back-servers stopped and the
    /// queues drained, and with the current KV_PARTITIONS.
    Reshard(ReshardArgs),
}

impl Config {
    /// The request queues of every partition.
    pub fn layout(&self) -> Layout {
        self.amqp.layout()
    }

    /// The request queue this back-server consumes.
    pub fn queue(&self) -> String {
        self.layout().queue(self.partition)
    }

    /// Checks what clap cannot: that the partition is one of the layout's.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.partition < self.amqp.partitions,
            "KV_PARTITION is {} but there are only {} partition(s) (KV_PARTITIONS): the \
             partitions are numbered from 0 to {}",
            self.partition,
            self.amqp.partitions,
            self.amqp.partitions - 1
        );
        Ok(())
    }
}
