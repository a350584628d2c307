//! Reads waiting for their reply, matched by correlation id. AMQP has no request/response: a
//! message of reads goes out and one reply comes back, and this map is what pairs them, then hands
//! each read its own answer. A reply that arrives after its reads gave up finds nobody and is
//! dropped.

use super::coalesce::Out;
use kv_protocol::Reply;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a read is told: the back-server's reply, or the link failure that kept its message from
/// going out. A read whose sender is dropped unanswered lost its link before the reply came.
pub(super) type Answer = Result<Reply, lapin::Error>;

/// Messages of reads waiting for their reply, by correlation id.
///
/// A plain mutex is right here: it is held for one map operation, never across an await.
/// Correlation ids are a counter, unique for the life of the process; as they grow with time, so
/// do the instants after which their reads have all given up, and the map, ordered by id, drops
/// those from its front.
#[derive(Default)]
pub(super) struct PendingReplies {
    next_id: AtomicU64,
    waiting: Mutex<BTreeMap<u64, Pending>>,
}

/// Past a message's deadline, how long it stays before it is forgotten. Its reads' own deadlines
/// began before it went out, so they end first; but they end on the same timer tick, and a read
/// whose answer is dropped just before its own timer fires would take it for a broken link.
const FORGET_AFTER: Duration = Duration::from_secs(1);

/// The reads of one message, in the order of the message, and when they will all have given up.
struct Pending {
    answers: Vec<oneshot::Sender<Answer>>,
    given_up_at: Instant,
    /// The message's place among its partition's messages out, given back with the entry.
    _out: Out,
}

impl PendingReplies {
    /// Registers the reads of a message, which give up after `deadline` at the latest, and its
    /// place `out`; publish it with the returned id as its correlation id. Forgets the messages
    /// whose reads have all given up, whose replies never came, a moment after their deadline
    /// ([`FORGET_AFTER`]).
    pub(super) fn register(
        &self,
        answers: Vec<oneshot::Sender<Answer>>,
        deadline: Duration,
        out: Out,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut waiting = self.lock();
        while let Some(entry) = waiting.first_entry()
            && entry.get().given_up_at + FORGET_AFTER <= now
        {
            entry.remove();
        }
        let pending = Pending {
            answers,
            given_up_at: now + deadline,
            _out: out,
        };
        waiting.insert(id, pending);
        id
    }

    /// Hands each read of the message with `correlation_id` its reply, in order. A reply nobody
    /// waits for any more (its reads timed out, or it was answered already), or whose correlation
    /// id is not one of ours, is dropped; so is one with another number of replies than the
    /// message had reads, since it cannot be told which answer is whose.
    pub(super) fn complete(&self, correlation_id: &str, replies: Vec<Reply>) {
        let pending = correlation_id
            .parse()
            .ok()
            .and_then(|id| self.lock().remove(&id));
        let Some(Pending { answers, .. }) = pending else {
            tracing::debug!(correlation_id, "dropping a reply nobody waits for");
            return;
        };
        if answers.len() != replies.len() {
            tracing::warn!(
                correlation_id,
                reads = answers.len(),
                replies = replies.len(),
                "dropping a reply that does not answer each read of its message"
            );
            return;
        }
        for (answer, reply) in answers.into_iter().zip(replies) {
            let _ = answer.send(Ok(reply));
        }
    }

    /// Tells the reads of a message that could not be published why.
    pub(super) fn fail(&self, correlation_id: u64, err: lapin::Error) {
        if let Some(pending) = self.lock().remove(&correlation_id) {
            for answer in pending.answers {
                let _ = answer.send(Err(err.clone()));
            }
        }
    }

    /// Ends every waiting read with "unavailable": their replies can no longer arrive.
    pub(super) fn abandon_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Pending>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::super::coalesce::{Coalescer, Partitioned};
    use super::*;
    use tokio::sync::mpsc;

    const DEADLINE: Duration = Duration::from_secs(5);

    fn found(value: f64) -> Reply {
        Reply::Found { value }
    }

    /// Registers a message of `n` reads; returns its id and what each read will be told.
    fn register(replies: &PendingReplies, n: usize) -> (u64, Vec<oneshot::Receiver<Answer>>) {
        let (answers, receivers) = (0..n).map(|_| oneshot::channel()).unzip();
        (
            replies.register(answers, DEADLINE, Out::unheld()),
            receivers,
        )
    }

