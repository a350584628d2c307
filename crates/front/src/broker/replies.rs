//! Reads waiting for their reply, matched by correlation id. AMQP has no request/response: a read
//! is a message out and a reply is a message back, and this map is what pairs them. A reply that
//! arrives after its read gave up finds nobody and is dropped.

use super::BrokerError;
use kv_protocol::Reply;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;

/// Reads waiting for their reply, by correlation id.
///
/// A plain mutex is right here: it is held for one map operation, never across an await.
/// Correlation ids are a counter, unique for the life of the process.
#[derive(Default)]
pub(super) struct PendingReplies {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
}

impl PendingReplies {
    /// Registers a read; publish it with the returned [`Waiting::id`] as its correlation id.
    pub(super) fn register(&self) -> Waiting<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(id, sender);
        Waiting {
            replies: self,
            id,
            receiver,
        }
    }

    /// Hands a reply to its waiting request; a reply nobody waits for any more (its request
    /// timed out or was abandoned), or whose correlation id is not one of ours, is dropped.
    pub(super) fn complete(&self, correlation_id: &str, reply: Reply) {
        let sender = correlation_id
            .parse()
            .ok()
            .and_then(|id| self.lock().remove(&id));
        match sender {
            Some(sender) => {
                let _ = sender.send(reply);
            }
            None => tracing::debug!(correlation_id, "dropping a reply nobody waits for"),
        }
    }

    /// Ends every waiting read with "unavailable": their replies can no longer arrive.
    pub(super) fn abandon_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One registered read; deregisters itself when dropped, whether it got its reply or not.
pub(super) struct Waiting<'a> {
    replies: &'a PendingReplies,
    pub(super) id: u64,
    receiver: oneshot::Receiver<Reply>,
}

impl Waiting<'_> {
    /// The reply, once it comes; an error if the link dropped first.
    pub(super) async fn reply(&mut self) -> Result<Reply, BrokerError> {
        (&mut self.receiver)
            .await
            .map_err(|_| BrokerError::Unavailable("the RabbitMQ link dropped before the reply"))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.replies.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(value: f64) -> Reply {
        Reply::Found { value }
    }

    #[tokio::test]
    async fn each_reply_reaches_the_read_with_its_correlation_id() {
        let replies = PendingReplies::default();
        let mut first = replies.register();
        let mut second = replies.register();
        assert_ne!(first.id, second.id);

        replies.complete(&second.id.to_string(), found(2.0));
        replies.complete(&first.id.to_string(), Reply::NotFound);

        assert_eq!(second.reply().await.unwrap(), found(2.0));
        assert_eq!(first.reply().await.unwrap(), Reply::NotFound);
    }

    #[tokio::test]
    async fn a_reply_for_an_unknown_or_foreign_id_is_dropped_and_disturbs_nobody() {
        let replies = PendingReplies::default();
        let mut waiting = replies.register();

        replies.complete(&(waiting.id + 1000).to_string(), found(1.0));
        replies.complete("not-a-number", found(1.0));
        replies.complete(&waiting.id.to_string(), found(3.0));

        assert_eq!(waiting.reply().await.unwrap(), found(3.0));
    }

    #[tokio::test]
    async fn a_late_reply_finds_nobody_once_its_read_has_given_up() {
        let replies = PendingReplies::default();
        let id = replies.register().id;
        assert!(replies.lock().is_empty(), "a dropped read deregisters");

        replies.complete(&id.to_string(), found(1.0));
        assert!(replies.lock().is_empty());
    }

    #[tokio::test]
    async fn a_second_reply_with_the_same_id_is_dropped() {
        let replies = PendingReplies::default();
        let mut waiting = replies.register();
        replies.complete(&waiting.id.to_string(), found(1.0));
        replies.complete(&waiting.id.to_string(), found(2.0));
        assert_eq!(waiting.reply().await.unwrap(), found(1.0));
    }

    #[tokio::test]
    async fn abandoning_all_ends_every_waiting_read_as_unavailable() {
        let replies = PendingReplies::default();
        let mut first = replies.register();
        let mut second = replies.register();

        replies.abandon_all();

        for waiting in [&mut first, &mut second] {
            let err = waiting.reply().await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "RabbitMQ is unavailable, the request was not processed: \
                 the RabbitMQ link dropped before the reply"
            );
        }
    }
}
