//! `kv-bench`: the benchmark behind the README's Performance section. It measures RabbitMQ's own
//! limits on this machine, starts the system from the release binaries on a fresh queue and
//! database, drives it with wrk, prints one table, and fails if any acknowledged write is missing
//! from SQLite or any request is left in the queue. `scripts/bench` builds and runs it. With
//! `--scale` it runs only the scale-out matrix instead (partitions × queue types, and a cluster;
//! see `kv_bench::scale`).

use clap::Parser;
use kv_bench::check::{self, Audit};
use kv_bench::load::{Run, Script, Wrk};
use kv_bench::probe::{self, Limits};
use kv_bench::system::{self, MachineCpu, Settings};
use kv_e2e::metrics::Scrape;
use kv_e2e::queues::{delete_queues, ready_messages};
use kv_e2e::server::{Memory, ServerProcess, memory_of};
use kv_protocol::{Layout, QueueType};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Benchmarks the key-value system on this machine against RabbitMQ's own limits.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    broker: kv_bench::Broker,
    #[command(flatten)]
    binaries: kv_bench::BinDir,
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of load before each measured run, not counted.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Connection counts to measure POST and GET at; the largest also drives the long runs.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    connections: Vec<usize>,
    /// Requests in the long mixed run (half POST, half GET).
    #[arg(long, default_value_t = 1_000_000)]
    mixed_requests: u64,
    /// Rows put in the table before the large-table runs.
    #[arg(long, default_value_t = 1_000_000)]
    preload_keys: u64,
    /// Seconds each RabbitMQ limits probe runs.
    #[arg(long, default_value_t = 5)]
    probe_seconds: u64,
    /// Run only the scale-out matrix: POST then GET at the largest connection count for each of
    /// `--partitions` with each of `--queue-types` on the broker at `AMQP_URL`, and with quorum
    /// queues on the cluster at `--cluster-urls` if given.
    #[arg(long)]
    scale: bool,
    /// Partition counts of the scale-out matrix: one back-server per partition.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    partitions: Vec<u32>,
    /// Queue types of the scale-out matrix on the single broker.
    #[arg(long, value_delimiter = ',', default_value = "classic,quorum")]
    queue_types: Vec<QueueType>,
    /// A cluster's comma-separated node URLs (`scripts/cluster urls`): the scale-out matrix also
    /// runs there, with quorum queues.
    #[arg(long)]
    cluster_urls: Option<String>,
    /// The script that names each cluster node's OS pid (`<script> pid N`), whose CPU time is the
    /// cluster's.
    #[arg(long, default_value = "scripts/cluster")]
    cluster_script: PathBuf,
}

impl Args {
    fn measured(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup)
    }

    fn most_connections(&self) -> usize {
        self.connections.iter().copied().max().unwrap_or(64)
    }
}

/// A measured run with the servers' CPU time per request during it.
struct Row {
    label: String,
    run: Run,
    front_cpu: Duration,
    back_cpu: Duration,
    /// How many requests each message to RabbitMQ carried, on average.
    per_message: Option<f64>,
    /// The machine's CPU time meanwhile, all of it.
    machine: MachineCpu,
}

/// The label of the run that measures the front-server's bare HTTP rate.
const BARE: &str = "HTTP only /health";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.connections.sort_unstable();
    args.connections.dedup();
    anyhow::ensure!(
        !args.connections.is_empty(),
        "--connections needs at least one count"
    );
    let bin_dir = args.binaries.resolve()?;
    let work = tempfile::Builder::new().prefix("kv-bench.").tempdir()?;
    eprintln!(
        "kv-bench: working in {} (server logs are kept there on failure)",
        work.path().display()
    );

    if args.scale {
        return scale(&args, &bin_dir, work).await;
    }

    eprintln!(
        "kv-bench: probing RabbitMQ's own limits ({} s each)…",
        args.probe_seconds
    );
    let before = MachineCpu::now()?;
    // Measured on queues of the type the servers use, so that the fractions compare like with
    // like.
    let limits = probe::measure(
        &args.broker.amqp_url,
        Duration::from_secs(args.probe_seconds),
        args.most_connections(),
        system::default_layout(String::new()).queue_type(),
    )
    .await?;
    let probed = MachineCpu::now()?.since(&before);

    let outcome = benchmark(&args, &bin_dir, work.path()).await.map(|report| {
        report.print(&args, &limits, &probed);
        report.data_checks_pass()
    });
    keep_on_failure(work, outcome)
}

