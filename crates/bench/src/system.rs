//! One running copy of the system for the benchmark: a back-server and a front-server started
//! from the release binaries, on a queue and a database of their own, and what `/proc` says
//! about their CPU time and memory.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

pub struct Server {
    name: &'static str,
    child: Child,
}

impl Server {
    fn spawn(
        name: &'static str,
        settings: &Settings,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let log = std::fs::File::create(settings.logs.join(format!("{name}.log")))?;
        let child = Command::new(settings.bin_dir.join(name))
            .env("AMQP_URL", &settings.amqp_url)
            .env("KV_QUEUE", &settings.queue)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} (build it with `cargo build --release`)", name))?;
        Ok(Self { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server as an operator would (SIGTERM) and checks that it exits 0 in time.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "could not signal {}", self.name);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "{} exited with {status}", self.name);
                return Ok(());
            }
            if started.elapsed() > PATIENCE {
                let _ = self.child.kill();
                bail!("{} did not stop within {PATIENCE:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Total CPU time the process has used so far, user and system.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // The command name, in parentheses, may hold spaces: count fields after its end.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("a /proc stat line")?
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(Duration::from_secs_f64(
            ticks as f64 / clock_ticks_per_second(),
        ))
    }

    /// Resident memory now and at its peak, in bytes.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid())
    }
}

/// Resident memory of process `pid` now and at its peak, in bytes.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("{name} in /proc status"))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// A server the benchmark did not stop (it failed midway) is killed rather than left running.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn start_back(settings: &Settings) -> anyhow::Result<Server> {
    Server::spawn(
        "back-server",
        settings,
        &[
            ("DB_PATH", settings.db_path.display().to_string()),
            // Any free port: the default one may be taken by a back-server already running here.
            ("ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
        ],
    )
}

/// Starts a front-server on a free port; returns it with its base URL.
pub fn start_front(settings: &Settings) -> anyhow::Result<(Server, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::spawn(
        "front-server",
        settings,
        &[("FRONT_LISTEN", listen.clone())],
    )?;
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
