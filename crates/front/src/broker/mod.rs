//! The front-server's broker client: the [`Broker`] handle request handlers call, which turns
//! AMQP's fire-and-forget messages into request/response calls over one long-lived connection.
//!
//! - `link`: the connection's two channels, kept by `kv_runtime`'s supervisor. While there are
//!   none (broker down, reconnecting) every request is answered `503` at once instead of hanging.
//! - `coalesce`: what goes into one message, and when. Requests for a partition whose messages
//!   are all out (`MESSAGES_IN_FLIGHT`) wait and go out together in its next message (protocol
//!   version 2's batches); a lone request goes out at once.
//! - `publisher`: writes go out on the confirm channel, published by one task per link in the
//!   order they come. Each request awaits the confirm of the message that carries it; the
//!   confirms of different partitions' messages overlap instead of queueing.
//! - `reads` and `replies`: reads go out on the second channel, without confirms, published by
//!   one task per link; the reply to each message comes back through direct reply-to, is matched
//!   to the message by correlation id, and gives each read its own answer.
//! - `error`: what can go wrong, said so that a client knows whether its request was processed.

mod coalesce;
mod error;
mod link;
mod publisher;
mod reads;
mod replies;

pub use error::BrokerError;

use kv_protocol::{Key, Layout, Reply, RequestId, TopologyError};
use kv_runtime::{Nodes, Supervisor};
use lapin::BasicProperties;
use lapin::types::ShortString;
use link::{Link, Session};
use metrics::{Counter, Histogram};
use publisher::{Unpublished, Verdict, Write};
use reads::Read;
use replies::PendingReplies;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PERSISTENT: u8 = 2;

const CONFIRMS: &str = "kv_amqp_publish_confirms_total";
const READS_TIMED_OUT: &str = "kv_reads_timed_out_total";
const REQUESTS_PER_MESSAGE: &str = "kv_requests_per_message";

/// Names and explains the broker's series (the `# HELP` lines of `/metrics`).
pub fn describe_metrics() {
    metrics::describe_counter!(
        CONFIRMS,
        "Writes published, by how RabbitMQ answered: ack, nack, returned (no queue), timeout \
         (no answer within RPC_TIMEOUT_MS) or error (the link broke first)"
    );
    metrics::describe_counter!(
        READS_TIMED_OUT,
        "Reads that got no reply within RPC_TIMEOUT_MS (answered 504)"
    );
    // Present from the start at 0, so that `rate()` and `increase()` see the first event too.
    for outcome in OUTCOMES {
        count_confirm(outcome, 0);
    }
    metrics::counter!(READS_TIMED_OUT).increment(0);
    metrics::describe_histogram!(
        REQUESTS_PER_MESSAGE,
        "Requests carried by each message published to RabbitMQ, by op: put (writes) or get \
         (reads). Above 1 when requests arrive faster than one message at a time goes out"
    );
}

/// Records how many requests of kind `op` (`put` or `get`) one published message carries.
fn count_batch(op: &'static str, requests: usize) {
    static PER_MESSAGE: LazyLock<[Histogram; 2]> = LazyLock::new(|| {
        ["put", "get"].map(|op| metrics::histogram!(REQUESTS_PER_MESSAGE, "op" => op))
    });
    PER_MESSAGE[usize::from(op == "get")].record(requests as f64);
}

/// How RabbitMQ can answer a write, as the `outcome` label of its confirms' counter.
const OUTCOMES: [&str; 5] = ["ack", "nack", "returned", "timeout", "error"];

/// Counts `writes` confirms of one outcome (one of [`OUTCOMES`]). The counters' handles are
/// looked up in the recorder once: a lookup hashes the name and labels and costs far more than
/// the count, on every write.
fn count_confirm(outcome: &'static str, writes: u64) {
    static CONFIRMED: LazyLock<[Counter; 5]> =
        LazyLock::new(|| OUTCOMES.map(|outcome| metrics::counter!(CONFIRMS, "outcome" => outcome)));
    let index = OUTCOMES
        .iter()
        .position(|known| *known == outcome)
        .expect("a known outcome");
    CONFIRMED[index].increment(writes);
}