/// Keeps the work directory, and says where, if the run failed or a data check did (`outcome`
/// says whether they all passed).
fn keep_on_failure(work: tempfile::TempDir, outcome: anyhow::Result<bool>) -> anyhow::Result<()> {
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => {
            let kept = work.keep();
            anyhow::bail!(
                "DATA CHECK FAILED: see above; logs and databases in {}",
                kept.display()
            )
        }
        Err(err) => {
            let kept = work.keep();
            Err(err.context(format!("logs and databases kept in {}", kept.display())))
        }
    }
}

/// The scale-out matrix alone; fails, keeping the work directory, if any data check does.
async fn scale(args: &Args, bin_dir: &Path, work: tempfile::TempDir) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.partitions.iter().all(|&n| n > 0),
        "--partitions counts start at 1"
    );
    let local = kv_bench::scale::Broker::local(&args.broker.amqp_url);
    let mut brokers: Vec<_> = args
        .queue_types
        .iter()
        .map(|&queue_type| (local.clone(), queue_type))
        .collect();
    if let Some(urls) = &args.cluster_urls {
        let cluster = kv_bench::scale::Broker::cluster(urls, &args.cluster_script)?;
        brokers.push((cluster, QueueType::Quorum));
    }
    let connections = args.most_connections();
    let matrix = kv_bench::scale::Matrix {
        bin_dir,
        work: work.path(),
        connections,
        measured: args.measured(),
        warmup: args.warmup(),
        probe: Duration::from_secs(args.probe_seconds),
        partitions: &args.partitions,
        brokers,
    };
    let outcome = matrix.run().await.map(|report| {
        println!();
        println!("kv-bench --scale on {}", machine());
        report.print(connections);
        report.data_checks_pass()
    });
    keep_on_failure(work, outcome)
}

struct Report {
    rows: Vec<Row>,
    mixed: Row,
    /// The front-server's `/metrics` after the fresh table's runs, for its requests per message.
    per_message: Scrape,
    large_table: Vec<Row>,
    audits: Vec<(String, Audit)>,
    stale_reads: u64,
    queues_left: Vec<(String, u32)>,
    front_peak: u64,
    back_peak: u64,
    /// Largest RSS of (front, back) in the first and in the second half of the mixed run.
    mixed_rss: [(u64, u64); 2],
    /// How many RSS samples (one a second) the mixed run gave: too few say nothing about growth.
    mixed_rss_samples: usize,
}

