//! `spawn_app()` and the `TestApp` it returns: both servers on a fresh queue and database, with
//! request helpers and direct looks into SQLite and RabbitMQ.
//!
//! A test gives its servers settings the way an operator does, as environment variables; the
//! servers in this process get them through their own settings parser (see [`settings`]), so
//! every setting a test does not name has the default the binaries have.

use crate::queues::{delete_queues_now, ready_messages};
use crate::server::{ServerProcess, binaries};
use lapin::{Connection, ConnectionProperties};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::PATIENCE;

pub use crate::queues::amqp_url;

/// A queue name no other test or concurrent run uses.
pub fn unique_queue() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "kv.test.{}.{nanos}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Options {
    /// Run the front-server in this process (else the test starts its own, e.g. as a process).
    pub front_server: bool,
    pub back_server: bool,
    /// Wait until the front-server has reached RabbitMQ before returning.
    pub wait_for_broker: bool,
    /// Settings of the in-process front-server beyond those every test gives it, as environment
    /// variables (`("RPC_TIMEOUT_MS", "500")`); the rest keep their defaults.
    pub front_env: &'static [(&'static str, &'static str)],
    pub amqp_url: String,
    /// Whether the test shares RabbitMQ (most) or needs it alone (one that restarts it).
    pub broker: Lock,
}

impl Options {
    /// No back-server: what reaches the queue stays there, and reads get no reply.
    pub fn front_only() -> Self {
        Self {
            back_server: false,
            ..Self::default()
        }
    }

    /// No server in this process: the test starts them as processes.
    pub fn no_servers() -> Self {
        Self {
            front_server: false,
            back_server: false,
            wait_for_broker: false,
            ..Self::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            front_server: true,
            back_server: true,
            wait_for_broker: true,
            front_env: &[],
            amqp_url: amqp_url(),
            broker: Lock::Shared,
        }
    }
}

/// A server running in this process, and the way to stop it as SIGTERM would.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(PATIENCE, self.task).await;
        result
            .expect("the server stops in time")
            .expect("no panic")
            .expect("a clean stop");
    }
}

fn stop_signal() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    (stop, async move {
        let _ = stopped.await;
    })
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub queue: String,
    pub db_path: PathBuf,
    amqp_url: String,
    front: Option<Running>,
    back: Option<Running>,
    _dir: tempfile::TempDir,
    _broker_lock: std::fs::File,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let broker_lock = lock_broker(options.broker);
    let dir = tempfile::tempdir().unwrap();
    let mut app = TestApp {
        address: String::new(),
        client: reqwest::Client::new(),
        queue: unique_queue(),
        db_path: dir.path().join("kv.db"),
        amqp_url: options.amqp_url.clone(),
        front: None,
        back: None,
        _dir: dir,
        _broker_lock: broker_lock,
    };
    if options.front_server {
        let config = settings(&app.front_settings(options.front_env));
        let front = front_server::Application::build(config)
            .await
            .expect("front-server builds");
        app.address = format!("http://{}", front.local_addr());
        let ready = front.ready();
        let (stop, stopped) = stop_signal();
        let task = tokio::spawn(front.run_until_stopped(stopped));
        app.front = Some(Running { stop, task });
        if options.back_server {
            app.start_back().await;
        }
        if options.wait_for_broker {
            tokio::time::timeout(PATIENCE, ready)
                .await
                .expect("the front-server reaches RabbitMQ");
        }
    } else if options.back_server {
        app.start_back().await;
    }
    app
}

/// How a test uses the shared broker: most share it; one that restarts it needs it alone.
#[derive(Debug, Clone, Copy)]
pub enum Lock {
    Shared,
    Exclusive,
}