/// Handle used by request handlers; cheap to share behind an `Arc`.
pub struct Broker {
    link: watch::Receiver<Option<Arc<Link>>>,
    /// The generation of a link a request found broken; the supervisor then rebuilds it.
    broken: watch::Sender<u64>,
    layout: Layout,
    /// Each partition's request queue, by partition, named once.
    queues: Arc<[ShortString]>,
    deadline: Duration,
    /// A permit per request in flight, so that what waits in this process is bounded: a flood
    /// while RabbitMQ cannot keep up (or refuses, in an alarm) waits here, then gets `503`.
    in_flight: Semaphore,
    max_in_flight: usize,
    _stop_supervisor: tokio_util::sync::DropGuard,
}

impl Broker {
    /// Starts the supervisor that connects (and reconnects) to one of the RabbitMQ nodes at
    /// `nodes`. It runs until `shutdown` is cancelled, then closes the connection; await the
    /// returned task to know it has. It stops early, with the error, if the queues RabbitMQ
    /// has do not match `layout`.
    pub fn start(
        nodes: Nodes,
        layout: Layout,
        deadline: Duration,
        max_in_flight: usize,
        messages_in_flight: usize,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<Result<(), TopologyError>>) {
        let (link_sender, link) = watch::channel(None);
        let replies = Arc::new(PendingReplies::default());
        let broken = watch::Sender::new(0);
        // The supervisor also stops if this handle is dropped without a shutdown (a test that
        // aborts the server): nobody could use its link any more.
        let shutdown = shutdown.child_token();
        let stop_supervisor = shutdown.clone().drop_guard();
        let queues: Arc<[ShortString]> = layout.queues().map(ShortString::from).collect();
        let session = Session {
            layout: layout.clone(),
            queues: queues.clone(),
            link: link_sender,
            replies: replies.clone(),
            broken: broken.subscribe(),
            generation: 0,
            max_in_flight,
            messages_in_flight,
            deadline,
        };
        let supervisor = Supervisor::new(nodes, "front", layout.base(), shutdown);
        let task = tokio::spawn(supervisor.run(session));
        let broker = Self {
            link,
            broken,
            _stop_supervisor: stop_supervisor,
            queues,
            layout,
            deadline,
            in_flight: Semaphore::new(max_in_flight),
            max_in_flight,
        };
        (broker, task)
    }

    /// Completes once a link to RabbitMQ is up (immediately if it already is).
    pub fn ready(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut link = self.link.clone();
        async move {
            let _ = link.wait_for(Option::is_some).await;
        }
    }

    /// Whether requests can be served now, or why not: no link to RabbitMQ, or RabbitMQ blocks
    /// publishing.
    pub fn readiness(&self) -> Result<(), String> {
        match self.current() {
            Ok(_) => Ok(()),
            Err(BrokerError::Blocked(alarm)) => Err(format!(
                "RabbitMQ refuses new messages while a resource alarm is on ({alarm})"
            )),
            Err(_) => Err("no working connection to RabbitMQ".into()),
        }
    }

    /// The current link, if requests can use it.
    fn current(&self) -> Result<Arc<Link>, BrokerError> {
        let link = self
            .link
            .borrow()
            .clone()
            .ok_or(BrokerError::Unavailable("not connected"))?;
        if let Some(alarm) = link.blocked.borrow().clone() {
            return Err(BrokerError::Blocked(alarm));
        }
        Ok(link)
    }

    /// Admits a request: refuses it at once if there is no usable link, else waits for a permit
    /// to have a request in flight, until the deadline. Returns the permit, the link (looked up
    /// again: it may have changed, or been blocked, meanwhile) and the time left for the request
    /// itself. A permit that comes with less than a tenth of the deadline left is given back: a
    /// request sent that late could hardly be answered in time, and `503` says why better than a
    /// `504` would.
    async fn admit(
        &self,
    ) -> Result<(tokio::sync::SemaphorePermit<'_>, Arc<Link>, Duration), BrokerError> {
        self.current()?;
        let started = Instant::now();
        let permit = tokio::time::timeout(self.deadline, self.in_flight.acquire())
            .await
            .map_err(|_| BrokerError::Busy(self.max_in_flight))?
            .expect("the semaphore is never closed");
        let left = self.deadline.saturating_sub(started.elapsed());
        if left < self.deadline / 10 {
            return Err(BrokerError::Busy(self.max_in_flight));
        }
        Ok((permit, self.current()?, left))
    }