async fn benchmark(args: &Args, bin_dir: &Path, work: &Path) -> anyhow::Result<Report> {
    let id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let most = args.most_connections();

    // Part 1: a fresh table. POST and GET at each connection count, then the long mixed run.
    let instance = Instance::start(bin_dir, work, "fresh", &args.broker.amqp_url, id).await?;
    let mut rows = Vec::new();
    let mut warmups = Vec::new();
    for &connections in &args.connections {
        eprintln!("kv-bench: POST, {connections} connections…");
        let prefix = format!("post-c{connections}");
        let warm = format!("warm-{prefix}");
        warmups.push(
            instance
                .wrk
                .run(Script::Post, connections, args.warmup(), &[&warm])?,
        );
        rows.push(
            instance
                .measure("POST", |wrk| {
                    wrk.run(Script::Post, connections, args.measured(), &[&prefix])
                })
                .await?,
        );
    }
    let get_args = rows[0].run.read_back_args()?;
    let get_args = get_args.each_ref().map(String::as_str);
    for &connections in &args.connections {
        eprintln!("kv-bench: GET, {connections} connections…");
        instance
            .wrk
            .run(Script::Get, connections, args.warmup(), &get_args)?;
        rows.push(
            instance
                .measure("GET", |wrk| {
                    wrk.run(Script::Get, connections, args.measured(), &get_args)
                })
                .await?,
        );
    }
    eprintln!("kv-bench: HTTP only (GET /health), {most} connections…");
    instance.wrk.run(Script::Bare, most, args.warmup(), &[])?;
    let bare = instance
        .measure(BARE, |wrk| {
            wrk.run(Script::Bare, most, args.measured(), &[])
        })
        .await?;

    eprintln!(
        "kv-bench: mixed run of {} requests, {most} connections…",
        args.mixed_requests
    );
    let sampler = RssSampler::start(instance.front.pid(), instance.back.pid());
    let mixed = instance
        .measure(&format!("mixed {}", args.mixed_requests), |wrk| {
            wrk.run_mixed(most, args.mixed_requests / most as u64)
        })
        .await;
    let samples = sampler.stop();
    let mixed = mixed?;
    let stale_reads = mixed.run.stale_reads;
    let half = samples.len() / 2;
    let max_of = |samples: &[(u64, u64)]| {
        samples.iter().fold((0, 0), |(front, back), (f, b)| {
            (front.max(*f), back.max(*b))
        })
    };
    let mixed_rss = [max_of(&samples[..half]), max_of(&samples[half..])];
    let mixed_rss_samples = samples.len();

    eprintln!("kv-bench: checking that every acknowledged write is in SQLite…");
    let mut written: Vec<&Run> = rows.iter().map(|row| &row.run).collect();
    written.extend(warmups.iter());
    written.push(&mixed.run);
    let fresh_audit =
        check::audit_when_applied(&instance.db_paths, &written, Duration::from_secs(60)).await?;
    let (front_peak, back_peak) = instance.peak_memory()?;
    let per_message = instance.scrape().await?;
    let fresh_left = instance.stop().await?;

    // Part 2: the same load on a table that already holds `preload_keys` rows.
    eprintln!("kv-bench: a table of {} rows…", args.preload_keys);
    let large = Instance::start_preloaded(
        bin_dir,
        work,
        "large",
        &args.broker.amqp_url,
        id,
        args.preload_keys,
    )
    .await?;
    let mut large_table = Vec::new();
    let post_label = format!("POST, {} rows", args.preload_keys);
    let warm = large
        .wrk
        .run(Script::Post, most, args.warmup(), &["warm-large"])?;
    large_table.push(
        large
            .measure(&post_label, |wrk| {
                wrk.run(Script::Post, most, args.measured(), &["post-large"])
            })
            .await?,
    );
    let count = args.preload_keys.to_string();
    let get_label = format!("GET, {} rows", args.preload_keys);
    large
        .wrk
        .run(Script::Get, most, args.warmup(), &["pre-", "1", &count])?;
    large_table.push(
        large
            .measure(&get_label, |wrk| {
                wrk.run(Script::Get, most, args.measured(), &["pre-", "1", &count])
            })
            .await?,
    );
    let mut large_written: Vec<&Run> = large_table.iter().map(|row| &row.run).collect();
    large_written.push(&warm);
    let large_audit =
        check::audit_when_applied(&large.db_paths, &large_written, Duration::from_secs(60)).await?;
    let large_left = large.stop().await?;
    let large_name = format!("table of {} rows", args.preload_keys);

    rows.push(bare);
    Ok(Report {
        rows,
        mixed,
        per_message,
        large_table,
        audits: vec![
            ("fresh table".into(), fresh_audit),
            (large_name.clone(), large_audit),
        ],
        stale_reads,
        queues_left: vec![("fresh table".into(), fresh_left), (large_name, large_left)],
        front_peak,
        back_peak,
        mixed_rss,
        mixed_rss_samples,
    })
}

