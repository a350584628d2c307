//! What the back-server publishes: replies to reads, and dead letters. Both go out on the
//! publishing connection, never in the way of the consumer's acks: during a resource alarm
//! RabbitMQ blocks that connection, and the queue must keep draining (when the alarm is caused by
//! the queue's own backlog, draining it is the only way out).
//!
//! - A reply is handed to a task that publishes replies in order. While the connection is blocked
//!   the task waits, its queue fills, and further replies are dropped: their reads end in `504`
//!   at the front-server, as they would if the reply were lost on the way.
//! - A dead letter is published and confirmed by the dead-letter task, which then acks the
//!   original. One task, one dead letter at a time: dead letters keep their order, and lapin's
//!   confirms are only reliable when one task publishes on a confirm channel (see the
//!   front-server's publisher). Until that ack, the original must not be acked by a `multiple` ack of the messages after it
//!   (that would drop it before its copy is safe), so the consumer acks one by one while any dead
//!   letter is [pending](Outbox::dead_letters_pending). A dead letter that RabbitMQ does not take
//!   reports back, and the consumer rebuilds the link: the original is then redelivered.

use crate::admin::DEAD_LETTERED;
use kv_protocol::{DEAD_REASON_HEADER, Format, Reply};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// Replies waiting for the reply task; past this, replies are dropped rather than held.
const REPLY_QUEUE: usize = 1024;

/// A reply on its way: where to, its properties and its body.
struct Outgoing {
    to: ShortString,
    properties: BasicProperties,
    body: Vec<u8>,
}

/// How a dead letter ended, reported back to the consumer.
pub enum DeadLettered {
    /// The copy is in the dead-letter queue and the original is acked; `message` is the key its
    /// redelivery count was kept under, if it was counted.
    Done { message: Option<Arc<[u8]>> },
    /// RabbitMQ did not take the copy, or the link broke: the original stays unacked.
    Failed(String),
}

/// A message to move to the dead-letter queue.
struct DeadLetter {
    delivery: Delivery,
    properties: BasicProperties,
    kind: &'static str,
    message: Option<Arc<[u8]>>,
}

/// The publishing side of one link; see the module docs.
pub struct Outbox {
    replies: mpsc::Sender<Outgoing>,
    /// Unbounded, but each dead letter holds an unacked delivery: at most the prefetch window.
    dead_letters: mpsc::UnboundedSender<DeadLetter>,
    dead: Channel,
    pending: Arc<AtomicUsize>,
}

impl Outbox {
    /// Opens the reply and dead-letter channels on `connection` and starts the reply task. How
    /// each dead letter ends comes out of the returned receiver.
    pub async fn open(
        connection: &Connection,
        dead_queue: String,
    ) -> lapin::Result<(Self, mpsc::UnboundedReceiver<DeadLettered>)> {
        let reply_channel = connection.create_channel().await?;
        // Dead letters need a confirm-mode channel of their own: replies go out without
        // confirms, and lapin keeps every unawaited confirm until someone waits for it.
        let dead = connection.create_channel().await?;
        dead.confirm_select(ConfirmSelectOptions::default()).await?;
        let (replies, outgoing) = mpsc::channel(REPLY_QUEUE);
        tokio::spawn(publish_replies(reply_channel, outgoing));
        let (dead_letters, to_move) = mpsc::unbounded_channel();
        let (done, reports) = mpsc::unbounded_channel();
        let pending = Arc::<AtomicUsize>::default();
        tokio::spawn(move_dead_letters(
            dead.clone(),
            dead_queue.into(),
            to_move,
            pending.clone(),
            done,
        ));
        let outbox = Self {
            replies,
            dead_letters,
            dead,
            pending,
        };
        Ok((outbox, reports))
    }

    /// Sends `replies`, one per read in `format`'s order, to the message whose properties are
    /// `request`, unless the reply task is backed up (the publishing connection is blocked):
    /// then they are dropped.
    pub fn reply(&self, request: &BasicProperties, format: Format, replies: &[Reply]) {
        let Some(to) = request.reply_to().clone() else {
            tracing::warn!("a read without reply_to; nobody to answer");
            return;
        };
        let mut properties =
            BasicProperties::default().with_content_type("application/json".into());
        if let Some(id) = request.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        if let Some(kind) = format.message_type() {
            properties = properties.with_type(kind.into());
        }
        let outgoing = Outgoing {
            to,
            properties,
            body: format.reply_body(replies),
        };
        if self.replies.try_send(outgoing).is_err() {
            tracing::debug!(
                "dropping a reply: RabbitMQ does not take what the back-server publishes"
            );
        }
    }

