//! Queue names and declarations. Every server calls [`declare_topology`] after every connect with
//! the same [`Layout`], since RabbitMQ refuses a redeclaration whose arguments differ, and a server
//! must not route keys by a partition count the queues were not made for.

use crate::layout::Layout;
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ErrorKind};

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

/// Why the queues could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// RabbitMQ could not be asked (the link failed): a new connection may do better.
    #[error(transparent)]
    Link(#[from] lapin::Error),
    /// The queues exist for another number of partitions. Routing keys by this server's number
    /// would send them to partitions that do not hold them.
    #[error(
        "the queues of '{queue}' were created for {found} partition(s), but KV_PARTITIONS is \
         {configured}: set KV_PARTITIONS={found}, or change the layout with `back-server reshard` \
         (see the README, \"Changing the number of partitions\")"
    )]
    Partitions {
        queue: String,
        found: u32,
        configured: u32,
    },
    /// A queue exists with other arguments, such as another type.
    #[error(
        "queue '{queue}' exists with other arguments than this server's (KV_QUEUE_TYPE={queue_type}): \
         {detail}. Set KV_QUEUE_TYPE to the type the queue has, or move to the other type: stop \
         the front-servers, let the back-servers drain the queue, delete it and start again"
    )]
    Inequivalent {
        queue: String,
        queue_type: String,
        /// RabbitMQ's own words.
        detail: String,
    },
}

impl TopologyError {
    /// Whether reconnecting could cure it: only a failed link can; the others need a person.
    pub fn is_link(&self) -> bool {
        matches!(self, Self::Link(_))
    }
}

/// Checks that the queues of `layout` are missing or were made for its number of partitions, then
/// declares every partition's durable request queue and dead-letter queue (idempotent).
pub async fn declare_topology(
    connection: &Connection,
    layout: &Layout,
) -> Result<(), TopologyError> {
    if let Some(found) = existing_partitions(connection, layout.base()).await?
        && found != layout.partitions()
    {
        return Err(TopologyError::Partitions {
            queue: layout.base().to_owned(),
            found,
            configured: layout.partitions(),
        });
    }
    let channel = connection.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut kind = FieldTable::default();
    kind.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(layout.queue_type().as_str().into()),
    );
    let mut requests = kind.clone();
    // One consumer at a time keeps the queue's order, which read-your-writes depends on.
    requests.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    // Last partition first, each dead-letter queue before its request queue, so that partition
    // 0's request queue, the first the layout check looks for, exists only once all do: a
    // server starting beside one that is still declaring sees the whole layout or none of it.
    let queues: Vec<String> = layout.queues().collect();
    for queue in queues.into_iter().rev() {
        for (name, arguments) in [
            (dead_letter_queue(&queue), &kind),
            (queue.clone(), &requests),
        ] {
            if let Err(err) = channel
                .queue_declare(name.as_str().into(), durable, arguments.clone())
                .await
            {
                return Err(match refusal(&err, AMQPSoftError::PRECONDITIONFAILED) {
                    Some(detail) => TopologyError::Inequivalent {
                        queue: name,
                        queue_type: layout.queue_type().to_string(),
                        detail,
                    },
                    None => err.into(),
                });
            }
        }
    }
    channel.close(200, "declared".into()).await?;
    Ok(())
}

/// How many partitions the queues named after `base` were created for, or `None` if there are
/// none: `base` itself is the one queue of a single partition, `base.0`, `base.1`… are the
/// queues of several.
pub async fn existing_partitions(
    connection: &Connection,
    base: &str,
) -> Result<Option<u32>, TopologyError> {
    if exists(connection, base).await? {
        return Ok(Some(1));
    }
    let mut count = 0;
    while exists(connection, &format!("{base}.{count}")).await? {
        count += 1;
    }
    Ok((count > 0).then_some(count))
}

/// Whether `queue` exists. A passive declare of a missing queue closes its channel, so each
/// question gets a channel of its own.
async fn exists(connection: &Connection, queue: &str) -> lapin::Result<bool> {
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            channel.close(200, "probed".into()).await?;
            Ok(true)
        }
        Err(err) if refusal(&err, AMQPSoftError::NOTFOUND).is_some() => Ok(false),
        Err(err) => Err(err),
    }
}

/// RabbitMQ's explanation, if `err` is its refusal of kind `kind` (which closed the channel).
fn refusal(err: &lapin::Error, kind: AMQPSoftError) -> Option<String> {
    match err.kind() {
        ErrorKind::ProtocolError(amqp) if *amqp.kind() == AMQPErrorKind::Soft(kind) => {
            Some(amqp.get_message().to_string())
        }
        _ => None,
    }
}