/// One running system: its servers, queue, database and load generator.
struct Instance {
    front: ServerProcess,
    back: ServerProcess,
    /// The front-server's base URL.
    url: String,
    client: reqwest::Client,
    wrk: Wrk,
    /// Where the servers' logs are saved when the instance ends, however it ends.
    logs: PathBuf,
    db_paths: Vec<PathBuf>,
    layout: Layout,
    amqp_url: String,
    /// Whether [`Instance::stop`] deleted the queues; otherwise dropping the instance does.
    queues_deleted: bool,
}

impl Instance {
    fn settings(
        bin_dir: &Path,
        work: &Path,
        name: &str,
        amqp_url: &str,
        id: u128,
    ) -> anyhow::Result<Settings> {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(Settings {
            bin_dir: bin_dir.to_owned(),
            amqp_url: amqp_url.to_owned(),
            layout: system::default_layout(format!("kv.bench.{}.{id}.{name}", std::process::id())),
            db_path: dir.join("kv.db"),
            logs: dir,
        })
    }

    async fn start(
        bin_dir: &Path,
        work: &Path,
        name: &str,
        amqp_url: &str,
        id: u128,
    ) -> anyhow::Result<Self> {
        let settings = Self::settings(bin_dir, work, name, amqp_url, id)?;
        Self::serve(settings).await
    }

    /// Starts the back-server once so that it creates its table, fills the table straight
    /// through SQLite, then starts the system on it.
    async fn start_preloaded(
        bin_dir: &Path,
        work: &Path,
        name: &str,
        amqp_url: &str,
        id: u128,
        rows: u64,
    ) -> anyhow::Result<Self> {
        let settings = Self::settings(bin_dir, work, name, amqp_url, id)?;
        let mut back = system::start_back(&settings);
        system::wait_for_schema(&settings.db_path).await?;
        back.stop(SERVER_PATIENCE).await?;
        let mut db = rusqlite::Connection::open(&settings.db_path)?;
        let transaction = db.transaction()?;
        {
            let mut insert = transaction.prepare("INSERT INTO kv (key, value) VALUES (?1, ?2)")?;
            for n in 1..=rows {
                insert.execute(rusqlite::params![format!("pre-{n}"), n as f64])?;
            }
        }
        transaction.commit()?;
        drop(db);
        Self::serve(settings).await
    }

    async fn serve(settings: Settings) -> anyhow::Result<Self> {
        let back = system::start_back(&settings);
        let (front, url) = system::start_front(&settings)?;
        system::wait_until_serving(&url, 1).await?;
        let wrk = Wrk::new(&settings.logs, &url)?;
        Ok(Self {
            front,
            back,
            url,
            client: reqwest::Client::new(),
            wrk,
            db_paths: settings.db_paths(),
            logs: settings.logs,
            layout: settings.layout,
            amqp_url: settings.amqp_url,
            queues_deleted: false,
        })
    }

    /// Runs `load` and notes the CPU time each server spent meanwhile, and how many requests
    /// each message carried.
    async fn measure(
        &self,
        label: &str,
        load: impl FnOnce(&Wrk) -> anyhow::Result<Run>,
    ) -> anyhow::Result<Row> {
        let metrics_before = self.scrape().await?;
        let (front_before, back_before) = (self.front.cpu_time()?, self.back.cpu_time()?);
        let machine_before = MachineCpu::now()?;
        let run = load(&self.wrk)?;
        let machine = MachineCpu::now()?.since(&machine_before);
        let (front_after, back_after) = (self.front.cpu_time()?, self.back.cpu_time()?);
        let metrics_after = self.scrape().await?;
        let delta = |name: &str| metrics_after.value(name, &[]) - metrics_before.value(name, &[]);
        let messages = delta(PER_MESSAGE_COUNT);
        Ok(Row {
            label: label.to_owned(),
            run,
            front_cpu: front_after - front_before,
            back_cpu: back_after - back_before,
            per_message: (messages > 0.0).then(|| delta(PER_MESSAGE_SUM) / messages),
            machine,
        })
    }