    /// Moves `delivery` to the dead-letter queue with `reason` in a header, then acks it, on the
    /// dead-letter task; `kind` is the reason's metric label, `message` the key its redelivery
    /// count is kept under, if it was counted.
    pub fn dead_letter(
        &self,
        delivery: Delivery,
        kind: &'static str,
        reason: &str,
        message: Option<Arc<[u8]>>,
    ) {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            DEAD_REASON_HEADER.into(),
            AMQPValue::LongString(reason.into()),
        );
        let properties = kept_properties(&delivery.properties)
            .with_headers(headers)
            .with_delivery_mode(2);
        // Counted before the consumer acks anything else, so no `multiple` ack can cover it.
        self.pending.fetch_add(1, Ordering::SeqCst);
        let _ = self.dead_letters.send(DeadLetter {
            delivery,
            properties,
            kind,
            message,
        });
    }

    /// Whether a dead letter has not been acked yet: until then, ack one by one.
    pub fn dead_letters_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    pub async fn close(self, reason: &str) -> lapin::Result<()> {
        self.dead.close(200, reason.into()).await
    }
}

/// Moves dead letters one at a time, in order, until the link's outbox is dropped: publishes the
/// copy, waits for RabbitMQ's confirm, acks the original, and reports.
async fn move_dead_letters(
    channel: Channel,
    queue: ShortString,
    mut to_move: mpsc::UnboundedReceiver<DeadLetter>,
    pending: Arc<AtomicUsize>,
    done: mpsc::UnboundedSender<DeadLettered>,
) {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    while let Some(DeadLetter {
        delivery,
        properties,
        kind,
        message,
    }) = to_move.recv().await
    {
        let moved = async {
            let confirmation = channel
                .basic_publish(
                    "".into(),
                    queue.clone(),
                    mandatory,
                    &delivery.data,
                    properties,
                )
                .await?
                .await?;
            if !matches!(confirmation, Confirmation::Ack(None)) {
                return Ok(Err(format!(
                    "RabbitMQ did not take the dead-lettered copy: {confirmation:?}"
                )));
            }
            delivery.ack(BasicAckOptions::default()).await?;
            Ok::<_, lapin::Error>(Ok(()))
        };
        let report = match moved.await {
            Ok(Ok(())) => {
                metrics::counter!(DEAD_LETTERED, "reason" => kind).increment(1);
                // Only now may `multiple` acks cover the messages around it again. On failure the
                // count stays up for the rest of this link, which the consumer then rebuilds.
                pending.fetch_sub(1, Ordering::SeqCst);
                DeadLettered::Done { message }
            }
            Ok(Err(refused)) => DeadLettered::Failed(refused),
            Err(err) => DeadLettered::Failed(format!("dead-lettering failed: {err}")),
        };
        let failed = matches!(report, DeadLettered::Failed(_));
        let _ = done.send(report);
        if failed {
            // The link is done for; what is left stays unacked and comes back on the next one.
            break;
        }
    }
}

/// Publishes replies in the order they come, until the link's outbox is dropped.
async fn publish_replies(channel: Channel, mut outgoing: mpsc::Receiver<Outgoing>) {
    while let Some(Outgoing {
        to,
        properties,
        body,
    }) = outgoing.recv().await
    {
        // Not `mandatory`: RabbitMQ 3.10 both delivers and returns direct reply-to messages
        // published that way.
        let published = channel
            .basic_publish(
                "".into(),
                to,
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await;
        if let Err(err) = published {
            tracing::debug!(%err, "a reply could not be published");
        }
    }
    let _ = channel
        .close(200, "back-server done with this link".into())
        .await;
}

/// The properties a dead letter keeps: all but `expiration`, since a dead letter waits for a
/// person, not for a deadline (a read's expiration would make it vanish from the queue).
fn kept_properties(original: &BasicProperties) -> BasicProperties {
    let mut kept = BasicProperties::default();
    // lapin can set a property but not unset one: copy each but the one to leave out.
    macro_rules! keep {
        ($($get:ident => $set:ident),* $(,)?) => {
            $(if let Some(value) = original.$get() {
                kept = kept.$set(value.to_owned());
            })*
        };
    }
    keep!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
    );
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_every_property_but_the_expiration() {
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("m-1".into())
            .with_correlation_id("7".into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_expiration("5000".into())
            .with_app_id("tests".into());

        let kept = kept_properties(&original);

        assert_eq!(kept.expiration(), &None);
        assert_eq!(kept.message_id(), original.message_id());
        assert_eq!(kept.correlation_id(), original.correlation_id());
        assert_eq!(kept.reply_to(), original.reply_to());
        assert_eq!(kept.content_type(), original.content_type());
        assert_eq!(kept.app_id(), original.app_id());
    }
}