    async fn reply(receiver: oneshot::Receiver<Answer>) -> Reply {
        receiver.await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn each_read_of_a_message_gets_its_own_answer_by_correlation_id() {
        let replies = PendingReplies::default();
        let (first, mut first_reads) = register(&replies, 2);
        let (second, mut second_reads) = register(&replies, 1);
        assert_ne!(first, second);

        replies.complete(&second.to_string(), vec![found(3.0)]);
        replies.complete(&first.to_string(), vec![found(1.0), Reply::NotFound]);

        assert_eq!(reply(second_reads.remove(0)).await, found(3.0));
        assert_eq!(reply(first_reads.remove(0)).await, found(1.0));
        assert_eq!(reply(first_reads.remove(0)).await, Reply::NotFound);
    }

    #[tokio::test]
    async fn a_reply_for_an_unknown_or_foreign_id_is_dropped_and_disturbs_nobody() {
        let replies = PendingReplies::default();
        let (id, mut reads) = register(&replies, 1);

        replies.complete(&(id + 1000).to_string(), vec![found(1.0)]);
        replies.complete("not-a-number", vec![found(1.0)]);
        replies.complete(&id.to_string(), vec![found(3.0)]);

        assert_eq!(reply(reads.remove(0)).await, found(3.0));
    }

    #[tokio::test]
    async fn a_second_reply_with_the_same_id_is_dropped() {
        let replies = PendingReplies::default();
        let (id, mut reads) = register(&replies, 1);
        replies.complete(&id.to_string(), vec![found(1.0)]);
        replies.complete(&id.to_string(), vec![found(2.0)]);
        assert_eq!(reply(reads.remove(0)).await, found(1.0));
    }

    #[tokio::test]
    async fn a_reply_with_another_number_of_answers_answers_nobody() {
        let replies = PendingReplies::default();
        let (id, reads) = register(&replies, 2);
        replies.complete(&id.to_string(), vec![found(1.0)]);
        for read in reads {
            assert!(read.await.is_err(), "no read may take another's answer");
        }
    }

    #[tokio::test]
    async fn messages_whose_reads_have_all_given_up_are_forgotten() {
        let replies = PendingReplies::default();
        let (answer, _read) = oneshot::channel();
        let old = replies.register(vec![answer], Duration::ZERO, Out::unheld());
        let (kept, _reads) = register(&replies, 1);
        assert_eq!(
            replies.lock().len(),
            2,
            "not forgotten on its deadline's tick"
        );

        tokio::time::sleep(FORGET_AFTER).await;
        let (new, _reads) = register(&replies, 1);
        let waiting: Vec<u64> = replies.lock().keys().copied().collect();
        assert_eq!(waiting, [kept, new], "{old} was forgotten");
    }

    #[tokio::test]
    async fn a_message_gives_its_place_back_once_answered_or_failed() {
        let mut coalescer = Coalescer::new(1, 1);
        let replies = PendingReplies::default();
        let mut send = |deadline| {
            let (_, mut incoming) = mpsc::channel(1);
            coalescer.take(Partition0, &mut incoming);
            let (out, _) = coalescer.next_message().expect("its place is free");
            assert!(coalescer.next_message().is_none(), "its place is taken");
            let (answer, _) = oneshot::channel();
            replies.register(vec![answer], deadline, out)
        };
        let answered = send(DEADLINE);
        replies.complete(&answered.to_string(), vec![found(1.0)]);
        let failed = send(DEADLINE);
        replies.fail(failed, lapin::ErrorKind::MissingHeartbeatError.into());
        send(DEADLINE);
    }

    struct Partition0;

    impl Partitioned for Partition0 {
        fn partition(&self) -> usize {
            0
        }
    }

    #[tokio::test]
    async fn a_failed_publish_tells_each_read_of_its_message_why() {
        let replies = PendingReplies::default();
        let (id, reads) = register(&replies, 2);
        replies.fail(id, lapin::ErrorKind::MissingHeartbeatError.into());
        for read in reads {
            assert!(read.await.unwrap().is_err());
        }
        assert!(replies.lock().is_empty());
    }

    #[tokio::test]
    async fn abandoning_all_ends_every_waiting_read() {
        let replies = PendingReplies::default();
        let (_, first) = register(&replies, 1);
        let (_, second) = register(&replies, 2);

        replies.abandon_all();

        for read in first.into_iter().chain(second) {
            assert!(read.await.is_err(), "ended unanswered: the link is gone");
        }
    }
}