    /// The front-server's `/metrics`.
    async fn scrape(&self) -> anyhow::Result<Scrape> {
        let page = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Scrape::parse(page))
    }

    fn peak_memory(&self) -> anyhow::Result<(u64, u64)> {
        let (Memory { peak: front, .. }, Memory { peak: back, .. }) =
            (self.front.memory()?, self.back.memory()?);
        Ok((front, back))
    }

    /// Stops both servers with SIGTERM (each must exit 0), then counts what is left in the
    /// request queue (redelivered messages included) and deletes the queues.
    async fn stop(mut self) -> anyhow::Result<u32> {
        self.front.stop(SERVER_PATIENCE).await?;
        self.back.stop(SERVER_PATIENCE).await?;
        let left = ready_messages(&self.amqp_url, &self.layout.queue(0)).await?;
        delete_queues(&self.amqp_url, &self.queues()).await?;
        self.queues_deleted = true;
        Ok(left)
    }

    fn queues(&self) -> [String; 2] {
        let queue = self.layout.queue(0);
        let dead = kv_protocol::dead_letter_queue(&queue);
        [queue, dead]
    }
}

impl Drop for Instance {
    /// Saves the servers' logs; after a failed run, also stops the servers and deletes the
    /// queues, which would otherwise be left on a broker others use.
    fn drop(&mut self) {
        for server in [&self.front, &self.back] {
            let path = self.logs.join(format!("{}.log", server.name()));
            if let Err(err) = std::fs::write(&path, server.log()) {
                eprintln!("kv-bench: cannot save {}: {err}", path.display());
            }
        }
        if !self.queues_deleted {
            let queues = self.queues().into();
            system::abandon([&mut self.front, &mut self.back], &self.amqp_url, queues);
        }
    }
}

/// How long a server may take to stop before the benchmark gives up.
const SERVER_PATIENCE: Duration = Duration::from_secs(30);

/// Samples both servers' resident memory once a second on a thread of its own.
struct RssSampler {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Vec<(u64, u64)>>,
}

impl RssSampler {
    fn start(front: u32, back: u32) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_secs(1))
            {
                if let (Ok(front), Ok(back)) = (memory_of(front), memory_of(back)) {
                    samples.push((front.rss, back.rss));
                }
            }
            samples
        });
        Self { stop, thread }
    }

    fn stop(self) -> Vec<(u64, u64)> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

const MB: f64 = 1024.0 * 1024.0;

const PER_MESSAGE: &str = "kv_requests_per_message";
const PER_MESSAGE_SUM: &str = "kv_requests_per_message_sum";
const PER_MESSAGE_COUNT: &str = "kv_requests_per_message_count";

impl Report {
    fn data_checks_pass(&self) -> bool {
        self.audits.iter().all(|(_, audit)| audit.is_clean())
            && self.stale_reads == 0
            && self.queues_left.iter().all(|(_, left)| *left == 0)
    }