/// A lock on a file every test run on this machine agrees on, held while a test uses RabbitMQ:
/// a test that restarts the broker takes it exclusively, so it never pulls the broker from under
/// another test, of this run or of a concurrent one.
pub fn lock_broker(how: Lock) -> std::fs::File {
    let path = std::env::temp_dir().join("kv-over-rabbitmq.broker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
    match how {
        Lock::Shared => file.lock_shared(),
        Lock::Exclusive => file.lock(),
    }
    .expect("lock the broker lock file");
    file
}

impl TestApp {
    /// The request queues as the servers, with their default settings, declare them.
    pub fn layout(&self) -> kv_protocol::Layout {
        kv_protocol::Layout::new(self.queue.clone(), 1, kv_runtime::DEFAULT_QUEUE_TYPE)
    }

    pub async fn start_back(&mut self) {
        assert!(self.back.is_none(), "the back-server already runs");
        let config = settings(&self.back_settings(&[]));
        let back = back_server::Application::build(config)
            .await
            .expect("back-server builds");
        let (stop, stopped) = stop_signal();
        let task = tokio::spawn(back.run_until_stopped(stopped));
        self.back = Some(Running { stop, task });
    }

    /// Starts the back-server binary on this test's queue and database; `env` adds or overrides
    /// settings. Does not wait for it to be ready.
    pub async fn start_back_process(&self, env: &[(&str, &str)]) -> ServerProcess {
        let settings = self.back_settings(env);
        ServerProcess::start("back-server", &binaries().await.back, &settings)
    }

    /// Starts the front-server binary on this test's queue, makes it the server this test's
    /// requests go to, and waits until it has reached RabbitMQ.
    pub async fn start_front_process(&mut self, env: &[(&str, &str)]) -> ServerProcess {
        assert!(
            self.front.is_none(),
            "a front-server already runs in process"
        );
        let settings = self.front_settings(env);
        let front = ServerProcess::start("front-server", &binaries().await.front, &settings);
        self.address = format!("http://{}", front.wait_for_address("listening").await);
        front.wait_for_log("ready: publishing to RabbitMQ").await;
        front
    }

    /// The front-server's settings in this test: its broker and queue, any free port, then `extra`.
    fn front_settings<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut settings = vec![
            ("AMQP_URL", self.amqp_url.as_str()),
            ("KV_QUEUE", self.queue.as_str()),
            ("FRONT_LISTEN", "127.0.0.1:0"),
        ];
        settings.extend_from_slice(extra);
        settings
    }

    /// The back-server's settings in this test: its broker, queue and database, small batches
    /// (tests send few messages), any free port for its admin listener (tests run side by side),
    /// then `extra`.
    fn back_settings<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut settings = vec![
            ("AMQP_URL", self.amqp_url.as_str()),
            ("KV_QUEUE", self.queue.as_str()),
            (
                "DB_PATH",
                self.db_path.to_str().expect("a UTF-8 temporary path"),
            ),
            ("PREFETCH", "64"),
            ("BATCH_SIZE", "32"),
            ("ADMIN_LISTEN", "127.0.0.1:0"),
        ];
        settings.extend_from_slice(extra);
        settings
    }

    pub async fn stop_back(&mut self) {
        self.back.take().expect("the back-server runs").stop().await;
    }

    /// Stops the front-server as SIGTERM would, without waiting for it to finish.
    pub fn signal_front(&mut self) -> impl Future<Output = ()> + use<> {
        let running = self.front.take().expect("the front-server runs");
        let _ = running.stop.send(());
        async move {
            let result = tokio::time::timeout(PATIENCE, running.task).await;
            result
                .expect("the server stops in time")
                .expect("no panic")
                .expect("a clean stop");
        }
    }

    /// The address requests go to, for tests that write raw bytes over TCP.
    pub fn socket_address(&self) -> SocketAddr {
        let address = self
            .address
            .strip_prefix("http://")
            .unwrap_or(&self.address);
        address
            .parse()
            .unwrap_or_else(|_| panic!("not a socket address: {address:?}"))
    }

    pub async fn post_json(&self, body: &str) -> reqwest::Response {
        self.post(Some("application/json"), body).await
    }

    pub async fn post(&self, content_type: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/api", self.address))
            .body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        request.send().await.expect("POST /api is answered")
    }

    pub async fn put(&self, key: &str, value: f64) {
        let body = serde_json::json!({ key: value }).to_string();
        let response = self.post_json(&body).await;
        assert_eq!(
            response.status(),
            200,
            "{body} → {}",
            response.text().await.unwrap()
        );
    }

    /// `GET /api?key=…`, with the key percent-encoded.
    pub async fn get_key(&self, key: &str) -> reqwest::Response {
        let url = key_url(&self.address, key);
        self.client.get(url).send().await.expect("GET is answered")
    }

    pub async fn get_raw(&self, path_and_query: &str) -> reqwest::Response {
        let url = format!("{}{path_and_query}", self.address);
        self.client.get(url).send().await.expect("GET is answered")
    }

    /// The value SQLite holds for `key`, read straight from the database file.
    pub fn db_value(&self, key: &str) -> Option<f64> {
        let connection = rusqlite::Connection::open_with_flags(
            &self.db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the database");
        let mut statement = connection
            .prepare("SELECT value FROM kv WHERE key = ?1")
            .unwrap();
        let mut rows = statement.query([key]).unwrap();
        rows.next().unwrap().map(|row| row.get(0).unwrap())
    }

    /// Every key and value in SQLite, read straight from the database file.
    pub fn db_values(&self) -> std::collections::HashMap<String, f64> {
        db_values_at(&self.db_path)
    }

    /// How many messages the back-server keeps a redelivery count for.
    pub fn redelivery_counts(&self) -> i64 {
        let connection = rusqlite::Connection::open(&self.db_path).unwrap();
        connection
            .query_row("SELECT count(*) FROM redeliveries", [], |row| row.get(0))
            .unwrap()
    }

    pub fn db_row_count(&self) -> i64 {
        let connection = rusqlite::Connection::open(&self.db_path).unwrap();
        connection
            .query_row("SELECT count(*) FROM kv", [], |row| row.get(0))
            .unwrap()
    }

    /// Waits until SQLite holds `rows` keys.
    pub async fn wait_for_row_count(&self, rows: i64) {
        eventually(&format!("SQLite holds {rows} keys"), || async {
            match self.db_row_count() {
                count if count == rows => Ok(()),
                count => Err(format!("{count} rows")),
            }
        })
        .await
    }

    /// Waits until SQLite holds `expected` for `key`.
    pub async fn wait_for_db_value(&self, key: &str, expected: f64) {
        eventually(&format!("{key} becomes {expected}"), || async {
            match self.db_value(key) {
                Some(value) if value == expected => Ok(()),
                other => Err(format!("holds {other:?}")),
            }
        })
        .await
    }

    /// A channel on a connection of the test's own, for looking into the queues.
    pub async fn broker(&self) -> (Connection, lapin::Channel) {
        let connection = Connection::connect(&self.amqp_url, ConnectionProperties::default())
            .await
            .expect("the test reaches RabbitMQ");
        let channel = connection.create_channel().await.unwrap();
        (connection, channel)
    }

    /// Like [`Self::broker`], with the channel in confirm mode, as [`Self::publish_raw`] needs.
    pub async fn publisher(&self) -> (Connection, lapin::Channel) {
        let (connection, channel) = self.broker().await;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
        (connection, channel)
    }

    /// Puts `body` on the request queue as a persistent message, as a hand-crafted or foreign
    /// sender would, and waits for RabbitMQ's ack. `channel` must be in confirm mode.
    pub async fn publish_raw(&self, channel: &lapin::Channel, body: &[u8]) {
        publish_raw_to(channel, &self.queue, body).await
    }

    /// How many messages wait in `queue` (ready, not yet delivered to a consumer).
    pub async fn messages_in(&self, queue: &str) -> u32 {
        ready_messages(&self.amqp_url, queue)
            .await
            .unwrap_or_else(|err| panic!("count the messages in {queue}: {err:#}"))
    }

    /// Stops both servers cleanly (checking they do) and deletes the test's queues.
    pub async fn shutdown(mut self) {
        if let Some(front) = self.front.take() {
            front.stop().await;
        }
        if let Some(back) = self.back.take() {
            back.stop().await;
        }
    }
}

