//! The SQLite store. One dedicated thread owns the connection and applies batches of requests,
//! each in one transaction; async code talks to it through a bounded channel, so the runtime never
//! blocks on disk and a slow disk pushes back on the consumer instead of queueing without limit.
//! It also keeps the redelivery counts that let the consumer set aside a message that keeps
//! crashing the back-server.
//!
//! Its metrics come from the thread itself, after each commit: batch size, commit time, requests
//! applied, and rows in the table (counted once at open, then grown by each batch's inserts).

use crate::admin::{BATCH_SIZE, COMMIT_DURATION, MESSAGES_APPLIED, ROWS};
use kv_protocol::Request;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_create_kv.sql"),
    include_str!("../migrations/0002_create_redeliveries.sql"),
];

const UPSERT: &str = "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value";
const SELECT: &str = "SELECT value FROM kv WHERE key = ?1";
const COUNT_ROWS: &str = "SELECT count(*) FROM kv";
/// The newest row's id: new keys get the next one, so a batch inserted as many rows as it grew.
/// (SQLite assigns max + 1 to a new `INTEGER PRIMARY KEY` until the largest i64, and an upsert
/// that updates takes none.) One descent of the b-tree's right edge, where counting is a scan.
const LAST_ID: &str = "SELECT coalesce(max(id), 0) FROM kv";
const COUNT_ATTEMPT: &str = "INSERT INTO redeliveries (message, attempts) VALUES (?1, 1) ON CONFLICT (message) DO UPDATE SET attempts = attempts + 1 RETURNING attempts";
const FORGET_ATTEMPTS: &str = "DELETE FROM redeliveries WHERE message = ?1";

/// Jobs waiting for the store thread. Small: the consumer waits for each one anyway.
const QUEUE_DEPTH: usize = 4;

/// What applying one request produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A put was applied (committed once the batch's transaction is).
    Stored,
    /// A get's answer, as of the requests before it in the batch.
    Value(Option<f64>),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store thread has stopped")]
    Stopped,
}

/// Handle to the store thread. Dropping it (or calling [`Store::close`]) stops the thread once
/// the batches already sent are done.
pub struct Store {
    jobs: mpsc::Sender<Job>,
    thread: JoinHandle<()>,
}

/// Work for the store thread: it runs the closure on the connection, and the closure sends the
/// result back to whoever waits for it.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

impl Store {
    /// Opens (or creates) the database on the store thread and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let (jobs, receiver) = mpsc::channel(QUEUE_DEPTH);
        let (opened, open_result) = oneshot::channel();
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("sqlite-store".into())
            .spawn(move || match open_connection(&path) {
                Ok(connection) => {
                    let _ = opened.send(Ok(()));
                    serve(connection, receiver);
                }
                Err(err) => {
                    let _ = opened.send(Err(err));
                }
            })
            .expect("spawn the SQLite thread");
        open_result.await.map_err(|_| StoreError::Stopped)??;
        Ok(Self { jobs, thread })
    }

    /// Applies `requests` in order in one transaction and returns one outcome per request.
    /// Either all of them are committed or none is. Shared rather than owned, so that a caller
    /// retrying after an error sends the same batch again without copying it.
    pub async fn apply(&self, requests: Arc<[Request]>) -> Result<Vec<Outcome>, StoreError> {
        self.call(move |connection| apply_batch(connection, &requests, None))
            .await
    }

    /// Like [`Self::apply`] for a redelivered message counted under `message`, whose count is
    /// dropped in the same transaction: once its work is committed it is done with, and a count
    /// dropped any later could be left behind for good (its ack may succeed, and the link drop
    /// before the count is dropped).
    pub async fn apply_redelivered(
        &self,
        requests: Arc<[Request]>,
        message: Arc<[u8]>,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.call(move |connection| apply_batch(connection, &requests, Some(&message)))
            .await
    }

    /// Records that processing of a redelivered `message` begins once more, durably, and returns
    /// how many times it has begun so far.
    pub async fn count_attempt(&self, message: Arc<[u8]>) -> Result<u32, StoreError> {
        self.call(move |connection| {
            connection.query_row(COUNT_ATTEMPT, [&*message], |row| row.get(0))
        })
        .await
    }

    /// Drops the count of a message that is done with (applied or dead-lettered).
    pub async fn forget_attempts(&self, message: Arc<[u8]>) -> Result<(), StoreError> {
        self.call(move |connection| {
            connection.execute(FORGET_ATTEMPTS, [&*message])?;
            Ok(())
        })
        .await
    }

    /// Runs `work` on the store thread and waits for its result.
    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = done.send(work(connection));
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Stopped)?;
        Ok(result.await.map_err(|_| StoreError::Stopped)??)
    }

    /// Stops the thread after the work already sent, and waits for it to close the database.
    pub async fn close(self) {
        let Self { jobs, thread } = self;
        drop(jobs);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Opens (or creates) a database as the store keeps it: WAL, synchronous commits, schema up to
/// date.
pub(crate) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let mut connection = Connection::open(path)?;
    // A hot standby for the same partition opens the same file while the active back-server
    // writes to it: wait for its locks rather than fail.
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL lets a commit be one append; FULL makes that append reach the disk before COMMIT
    // returns, which we need because the broker ack that follows deletes the only other copy.
    connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    migrate(&mut connection)?;
    // Once, at open: a count scans the table, too slow for every batch of a large one.
    let rows: i64 = connection.query_row(COUNT_ROWS, [], |row| row.get(0))?;
    metrics::gauge!(ROWS).set(rows as f64);
    Ok(connection)
}