    fn find(&self, method: &str, connections: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|row| row.label == method && row.run.connections == connections)
    }

    fn print(&self, args: &Args, limits: &Limits, probed: &MachineCpu) {
        let most = args.most_connections();
        println!();
        println!("kv-bench on {}", machine());
        println!(
            "RabbitMQ limits, measured in this run: durable writes {:.0} msg/s; request/reply with {} in flight {:.0} round trips/s (p50 {:.2} ms, p99 {:.2} ms); {:.0}% of the CPU time stolen meanwhile",
            limits.durable_writes_per_sec,
            limits.in_flight,
            limits.round_trips_per_sec,
            ms(limits.round_trip_p50),
            ms(limits.round_trip_p99),
            probed.stolen_percent(),
        );
        println!();
        println!(
            "| {:<18} | {:>5} | {:>8} | {:>8} | {:>8} | {:>7} | {:>6} | {:>8} | {:>7} | {:>14} | {:>13} | {:>7} |",
            "run",
            "conns",
            "req/s",
            "p50 ms",
            "p99 ms",
            "non-2xx",
            "errors",
            "of limit",
            "req/msg",
            "front CPU µs/req",
            "back CPU µs/req",
            "stolen"
        );
        println!(
            "|{:-<20}|{:->7}|{:->10}|{:->10}|{:->10}|{:->9}|{:->8}|{:->10}|{:->9}|{:->18}|{:->17}|{:->9}|",
            "", "", "", "", "", "", "", "", "", "", "", ""
        );
        for row in self
            .rows
            .iter()
            .chain([&self.mixed])
            .chain(&self.large_table)
        {
            let limit = if row.label.starts_with("POST") {
                Some(limits.durable_writes_per_sec)
            } else if row.label.starts_with("GET") {
                Some(limits.round_trips_per_sec)
            } else {
                None
            };
            let fraction = limit
                .map(|limit| format!("{:.2}", row.run.per_second() / limit))
                .unwrap_or_else(|| "-".into());
            let per_request =
                |cpu: Duration| cpu.as_secs_f64() * 1e6 / row.run.requests.max(1) as f64;
            let per_message = row
                .per_message
                .map_or_else(|| "-".into(), |mean| format!("{mean:.1}"));
            println!(
                "| {:<18} | {:>5} | {:>8.0} | {:>8.2} | {:>8.2} | {:>7} | {:>6} | {:>8} | {:>7} | {:>16.1} | {:>15.1} | {:>6.0}% |",
                row.label,
                row.run.connections,
                row.run.per_second(),
                ms(row.run.p50),
                ms(row.run.p99),
                row.run.non_2xx,
                row.run.socket_errors,
                fraction,
                per_message,
                per_request(row.front_cpu),
                per_request(row.back_cpu),
                row.machine.stolen_percent(),
            );
        }
        println!();
        println!(
            "\"of limit\": POST of the durable-write limit, GET of the request/reply limit. \"req/msg\": requests per message to RabbitMQ. \"stolen\": the share of the machine's CPU time the hypervisor gave to other guests during the run (on a shared VM, a run with much of it measured the neighbours as much as the system)."
        );
        if let Some(bare) = self.find(BARE, most) {
            let ceiling = bare.run.per_second();
            let of_bare = |method: &str| {
                self.find(method, most).map_or_else(
                    || "-".into(),
                    |row| format!("{:.2}", row.run.per_second() / ceiling),
                )
            };
            println!(
                "The front-server's bare HTTP rate ({BARE}, {most} connections): {ceiling:.0} req/s; POST reaches {} of it, GET {}.",
                of_bare("POST"),
                of_bare("GET"),
            );
        }
        for (op, what) in [("put", "Writes"), ("get", "Reads")] {
            println!(
                "{what} per message over the fresh table's runs: {}",
                histogram(&self.per_message, op)
            );
        }
        println!();
        println!(
            "Peak RSS: front-server {:.1} MB, back-server {:.1} MB. During the mixed run, largest RSS in the first half: front {:.1} MB, back {:.1} MB; in the second half: front {:.1} MB, back {:.1} MB.",
            self.front_peak as f64 / MB,
            self.back_peak as f64 / MB,
            self.mixed_rss[0].0 as f64 / MB,
            self.mixed_rss[0].1 as f64 / MB,
            self.mixed_rss[1].0 as f64 / MB,
            self.mixed_rss[1].1 as f64 / MB,
        );
        println!();
        check::print_data_checks(
            &self.audits,
            &self.queues_left,
            "in the request queue after both servers stopped",
        );
        let verdict = if self.stale_reads == 0 {
            "ok"
        } else {
            "FAILED"
        };
        println!(
            "  {verdict}: mixed run: {} reads did not see the write acknowledged just before them",
            self.stale_reads
        );

        println!();
        println!("Targets:");
        let target = |met: bool, text: String| {
            println!("  {} {text}", if met { "met   " } else { "MISSED" });
        };
        if let Some(post) = self.find("POST", most) {
            let fraction = post.run.per_second() / limits.durable_writes_per_sec;
            target(
                fraction >= 1.0,
                format!(
                    "POST at {most} connections ≥ 1.0 × the durable-write limit: {fraction:.2}"
                ),
            );
        }
        if let Some(get) = self.find("GET", most) {
            let fraction = get.run.per_second() / limits.round_trips_per_sec;
            target(
                fraction >= 1.2,
                format!("GET at {most} connections ≥ 1.2 × the request/reply limit: {fraction:.2}"),
            );
        }
        if let Some(get) = self.find("GET", 1) {
            target(
                get.run.p50 <= Duration::from_micros(500),
                format!(
                    "GET at 1 connection p50 ≤ 0.5 ms: {:.2} ms",
                    ms(get.run.p50)
                ),
            );
        }
        for method in ["POST", "GET"] {
            if let Some(row) = self.find(method, most) {
                target(
                    row.run.p99 <= Duration::from_millis(10),
                    format!(
                        "{method} at {most} connections p99 ≤ 10 ms: {:.2} ms",
                        ms(row.run.p99)
                    ),
                );
            }
        }
        let peak = self.front_peak.max(self.back_peak) as f64 / MB;
        target(
            peak <= 25.0,
            format!("each server ≤ 25 MB peak RSS: largest {peak:.1} MB"),
        );
        let mixed_clean = self.mixed.run.non_2xx == 0
            && self.mixed.run.socket_errors == 0
            && self.stale_reads == 0;
        let grew = |first: u64, second: u64| second as f64 > first as f64 * 1.05;
        let [(front_first, back_first), (front_second, back_second)] = self.mixed_rss;
        let rss_flat = !grew(front_first, front_second) && !grew(back_first, back_second);
        let judged = self.mixed_rss_samples >= 4;
        target(
            mixed_clean && (rss_flat || !judged),
            format!(
                "the {}-request mixed run: {} non-2xx, {} errors, RSS in its second half within 5% of its first{}",
                self.mixed.run.requests,
                self.mixed.run.non_2xx,
                self.mixed.run.socket_errors,
                if judged {
                    ""
                } else {
                    " (run too short to judge RSS)"
                },
            ),
        );
        for (large, method) in self.large_table.iter().zip(["POST", "GET"]) {
            if let Some(fresh) = self.find(method, most) {
                let ratio = large.run.per_second() / fresh.run.per_second();
                target(
                    ratio >= 0.8,
                    format!(
                        "{method} with {} rows within 20% of a fresh table: {ratio:.2}",
                        args.preload_keys
                    ),
                );
            }
        }
    }
}