impl Drop for TestApp {
    /// Runs on success and on panic alike, so no test leaves queues behind on the shared broker.
    fn drop(&mut self) {
        if let Some(front) = self.front.take() {
            front.task.abort();
        }
        if let Some(back) = self.back.take() {
            back.task.abort();
        }
        let queues = vec![
            self.queue.clone(),
            kv_protocol::dead_letter_queue(&self.queue),
        ];
        delete_queues_now(&self.amqp_url, queues);
    }
}

/// Every key and value in the SQLite database at `path`, read straight from the file.
pub fn db_values_at(path: &std::path::Path) -> std::collections::HashMap<String, f64> {
    let connection =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database");
    let mut statement = connection.prepare("SELECT key, value FROM kv").unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Puts `body` on `queue` as a persistent message, as a hand-crafted or foreign sender would,
/// and waits for RabbitMQ's ack. `channel` must be in confirm mode.
pub async fn publish_raw_to(channel: &lapin::Channel, queue: &str, body: &[u8]) {
    publish_persistent_to(channel, queue, lapin::BasicProperties::default(), body).await
}

/// Puts `body` on `queue` with `properties`, made persistent, as a front-server publishes a
/// write, and waits for RabbitMQ's ack. `channel` must be in confirm mode.
pub async fn publish_persistent_to(
    channel: &lapin::Channel,
    queue: &str,
    properties: lapin::BasicProperties,
    body: &[u8],
) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            properties.with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

/// Takes `count` messages off `queue` (acked as taken), waiting for them up to [`PATIENCE`]:
/// what a test reads from a dead-letter queue.
pub async fn take_messages(
    channel: &lapin::Channel,
    queue: &str,
    count: usize,
) -> Vec<lapin::message::Delivery> {
    let started = tokio::time::Instant::now();
    let mut taken = Vec::new();
    while taken.len() < count {
        assert!(
            started.elapsed() < PATIENCE,
            "only {} of {count} messages in {queue}",
            taken.len()
        );
        let got = channel
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get");
        match got {
            Some(message) => taken.push(message.delivery),
            None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    taken
}

/// The URL that reads `key` from the front-server at `address`, the key percent-encoded.
pub fn key_url(address: &str, key: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("key", key)
        .finish();
    format!("{address}/api?{query}")
}

/// A server's settings, parsed by the server's own parser from environment-variable names and
/// values, as its binary reads them from its environment: a setting not named here has the
/// binary's default (or the value this process's environment gives it).
pub fn settings<C: clap::Parser>(env: &[(&str, &str)]) -> C {
    let command = C::command();
    let mut args = vec![command.get_name().to_owned()];
    for (name, value) in env {
        let long = command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|env| env == *name))
            .and_then(|arg| arg.get_long())
            .unwrap_or_else(|| panic!("{} has no setting {name}", command.get_name()));
        args.push(format!("--{long}={value}"));
    }
    C::try_parse_from(&args).unwrap_or_else(|err| panic!("settings {args:?}: {err}"))
}

/// Checks a condition until it holds (`Ok`) and returns what it gave; fails after [`PATIENCE`]
/// with `what` and the last `Err`. For conditions nothing signals, such as a row appearing in
/// SQLite or a queue's length.
pub async fn eventually<T, F>(what: &str, mut check: impl FnMut() -> F) -> T
where
    F: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "never true: {what}; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `rabbitmqctl` (the broker's own admin tool, on this machine) and returns its output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl: these tests need the local RabbitMQ's admin tool");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// The body of a response, parsed, with its status.
pub async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, body)
}

/// Asserts a failure answer: its status and the contract's exact message.
pub async fn assert_failure(response: reqwest::Response, status: u16, message: &str) {
    let (actual, body) = json(response).await;
    assert_eq!(
        (actual, &body["success"]),
        (status, &serde_json::json!(false)),
        "{body}"
    );
    assert_eq!(body["message"], message, "{body}");
}