    /// Publishes a durable write and returns once RabbitMQ has confirmed it.
    /// `request_id` travels in the message's headers, for the back-server's logs.
    pub async fn write(
        &self,
        key: Key,
        value: f64,
        request_id: RequestId,
    ) -> Result<(), BrokerError> {
        let (_permit, link, left) = self.admit().await?;
        let generation = link.generation;
        let (done, verdict) = oneshot::channel();
        let partition = self.partition_of(&key);
        let write = Write {
            partition,
            key,
            value,
            request_id,
            done,
        };
        let call = async {
            link.publisher
                .send(write)
                .await
                .map_err(|_| BrokerError::Unavailable("the write publisher has stopped"))?;
            verdict
                .await
                .map_err(|_| BrokerError::Unavailable("the write publisher has stopped"))?
                .map_err(|unpublished| match unpublished {
                    Unpublished::Blocked(alarm) => BrokerError::Blocked(alarm),
                    Unpublished::Link(err) => {
                        count_confirm("error", 1);
                        self.link_failed(generation, err)
                    }
                })
        };
        let verdict = tokio::time::timeout(left, call).await.map_err(|_| {
            count_confirm("timeout", 1);
            let ms = self.deadline.as_millis() as u64;
            match link.blocked.borrow().clone() {
                Some(alarm) => BrokerError::UnconfirmedInAlarm { ms, alarm },
                None => BrokerError::Unconfirmed(ms),
            }
        })??;
        match verdict {
            Verdict::Acked => {
                count_confirm("ack", 1);
                Ok(())
            }
            Verdict::Returned => {
                count_confirm("returned", 1);
                // Someone deleted the queue: rebuilding the link declares it again.
                report_broken(&self.broken, generation);
                Err(BrokerError::Returned {
                    queue: self.queues[partition].to_string(),
                })
            }
            Verdict::Nacked => {
                count_confirm("nack", 1);
                Err(BrokerError::Nacked)
            }
        }
    }

    /// Asks the back-server for the value under `key` and waits for its reply until the deadline.
    pub async fn read(&self, key: &Key, request_id: RequestId) -> Result<Option<f64>, BrokerError> {
        let (_permit, link, left) = self.admit().await?;
        let (answer, reply) = oneshot::channel();
        let read = Read {
            partition: self.partition_of(key),
            key: key.clone(),
            request_id,
            answer,
        };
        let call = async {
            link.reader
                .send(read)
                .await
                .map_err(|_| BrokerError::Unavailable("the read publisher has stopped"))?;
            match reply.await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(err)) => Err(self.link_failed(link.generation, err)),
                Err(_) => Err(BrokerError::Unavailable(
                    "the RabbitMQ link dropped before the reply",
                )),
            }
        };
        let reply = tokio::time::timeout(left, call).await.map_err(|_| {
            metrics::counter!(READS_TIMED_OUT).increment(1);
            BrokerError::NoReply(self.deadline.as_millis() as u64)
        })??;
        Ok(match reply {
            Reply::Found { value } => Some(value),
            Reply::NotFound => None,
        })
    }

    /// The partition of `key`, which is also the index of its request queue.
    fn partition_of(&self, key: &Key) -> usize {
        self.layout.partition_of(key) as usize
    }

    fn link_failed(&self, generation: u64, err: lapin::Error) -> BrokerError {
        report_broken(&self.broken, generation);
        BrokerError::LinkFailed(err)
    }
}

/// Tells the session that the link of `generation` is broken, unless a newer link was reported
/// already: a request that found an old link broken must not make the session wait for that old
/// generation again, and so miss the report about the current one.
fn report_broken(broken: &watch::Sender<u64>, generation: u64) {
    broken.send_if_modified(|reported| {
        let newer = generation > *reported;
        if newer {
            *reported = generation;
        }
        newer
    });
}

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

/// A unique id for each message: the back-server counts redeliveries by it (see its consumer).
fn message_id() -> ShortString {
    uuid::Uuid::new_v4().hyphenated().to_string().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_report_about_an_old_link_does_not_hide_the_current_one() {
        let broken = watch::Sender::new(0);
        let session = broken.subscribe();

        report_broken(&broken, 5);
        report_broken(&broken, 4);
        assert_eq!(*session.borrow(), 5);

        report_broken(&broken, 6);
        assert_eq!(*session.borrow(), 6);
    }
}
