//! Queue names and declarations. Both servers call [`declare_topology`] after every connect with
//! the same arguments, since RabbitMQ refuses a redeclaration whose arguments differ.

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

/// RabbitMQ's pseudo-queue for direct reply-to; see the crate docs for why we use it.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Header carrying the id of the HTTP request a message comes from, so that both servers' log
/// lines about it can be found together.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Header the back-server sets on a dead-lettered message: why it could not be processed.
pub const DEAD_REASON_HEADER: &str = "x-kv-dead-reason";

/// The queue that keeps the messages of `queue` that the back-server could not process.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declares the durable request queue and its dead-letter queue (idempotent).
pub async fn declare_topology(channel: &Channel, queue: &str) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut arguments = FieldTable::default();
    // One consumer at a time keeps the queue's order, which read-your-writes depends on.
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await?;
    channel
        .queue_declare(
            dead_letter_queue(queue).into(),
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(())
}
