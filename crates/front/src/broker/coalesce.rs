//! What goes into one message, and when it goes: the requests a publisher task holds for each
//! partition, sent together once that partition may have another message out.
//!
//! Nagle's algorithm without its delay: a request for a partition with no message out is
//! published at once, alone. While a partition has `MESSAGES_IN_FLIGHT` messages out (writes
//! awaiting RabbitMQ's confirm, reads awaiting their reply), its new requests wait here and go out
//! together in its next message, as soon as one of those is answered, or after [`HOLD`] at most.
//! The busier the server, the fuller the messages, and the fewer RabbitMQ and the back-server
//! handle per request; no request ever waits for others to arrive, only for a message already on
//! its way.

use kv_protocol::MAX_BATCH;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long an unanswered message holds its partition's place. Under load a message is answered
/// within a few milliseconds; one that takes longer means the partition's consumer is behind or
/// gone (a read's reply cannot come while its back-server is down), and holding requests back
/// would then only delay them. So no request waits here longer than this: past it, requests go
/// out and queue in RabbitMQ, as they would without coalescing.
pub(super) const HOLD: Duration = Duration::from_millis(20);

/// A request bound for one partition's queue.
pub(super) trait Partitioned {
    fn partition(&self) -> usize;
}

/// The requests of one publisher task that wait to go out, by partition, and the messages each
/// partition has out.
pub(super) struct Coalescer<T> {
    waiting: Vec<VecDeque<T>>,
    /// By partition, the messages that hold a place: their number and when each went out, oldest
    /// first.
    out: Vec<Vec<(u64, Instant)>>,
    /// Most messages holding a place in a partition at once.
    limit: usize,
    /// The partition to look at first: each gets its turn when several may send.
    turn: usize,
    next_id: u64,
    answered: mpsc::UnboundedSender<(usize, u64)>,
    answers: mpsc::UnboundedReceiver<(usize, u64)>,
}

/// A message that is out: it holds its partition's place until it is dropped (once the message
/// is answered, has failed or has been given up), or for [`HOLD`] at most.
pub(super) struct Out {
    partition: usize,
    id: u64,
    answered: mpsc::UnboundedSender<(usize, u64)>,
}

impl Out {
    /// The partition whose queue the message goes to.
    pub(super) fn partition(&self) -> usize {
        self.partition
    }
}

#[cfg(test)]
impl Out {
    /// A place nobody counts, for tests of what holds one.
    pub(super) fn unheld() -> Self {
        let (answered, _) = mpsc::unbounded_channel();
        Self {
            partition: 0,
            id: 0,
            answered,
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        // The coalescer may be gone with its link: then nobody counts the places any more.
        let _ = self.answered.send((self.partition, self.id));
    }
}

impl<T: Partitioned> Coalescer<T> {
    /// Holds requests for `partitions` partitions, each with at most `limit` messages out.
    pub(super) fn new(partitions: usize, limit: usize) -> Self {
        let (answered, answers) = mpsc::unbounded_channel();
        Self {
            waiting: (0..partitions).map(|_| VecDeque::new()).collect(),
            out: vec![Vec::new(); partitions],
            limit: limit.max(1),
            turn: 0,
            next_id: 0,
            answered,
            answers,
        }
    }

    /// Takes `first` and whatever `incoming` holds right now, never waiting for more.
    pub(super) fn take(&mut self, first: T, incoming: &mut mpsc::Receiver<T>) {
        let mut next = Some(first);
        while let Some(request) = next {
            self.waiting[request.partition()].push_back(request);
            next = incoming.try_recv().ok();
        }
    }

    /// The next message that may go out: a partition with requests waiting and a place free, and
    /// its first [`MAX_BATCH`] requests in arrival order (one message per partition keeps the
    /// order in which requests for the same queue arrived). The message holds the place until its
    /// [`Out`] is dropped, or for [`HOLD`].
    pub(super) fn next_message(&mut self) -> Option<(Out, Vec<T>)> {
        while let Ok((partition, id)) = self.answers.try_recv() {
            self.free(partition, id);
        }
        let now = Instant::now();
        let partitions = self.waiting.len();
        let partition = (0..partitions)
            .map(|offset| (self.turn + offset) % partitions)
            .find(|&p| {
                if self.waiting[p].is_empty() {
                    return false;
                }
                self.out[p].retain(|(_, sent)| now.duration_since(*sent) < HOLD);
                self.out[p].len() < self.limit
            })?;
        self.turn = (partition + 1) % partitions;
        let waiting = &mut self.waiting[partition];
        let requests = waiting.drain(..waiting.len().min(MAX_BATCH)).collect();
        let id = self.next_id;
        self.next_id += 1;
        self.out[partition].push((id, now));
        let out = Out {
            partition,
            id,
            answered: self.answered.clone(),
        };
        Some((out, requests))
    }

    /// Waits until a place may have come free: a message is answered, or the oldest message of a
    /// partition whose requests wait has held its place for [`HOLD`]. Cancel-safe: a `select!`
    /// may drop it unfinished; [`Coalescer::next_message`] counts the answers that came meanwhile.
    pub(super) async fn place_freed(&mut self) {
        let released = (0..self.waiting.len())
            .filter(|&p| !self.waiting[p].is_empty())
            .filter_map(|p| self.out[p].first().map(|(_, sent)| *sent + HOLD))
            .min();
        tokio::select! {
            Some((partition, id)) = self.answers.recv() => self.free(partition, id),
            // The placeholder instant is never awaited: the branch is off when nothing waits.
            () = tokio::time::sleep_until(released.unwrap_or_else(Instant::now)), if released.is_some() => {}
        }
    }

