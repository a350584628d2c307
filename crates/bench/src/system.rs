//! One running copy of the system for the benchmark: back-servers (one per partition) and a
//! front-server started from the release binaries, on queues and databases of their own, as the
//! system tests' server processes ([`ServerProcess`]), which also say what `/proc` knows of their
//! CPU time and memory.

use anyhow::{Context, bail};
use kv_e2e::queues::delete_queues_now;
use kv_e2e::server::ServerProcess;
use kv_protocol::Layout;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a server may take to start or stop before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct Settings {
    pub bin_dir: PathBuf,
    /// One URL, or a cluster's comma-separated node list.
    pub amqp_url: String,
    /// The request queues: their base name (`KV_QUEUE`), partition count and type.
    pub layout: Layout,
    /// Partition 0's database; see [`Settings::db_path`] for the others.
    pub db_path: PathBuf,
    pub logs: PathBuf,
}

impl Settings {
    /// The database of `partition`: `db_path` itself for partition 0, so that a one-partition
    /// system keeps the file name it always had, else `db_path` with the partition's number.
    pub fn db_path(&self, partition: u32) -> PathBuf {
        if partition == 0 {
            self.db_path.clone()
        } else {
            self.db_path.with_extension(format!("{partition}.db"))
        }
    }

    /// Every partition's database, in partition order, as [`crate::check::audit`] takes them.
    pub fn db_paths(&self) -> Vec<PathBuf> {
        (0..self.layout.partitions())
            .map(|partition| self.db_path(partition))
            .collect()
    }
}

/// One partition named `queue`, of the servers' default queue type: the system as `scripts/run`
/// runs it, which is what the default benchmark and the soak measure.
pub fn default_layout(queue: String) -> Layout {
    Layout::new(queue, 1, kv_runtime::DEFAULT_QUEUE_TYPE)
}

/// The settings every server of the benchmark gets: its broker and queues, and quiet logs (the
/// front-server logs every request at `info`).
fn common(settings: &Settings) -> Vec<(&'static str, String)> {
    vec![
        ("AMQP_URL", settings.amqp_url.clone()),
        ("KV_QUEUE", settings.layout.base().to_owned()),
        ("KV_PARTITIONS", settings.layout.partitions().to_string()),
        ("KV_QUEUE_TYPE", settings.layout.queue_type().to_string()),
        ("RUST_LOG", "warn".to_owned()),
    ]
}

fn start(name: &'static str, settings: &Settings, env: &[(&str, &str)]) -> ServerProcess {
    let common = common(settings);
    let mut all: Vec<(&str, &str)> = common.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(env);
    ServerProcess::start(name, &settings.bin_dir.join(name), &all)
}

/// Starts the back-server of partition 0 (the only one when there is one partition).
pub fn start_back(settings: &Settings) -> ServerProcess {
    start_back_of(settings, 0)
}

/// Starts the back-server of `partition`, on that partition's database.
pub fn start_back_of(settings: &Settings, partition: u32) -> ServerProcess {
    let db_path = settings.db_path(partition).display().to_string();
    let partition = partition.to_string();
    start(
        "back-server",
        settings,
        &[
            ("DB_PATH", &db_path),
            ("KV_PARTITION", &partition),
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

/// Cleans up after a run that did not stop its servers: kills them, so that none declares its
/// queues again, then deletes `queues`, which would otherwise be left on a broker others use.
pub fn abandon<'a>(
    servers: impl IntoIterator<Item = &'a mut ServerProcess>,
    amqp_url: &str,
    queues: Vec<String>,
) {
    for server in servers {
        if server.is_running() {
            server.signal("KILL");
        }
    }
    delete_queues_now(amqp_url, queues);
}

/// Waits until a read goes all the way through to every partition: the front answers a GET of a
/// key nobody wrote in each partition with `404`, which only that partition's back-server can
/// have said.
pub async fn wait_until_serving(base_url: &str, partitions: u32) -> anyhow::Result<()> {
    let address = base_url.trim_start_matches("http://");
    let started = Instant::now();
    let mut waiting: Vec<String> = (0..partitions)
        .map(|partition| {
            (0..)
                .map(|i| format!("kv-bench-ready-{i}"))
                .find(|key| kv_protocol::partition_of(key, partitions) == partition)
                .expect("some key falls in every partition")
        })
        .collect();
    loop {
        let mut still = Vec::new();
        for key in waiting {
            if !matches!(
                get_status(address, &format!("/api?key={key}")).await,
                Ok(404)
            ) {
                still.push(key);
            }
        }
        waiting = still;
        if waiting.is_empty() {
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

/// The whole machine's CPU time so far, all cores together, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    /// Every core's busy time, whoever used it: everything but idle and iowait (steal included).
    pub busy: Duration,
    /// Time the hypervisor gave this machine's cores to other guests while it had work to run.
    pub stolen: Duration,
    /// All of it, idle included.
    pub total: Duration,
}

impl MachineCpu {
    pub fn now() -> anyhow::Result<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat")?)
    }

    /// The times on the first line of `stat`, the text of `/proc/stat`.
    fn parse(stat: &str) -> anyhow::Result<Self> {
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .context("a cpu line in /proc/stat")?
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let [user, nice, system, idle, iowait, irq, softirq, steal] = fields
            .get(..8)
            .and_then(|fields| <[u64; 8]>::try_from(fields).ok())
            .context("eight times on the cpu line of /proc/stat")?;
        let busy = user + nice + system + irq + softirq + steal;
        // USER_HZ is 100 on every Linux kernel built for the common architectures.
        let ticks = |ticks: u64| Duration::from_millis(ticks * 10);
        Ok(Self {
            busy: ticks(busy),
            stolen: ticks(steal),
            total: ticks(busy + idle + iowait),
        })
    }

    /// What was spent between `earlier` and this.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            busy: self.busy.saturating_sub(earlier.busy),
            stolen: self.stolen.saturating_sub(earlier.stolen),
            total: self.total.saturating_sub(earlier.total),
        }
    }

    /// The share of the time that was stolen, in percent: on a shared VM, a run with much of it
    /// measured the neighbours as much as the system.
    pub fn stolen_percent(&self) -> f64 {
        self.stolen.as_secs_f64() * 100.0 / self.total.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machines_times_come_from_the_first_line_of_proc_stat() {
        // user nice system idle iowait irq softirq steal guest guest_nice, in ticks of 10 ms.
        let stat = "cpu  600 10 200 900 50 5 35 200 0 0\ncpu0 300 5 100 450 25 2 18 100 0 0\n";
        let times = MachineCpu::parse(stat).unwrap();
        assert_eq!(times.busy, Duration::from_millis(10_500));
        assert_eq!(times.stolen, Duration::from_millis(2_000));
        assert_eq!(times.total, Duration::from_millis(20_000));

        let earlier = MachineCpu::parse("cpu  500 10 200 800 50 5 35 100 0 0\n").unwrap();
        assert_eq!(times.since(&earlier).stolen_percent(), 100.0 / 3.0);
        assert!(MachineCpu::parse("cpu  1 2 3\n").is_err());
    }
}