/// The histogram of requests per message of `op` (`put` or `get`) in `scrape`, as the share of
/// messages in each bucket, and the mean.
fn histogram(scrape: &Scrape, op: &str) -> String {
    let mut buckets: Vec<(f64, f64)> = scrape
        .samples
        .iter()
        .filter(|(name, labels, _)| {
            name == &format!("{PER_MESSAGE}_bucket")
                && labels.get("op").map(String::as_str) == Some(op)
        })
        .filter_map(|(_, labels, count)| {
            let le = labels.get("le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let messages = scrape.value(&format!("{PER_MESSAGE}_count"), &[("op", op)]);
    if messages == 0.0 {
        return "no messages".into();
    }
    let mut shares = Vec::new();
    let mut below = (0.0, 0.0);
    for (le, cumulative) in buckets {
        let (low, counted) = below;
        let share = (cumulative - counted) / messages;
        if share > 0.0 {
            let range = match (low + 1.0, le) {
                (from, to) if from >= to => format!("{to}"),
                (_, to) if to.is_infinite() => format!("> {low}"),
                (from, to) => format!("{from}–{to}"),
            };
            shares.push(format!("{range}: {:.0}%", share * 100.0));
        }
        below = (le, cumulative);
    }
    let mean = scrape.value(&format!("{PER_MESSAGE}_sum"), &[("op", op)]) / messages;
    format!(
        "{} (mean {mean:.1}, {messages:.0} messages)",
        shares.join(", ")
    )
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The CPU model and core count, for the report's header.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "an unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{model}, {cores} cores")
}
