//! Clients that keep writing while a test breaks something, and the audit afterwards: SQLite must
//! hold every write that got a `200`, with each key's last acknowledged value (or a later one whose
//! answer was lost, since a write that failed for its client may still have reached RabbitMQ).

use crate::PATIENCE;
use crate::app::TestApp;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One POST and how it ended: the status, or the client's error.
#[derive(Debug)]
pub struct Attempt {
    pub key: String,
    pub value: f64,
    pub outcome: Result<u16, String>,
    /// The answer's message when it was not a `200`, to tell failures apart.
    pub message: Option<String>,
    pub took: Duration,
    /// Which of the load's front-servers it went to.
    pub front: usize,
    /// When the answer came.
    pub finished: Instant,
    /// The read of the key through the next front-server, right after a `200`, if the load
    /// reads back.
    pub read_back: Option<ReadBack>,
}

/// A GET right after a write's `200`, through another front-server.
#[derive(Debug)]
pub struct ReadBack {
    pub front: usize,
    /// The status, or the client's error.
    pub outcome: Result<u16, String>,
    /// The value a `200` returned.
    pub value: Option<f64>,
    pub took: Duration,
    pub finished: Instant,
}

/// What the writers do: [`Writers::start`] and [`Writers::start_named`] fill in the rest.
#[derive(Debug, Clone)]
pub struct Load {
    /// Keys are named `<prefix><client>.k<n>`, so that two loads in one test never share one.
    pub prefix: &'static str,
    /// Where the writes go: each client starts at its own and takes the next one for each write.
    pub fronts: Vec<String>,
    pub clients: usize,
    /// Keys per client.
    pub keys: usize,
    /// Writes per client (or until stopped).
    pub writes: usize,
    /// Whether to read each acknowledged write back through the next front-server.
    pub read_back: bool,
    /// Only keys of this partition (the partition, the number of partitions).
    pub partition: Option<(u32, u32)>,
}

impl Attempt {
    pub fn acked(&self) -> bool {
        self.outcome == Ok(200)
    }
}

pub struct Writers {
    acked: watch::Receiver<usize>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Vec<Attempt>>>,
}

impl Writers {
    /// `clients` concurrent clients; each writes `writes` times (or until stopped), one request
    /// at a time, cycling over `keys` keys of its own with values 0, 1, 2…, so that for every key a
    /// later write always carries a larger value.
    pub fn start(address: &str, clients: usize, keys: usize, writes: usize) -> Self {
        Self::start_named("c", address, clients, keys, writes)
    }

    /// Like [`Self::start`], with keys named `<prefix><client>.k<n>`, so that two sets of
    /// writers in one test never share a key.
    pub fn start_named(
        prefix: &'static str,
        address: &str,
        clients: usize,
        keys: usize,
        writes: usize,
    ) -> Self {
        Self::start_load(Load {
            prefix,
            fronts: vec![address.to_owned()],
            clients,
            keys,
            writes,
            read_back: false,
            partition: None,
        })
    }

    /// Starts `load`'s clients.
    pub fn start_load(load: Load) -> Self {
        let (count, acked) = watch::channel(0);
        let stop = CancellationToken::new();
        let tasks = (0..load.clients)
            .map(|client| {
                let (load, count, stop) = (load.clone(), count.clone(), stop.clone());
                // Made as they are first needed: a load may cycle over more keys than fit in memory.
                let mut names = (0..)
                    .map(move |n| format!("{}{client}.k{n}", load.prefix))
                    .filter(move |key| {
                        load.partition.is_none_or(|(partition, partitions)| {
                            kv_protocol::partition_of(key, partitions) == partition
                        })
                    });
                let mut keys: Vec<String> = Vec::new();
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    let mut attempts = Vec::with_capacity(load.writes.min(4096));
                    for n in 0..load.writes {
                        if stop.is_cancelled() {
                            break;
                        }
                        let index = n % load.keys;
                        if index == keys.len() {
                            keys.push(names.next().expect("keys without end"));
                        }
                        let (key, value) = (keys[index].clone(), n as f64);
                        let front = (client + n) % load.fronts.len();
                        let started = Instant::now();
                        let sent = http
                            .post(format!("{}/api", load.fronts[front]))
                            .header("Content-Type", "application/json")
                            .body(serde_json::json!({ &key: value }).to_string())
                            .send()
                            .await;
                        let (outcome, message) = match sent {
                            Ok(response) if response.status() == 200 => (Ok(200), None),
                            Ok(response) => {
                                let status = response.status().as_u16();
                                (Ok(status), response.text().await.ok())
                            }
                            Err(err) => (Err(format!("{err:?}")), None),
                        };
                        let took = started.elapsed();
                        let finished = Instant::now();
                        let mut read_back = None;
                        if outcome == Ok(200) {
                            count.send_modify(|acked| *acked += 1);
                            if load.read_back {
                                let front = (front + 1) % load.fronts.len();
                                read_back =
                                    Some(read(&http, &load.fronts[front], front, &key).await);
                            }
                        } else {
                            // As a real client would, pause before the next try.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        attempts.push(Attempt {
                            key,
                            value,
                            outcome,
                            message,
                            took,
                            front,
                            finished,
                            read_back,
                        });
                    }
                    attempts
                })
            })
            .collect();
        Self { acked, stop, tasks }
    }

    /// Waits until at least `count` writes got their `200` in all.
    pub async fn wait_for_acked(&self, count: usize) {
        let mut acked = self.acked.clone();
        tokio::time::timeout(PATIENCE * 4, acked.wait_for(|acked| *acked >= count))
            .await
            .unwrap_or_else(|_| panic!("{count} writes were never acknowledged"))
            .unwrap();
    }

    pub fn acked(&self) -> usize {
        *self.acked.borrow()
    }

    /// Waits for every client to finish its writes.
    pub async fn finish(self) -> Vec<Attempt> {
        let mut attempts = Vec::new();
        for task in self.tasks {
            attempts.extend(task.await.expect("a writer panicked"));
        }
        attempts
    }

    /// Stops the clients after their current request, and returns what they did.
    pub async fn stop(self) -> Vec<Attempt> {
        self.stop.cancel();
        self.finish().await
    }
}

