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
    /// RabbitMQ blocks publishing because of a resource alarm (its reason given): the request
    /// was not sent.
    #[error(
        "RabbitMQ refuses new messages while a resource alarm is on ({0}), the request was not \
         processed; retry it later"
    )]
    Blocked(String),
    /// As many requests as the front-server takes at once (`MAX_IN_FLIGHT`, given) were in
    /// flight until the deadline: the request was not sent.
    #[error("Too many requests in flight (at most {0}), the request was not processed; retry it")]
    Busy(usize),
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
    /// The write was sent, then RabbitMQ began blocking publishers (a resource alarm, its reason
    /// given) and did not confirm it within the deadline, in milliseconds. It may be applied
    /// once the alarm clears.
    #[error(
        "RabbitMQ did not confirm the write within {ms} ms: a resource alarm ({alarm}) began \
         after it was sent; the outcome is unknown, it may still be applied when the alarm clears"
    )]
    UnconfirmedInAlarm { ms: u64, alarm: String },
    /// The back-server did not answer a read within the deadline, in milliseconds.
    #[error("No reply from the back-server within {0} ms")]
    NoReply(u64),
}
