//! Why a call through the broker did not succeed. The broker client says what happened; which
//! HTTP status each case gets is decided with the other HTTP errors, in `crate::error`.

/// Why a call through the broker did not succeed. Every message tells the client whether its
/// request was processed, since that decides whether retrying is safe.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No working link to RabbitMQ right now, or the link went away mid-request with nothing
    /// more to say about it (a publisher task or a reply consumer that ended with its link).
    #[error("RabbitMQ is unavailable, the request was not processed: {0}")]
    Unavailable(&'static str),
    /// The link broke under the request: a publish or a confirm failed.
    #[error("RabbitMQ is unavailable, the request was not processed: {0}")]
    LinkFailed(#[source] lapin::Error),
    /// RabbitMQ nacked the write.
    #[error("RabbitMQ refused the write, it was not stored: nacked")]
    Nacked,
    /// RabbitMQ could not route the write: no queue of that name (someone deleted it).
    #[error(
        "RabbitMQ refused the write, it was not stored: no queue named '{queue}' to route it to"
    )]
    Returned { queue: String },
    /// RabbitMQ did not confirm the write within the deadline, in milliseconds.
    #[error("RabbitMQ did not confirm the write within {0} ms; retry it")]
    Unconfirmed(u64),
    /// The back-server did not answer a read within the deadline, in milliseconds.
    #[error("No reply from the back-server within {0} ms")]
    NoReply(u64),
}