    /// Gives back the place of message `id`, unless it has held it for [`HOLD`] already.
    fn free(&mut self, partition: usize, id: u64) {
        self.out[partition].retain(|(out, _)| *out != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Request(usize, u32);

    impl Partitioned for Request {
        fn partition(&self) -> usize {
            self.0
        }
    }

    /// A coalescer of two partitions that holds `requests`, taken as a publisher takes them.
    async fn holding(limit: usize, requests: Vec<Request>) -> Coalescer<Request> {
        let mut coalescer = Coalescer::new(2, limit);
        let (sender, mut incoming) = mpsc::channel(MAX_BATCH * 2);
        let mut requests = requests.into_iter();
        let first = requests.next().unwrap();
        for request in requests {
            sender.send(request).await.unwrap();
        }
        coalescer.take(first, &mut incoming);
        assert!(incoming.try_recv().is_err(), "everything ready was taken");
        coalescer
    }

    fn numbers(requests: &[Request]) -> Vec<u32> {
        requests.iter().map(|request| request.1).collect()
    }

    #[tokio::test]
    async fn a_lone_request_goes_at_once_and_alone() {
        let mut coalescer = holding(1, vec![Request(0, 1)]).await;
        let (_out, requests) = coalescer.next_message().unwrap();
        assert_eq!(requests, [Request(0, 1)]);
        assert!(coalescer.next_message().is_none());
    }

    #[tokio::test]
    async fn each_partition_gets_its_own_message_in_arrival_order() {
        let requests = vec![Request(0, 1), Request(1, 2), Request(0, 3), Request(1, 4)];
        let mut coalescer = holding(1, requests).await;
        let (_first, first) = coalescer.next_message().unwrap();
        let (_second, second) = coalescer.next_message().unwrap();
        assert_eq!(first, [Request(0, 1), Request(0, 3)]);
        assert_eq!(second, [Request(1, 2), Request(1, 4)]);
    }

    #[tokio::test]
    async fn requests_wait_while_their_partition_has_its_messages_out_then_go_together() {
        let mut coalescer = holding(1, vec![Request(0, 1)]).await;
        let (out, _) = coalescer.next_message().unwrap();

        let (sender, mut incoming) = mpsc::channel(8);
        sender.send(Request(0, 3)).await.unwrap();
        sender.send(Request(1, 4)).await.unwrap();
        coalescer.take(Request(0, 2), &mut incoming);
        let (_other, other) = coalescer.next_message().unwrap();
        assert_eq!(other, [Request(1, 4)], "another partition is not held up");
        assert!(
            coalescer.next_message().is_none(),
            "partition 0 has its message out"
        );

        drop(out);
        coalescer.place_freed().await;
        let (_next, next) = coalescer.next_message().unwrap();
        assert_eq!(numbers(&next), [2, 3]);
    }

    #[tokio::test]
    async fn a_partition_has_at_most_its_limit_of_messages_out() {
        let mut coalescer = holding(2, vec![Request(0, 1)]).await;
        let (_first, _) = coalescer.next_message().unwrap();
        let (sender, mut incoming) = mpsc::channel(8);
        sender.send(Request(0, 3)).await.unwrap();
        coalescer.take(Request(0, 2), &mut incoming);
        let (_second, second) = coalescer.next_message().unwrap();
        assert_eq!(numbers(&second), [2, 3]);
        coalescer.take(Request(0, 4), &mut incoming);
        assert!(coalescer.next_message().is_none());
    }

    #[tokio::test]
    async fn an_unanswered_message_holds_its_place_no_longer_than_the_hold() {
        let mut coalescer = holding(1, vec![Request(0, 1)]).await;
        let (_unanswered, _) = coalescer.next_message().unwrap();
        let (_, mut incoming) = mpsc::channel(1);
        coalescer.take(Request(0, 2), &mut incoming);
        assert!(coalescer.next_message().is_none());

        let started = Instant::now();
        coalescer.place_freed().await;
        let (_next, next) = coalescer.next_message().expect("the place is free again");
        assert!(started.elapsed() >= HOLD / 2, "{:?}", started.elapsed());
        assert_eq!(numbers(&next), [2]);
    }

    #[tokio::test]
    async fn a_message_carries_at_most_one_full_batch_and_the_rest_follows_in_order() {
        let requests = (0..MAX_BATCH as u32 + 4).map(|n| Request(0, n)).collect();
        let mut coalescer = holding(2, requests).await;
        let (_first, first) = coalescer.next_message().unwrap();
        let (_second, second) = coalescer.next_message().unwrap();
        assert_eq!(numbers(&first), (0..MAX_BATCH as u32).collect::<Vec<_>>());
        assert_eq!(
            numbers(&second),
            (MAX_BATCH as u32..MAX_BATCH as u32 + 4).collect::<Vec<_>>()
        );
    }
}