/// A GET of `key` through the front-server at `address`.
async fn read(http: &reqwest::Client, address: &str, front: usize, key: &str) -> ReadBack {
    let started = Instant::now();
    let answer = http.get(crate::app::key_url(address, key)).send().await;
    let (outcome, value) = match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Option<serde_json::Value> = response.json().await.ok();
            let value = body.and_then(|body| body["data"].as_f64());
            (Ok(status), value.filter(|_| status == 200))
        }
        Err(err) => (Err(format!("{err:?}")), None),
    };
    ReadBack {
        front,
        outcome,
        value,
        took: started.elapsed(),
        finished: Instant::now(),
    }
}

/// Fails if a read right after a write's `200` answered `200` with another value: each key has
/// one writer, so any other value is a stale read. Returns how many reads answered `200`.
pub fn assert_reads_saw_their_writes(attempts: &[Attempt]) -> usize {
    let stale: Vec<_> = attempts
        .iter()
        .filter_map(|attempt| Some((attempt, attempt.read_back.as_ref()?)))
        .filter(|(attempt, read)| read.outcome == Ok(200) && read.value != Some(attempt.value))
        .map(|(attempt, read)| {
            format!(
                "{} wrote {}, read {:?}",
                attempt.key, attempt.value, read.value
            )
        })
        .collect();
    assert!(
        stale.is_empty(),
        "{} stale reads: {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
    attempts
        .iter()
        .filter(|attempt| {
            attempt
                .read_back
                .as_ref()
                .is_some_and(|read| read.outcome == Ok(200))
        })
        .count()
}

/// Waits until SQLite holds, for every key, its last acknowledged value or a later attempted
/// one; fails with the keys that lost a write. Returns how many writes were acknowledged.
pub async fn audit(app: &TestApp, attempts: &[Attempt]) -> usize {
    audit_values(|| app.db_values(), attempts).await
}

/// [`audit`] of the values `values` reads (from one database or several).
pub async fn audit_values(
    values: impl Fn() -> HashMap<String, f64>,
    attempts: &[Attempt],
) -> usize {
    let mut keys: HashMap<&str, (Option<f64>, Vec<f64>)> = HashMap::new();
    for attempt in attempts {
        let (last_acked, tried) = keys.entry(&attempt.key).or_default();
        tried.push(attempt.value);
        if attempt.acked() {
            *last_acked = Some(last_acked.map_or(attempt.value, |v| v.max(attempt.value)));
        }
    }
    let wrong = || {
        let values = values();
        keys.iter()
            .filter(|(key, (last_acked, tried))| {
                let held = values.get(**key).copied();
                match (held, last_acked) {
                    (None, None) => false,
                    (None, Some(_)) => true,
                    (Some(held), last_acked) => {
                        last_acked.is_some_and(|acked| held < acked) || !tried.contains(&held)
                    }
                }
            })
            .map(|(key, (last_acked, _))| {
                format!("{key}: acked {last_acked:?}, holds {:?}", values.get(*key))
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let wrong = wrong();
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} keys lost their last acknowledged write: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    attempts.iter().filter(|attempt| attempt.acked()).count()
}

/// Fails if any request, write or read back, took longer than `limit`.
pub fn assert_none_slower_than(attempts: &[Attempt], limit: Duration) {
    let slowest = attempts.iter().max_by_key(|attempt| attempt.took);
    if let Some(slowest) = slowest {
        assert!(
            slowest.took <= limit,
            "a request took too long: {slowest:?}"
        );
    }
    let slowest_read = attempts
        .iter()
        .filter(|attempt| {
            attempt
                .read_back
                .as_ref()
                .is_some_and(|read| read.took > limit)
        })
        .max_by_key(|attempt| attempt.read_back.as_ref().map(|read| read.took));
    assert!(
        slowest_read.is_none(),
        "a read took too long: {slowest_read:?}"
    );
}
