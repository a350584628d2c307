//! One running copy of the system for the benchmark: a back-server and a front-server started
//! from the release binaries, on a queue and a database of their own, as the system tests' server
//! processes ([`ServerProcess`]), which also say what `/proc` knows of their CPU time and memory.

use anyhow::{Context, bail};
use kv_e2e::server::ServerProcess;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a server may take to start or stop before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct Settings {
    pub bin_dir: PathBuf,
    pub amqp_url: String,
    pub queue: String,
    pub db_path: PathBuf,
    pub logs: PathBuf,
}

/// The settings every server of the benchmark gets: its broker and queue, and quiet logs (the
/// front-server logs every request at `info`).
fn common(settings: &Settings) -> [(&str, &str); 3] {
    [
        ("AMQP_URL", settings.amqp_url.as_str()),
        ("KV_QUEUE", settings.queue.as_str()),
        ("RUST_LOG", "warn"),
    ]
}

fn start(name: &'static str, settings: &Settings, env: &[(&str, &str)]) -> ServerProcess {
    let mut all = common(settings).to_vec();
    all.extend_from_slice(env);
    ServerProcess::start(name, &settings.bin_dir.join(name), &all)
}

pub fn start_back(settings: &Settings) -> ServerProcess {
    let db_path = settings.db_path.display().to_string();
    start(
        "back-server",
        settings,
        &[
            ("DB_PATH", &db_path),
            // Any free port: the default one may be taken by a back-server already running here.
            ("ADMIN_LISTEN", "127.0.0.1:0"),
        ],
    )
}

/// Starts a front-server on a free port; returns it with its base URL.
pub fn start_front(settings: &Settings) -> anyhow::Result<(ServerProcess, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let server = start("front-server", settings, &[("FRONT_LISTEN", &listen)]);
    Ok((server, format!("http://{listen}")))
}

/// Waits until a read goes all the way through: the front answers a GET of a key nobody wrote
/// with `404`, which only the back-server can have said.
pub async fn wait_until_serving(base_url: &str) -> anyhow::Result<()> {
    let address = base_url.trim_start_matches("http://");
    let started = Instant::now();
    loop {
        if let Ok(status) = get_status(address, "/api?key=kv-bench-ready").await
            && status == 404
        {
            return Ok(());
        }
        if started.elapsed() > PATIENCE {
            bail!("the system at {base_url} did not answer reads within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of one HTTP/1.1 GET: enough for a readiness check, without an HTTP client crate.
async fn get_status(address: &str, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .context("a status line")?;
    Ok(status.parse()?)
}

/// Waits until SQLite at `path` has its table, i.e. the back-server has migrated it.
pub async fn wait_for_schema(path: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let ready = rusqlite::Connection::open(path).and_then(|db| {
            db.query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'kv'",
                [],
                |row| row.get::<_, i64>(0),
            )
        });
        if matches!(ready, Ok(1)) {
            return Ok(());
        }
        if started.elapsed() > PATIENCE {
            bail!(
                "the back-server did not create its table in {}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