fn migrate(connection: &mut Connection) -> rusqlite::Result<()> {
    let applied: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (version, sql) in (1..).zip(MIGRATIONS).skip(applied as usize) {
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", version)?;
        transaction.commit()?;
    }
    Ok(())
}

fn serve(mut connection: Connection, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.blocking_recv() {
        job(&mut connection);
    }
}

fn apply_batch(
    connection: &mut Connection,
    requests: &[Request],
    forget: Option<&[u8]>,
) -> rusqlite::Result<Vec<Outcome>> {
    let started = Instant::now();
    let puts = requests
        .iter()
        .filter(|request| matches!(request, Request::Put { .. }))
        .count();
    // A batch that writes takes the write lock up front, so that it never fails half-way on a
    // lock it could not upgrade to. One that only reads takes none: it is answered while another
    // process (an operator's `sqlite3`, say) holds the lock, and it saves the lock's system calls,
    // about 4 of the 22 µs a lone read spent on the store thread on a 2-core VM.
    let behavior = if puts == 0 && forget.is_none() {
        TransactionBehavior::Deferred
    } else {
        TransactionBehavior::Immediate
    };
    let transaction = connection.transaction_with_behavior(behavior)?;
    let last_id = |transaction: &rusqlite::Transaction| -> rusqlite::Result<i64> {
        if puts == 0 {
            return Ok(0);
        }
        let mut statement = transaction.prepare_cached(LAST_ID)?;
        statement.query_row([], |row| row.get(0))
    };
    let last_id_before = last_id(&transaction)?;
    let outcomes = {
        let mut upsert = transaction.prepare_cached(UPSERT)?;
        let mut select = transaction.prepare_cached(SELECT)?;
        requests
            .iter()
            .map(|request| match request {
                Request::Put { key, value } => {
                    upsert.execute(params![key.as_str(), value])?;
                    Ok(Outcome::Stored)
                }
                Request::Get { key } => {
                    let value = select
                        .query_row([key.as_str()], |row| row.get(0))
                        .optional()?;
                    Ok(Outcome::Value(value))
                }
            })
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    let inserted = last_id(&transaction)? - last_id_before;
    if let Some(message) = forget {
        transaction.execute(FORGET_ATTEMPTS, [message])?;
    }
    transaction.commit()?;
    metrics::histogram!(COMMIT_DURATION).record(started.elapsed().as_secs_f64());
    metrics::histogram!(BATCH_SIZE).record(requests.len() as f64);
    metrics::counter!(MESSAGES_APPLIED, "kind" => "put").increment(puts as u64);
    metrics::counter!(MESSAGES_APPLIED, "kind" => "get").increment((requests.len() - puts) as u64);
    metrics::gauge!(ROWS).increment(inserted as f64);
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_protocol::Key;

    fn put(key: &str, value: f64) -> Request {
        Request::Put {
            key: Key::parse(key).unwrap(),
            value,
        }
    }

    fn get(key: &str) -> Request {
        Request::Get {
            key: Key::parse(key).unwrap(),
        }
    }

    #[tokio::test]
    async fn reads_in_a_batch_see_the_writes_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kv.db")).await.unwrap();

        let outcomes = store
            .apply(Arc::new([
                get("k"),
                put("k", 1.0),
                get("k"),
                put("k", 2.5),
                get("k"),
            ]))
            .await
            .unwrap();

        use Outcome::*;
        assert_eq!(
            outcomes,
            [
                Value(None),
                Stored,
                Value(Some(1.0)),
                Stored,
                Value(Some(2.5))
            ]
        );
        store.close().await;
    }

    #[tokio::test]
    async fn data_and_schema_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        let store = Store::open(&path).await.unwrap();
        store.apply(Arc::new([put("kept", -3.25)])).await.unwrap();
        store.close().await;

        let store = Store::open(&path).await.unwrap();
        let outcomes = store.apply(Arc::new([get("kept")])).await.unwrap();

        assert_eq!(outcomes, [Outcome::Value(Some(-3.25))]);
        store.close().await;
    }

    #[tokio::test]
    async fn applying_a_redelivered_message_drops_its_count_in_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kv.db")).await.unwrap();
        let message: Arc<[u8]> = b"m-1".as_slice().into();
        store.count_attempt(message.clone()).await.unwrap();
        store.count_attempt(message.clone()).await.unwrap();

        store
            .apply_redelivered(Arc::new([put("k", 1.0)]), message.clone())
            .await
            .unwrap();

        assert_eq!(store.count_attempt(message).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn attempts_count_up_per_message_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kv.db")).await.unwrap();
        let (a, b): (Arc<[u8]>, Arc<[u8]>) = (Arc::from(&b"a"[..]), Arc::from(&b"b"[..]));

        assert_eq!(store.count_attempt(a.clone()).await.unwrap(), 1);
        assert_eq!(store.count_attempt(a.clone()).await.unwrap(), 2);
        assert_eq!(store.count_attempt(b.clone()).await.unwrap(), 1);
        store.forget_attempts(a.clone()).await.unwrap();

        assert_eq!(store.count_attempt(a).await.unwrap(), 1);
        assert_eq!(store.count_attempt(b).await.unwrap(), 2);
        store.close().await;
    }

    #[tokio::test]
    async fn reads_are_answered_while_another_connection_holds_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        let store = Store::open(&path).await.unwrap();
        store.apply(Arc::new([put("k", 1.0)])).await.unwrap();
        let other = open_connection(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();

        let outcomes = store.apply(Arc::new([get("k"), get("z")])).await.unwrap();

        assert_eq!(outcomes, [Outcome::Value(Some(1.0)), Outcome::Value(None)]);
        other.execute_batch("ROLLBACK").unwrap();
        store.close().await;
    }

    #[test]
    fn metrics_count_rows_at_open_and_then_only_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        // A recorder of this test's own, on this thread: the global one is the process's.
        let rendered = |work: &dyn Fn()| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::with_local_recorder(&recorder, work);
            handle.render()
        };

        let first = rendered(&|| {
            let mut connection = open_connection(&path).unwrap();
            apply_batch(
                &mut connection,
                &[put("a", 1.0), put("b", 2.0), put("a", 3.0)],
                None,
            )
            .unwrap();
            apply_batch(
                &mut connection,
                &[get("a"), put("b", 4.0), put("c", 5.0)],
                None,
            )
            .unwrap();
            apply_batch(&mut connection, &[get("z")], None).unwrap();
        });
        let reopened = rendered(&|| drop(open_connection(&path).unwrap()));

        for line in [
            "kv_rows 3\n",
            "kv_messages_applied_total{kind=\"put\"} 5\n",
            "kv_messages_applied_total{kind=\"get\"} 2\n",
            "kv_batch_size_count 3\n",
            "kv_batch_size_sum 7\n",
            "kv_commit_duration_seconds_count 3\n",
        ] {
            assert!(first.contains(line), "no {line:?} in\n{first}");
        }
        assert!(reopened.contains("kv_rows 3\n"), "{reopened}");
    }

    #[tokio::test]
    async fn opening_a_path_that_cannot_exist_fails() {
        let result = Store::open(Path::new("/nonexistent-dir/kv.db")).await;
        assert!(matches!(result, Err(StoreError::Sqlite(_))));
    }
}
