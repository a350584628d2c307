//! The front-server's settings; `front-server --help` prints them with their defaults.

use clap::Parser;
use kv_runtime::{AmqpSettings, LogSettings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// HTTP front of the key-value store: validates requests and passes them through RabbitMQ.
#[derive(Debug, Clone, Parser)]
#[command(name = "front-server", version)]
pub struct Config {
    /// Optional YAML file of settings (`name: value`); flags and environment variables win over it.
    #[arg(long, env = "CONFIG_FILE", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub amqp: AmqpSettings,

    #[command(flatten)]
    pub log: LogSettings,

    /// Address and port the HTTP server listens on (port 0 picks a free one).
    #[arg(
        long = "listen",
        env = "FRONT_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Deadline for RabbitMQ's confirm of a write and the back-server's reply to a read, in ms.
    #[arg(long, env = "RPC_TIMEOUT_MS", value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub rpc_timeout_ms: u64,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "BODY_LIMIT_BYTES", value_name = "BYTES", default_value_t = 64 * 1024)]
    pub body_limit_bytes: usize,

    /// Time a client has to send a request's headers, in ms, counted from when the server starts
    /// waiting for them; it also ends idle keep-alive connections. Slower connections are closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub header_read_timeout_ms: u64,

    /// Time a client has to send a POST's whole body, in ms, once its headers are in; slower
    /// ones get 408 and the connection is closed.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub body_read_timeout_ms: u64,

    /// Most HTTP connections served at once; further clients wait in the kernel's accept queue
    /// until one closes. Keep it below the open-file limit (`ulimit -n`).
    #[arg(long, env = "MAX_CONNECTIONS", value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most writes and reads in flight at once; a request beyond it waits for a slot within its
    /// deadline (RPC_TIMEOUT_MS), then gets 503. Bounds what this server holds while RabbitMQ is
    /// slow or refuses messages.
    #[arg(long, env = "MAX_IN_FLIGHT", value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Most messages of writes awaiting RabbitMQ's confirm, and of reads awaiting their reply,
    /// per partition (1 to 64). Requests that arrive while their partition has that many out wait
    /// and then go out together in one message: the lower, the fuller the messages under load
    /// and the less RabbitMQ and the back-server spend per request; a request never waits when
    /// its partition has a place free.
    #[arg(long, env = "MESSAGES_IN_FLIGHT", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub messages_in_flight: u32,

    /// File of API tokens, one `<scope> <token>` per line (scope `read` or `write`; `#` starts a
    /// comment line). When set, `/api` requires `Authorization: Bearer <token>`: `read` tokens
    /// may GET, `write` tokens GET and POST. Re-read on SIGHUP. Unset: `/api` is open to anyone
    /// who can reach the server.
    #[arg(long, env = "API_TOKENS_FILE", value_name = "FILE")]
    pub api_tokens_file: Option<PathBuf>,

    /// PEM file of the server's certificate (and its chain) for HTTPS. With TLS_KEY_FILE the
    /// server speaks HTTPS only; set both or neither.
    #[arg(long, env = "TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM file of the private key of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
}

impl Config {
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
}
