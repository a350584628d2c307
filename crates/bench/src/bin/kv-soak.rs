//! `kv-soak`: the chaos soak (`scripts/soak`). Runs the system from the release binaries (a
//! back-server and two front-servers) under mixed load for a while, and meanwhile injects faults
//! on a seeded schedule: the back-server killed and restarted, connections closed by RabbitMQ,
//! RabbitMQ's application stopped and started, disk alarms, and each server frozen with SIGSTOP.
//! At the end it audits every request against the guarantees and exits 1 on any finding.
//!
//! It stops and starts the local RabbitMQ's application and raises alarms on it: run it on a
//! broker nothing else uses.

use clap::Parser;
use kv_bench::soak::{self, Record};
use kv_bench::system::{self, Settings};
use kv_e2e::app::rabbitmqctl;
use kv_e2e::broker_faults::{DiskAlarm, close_connections_of};
use kv_e2e::queues::{delete_queues_now, ready_messages};
use kv_e2e::rng::Rng;
use kv_e2e::server::ServerProcess;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The chaos soak: the system under load and a seeded schedule of faults, then an audit of every
/// request.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    broker: kv_bench::Broker,
    #[command(flatten)]
    binaries: kv_bench::BinDir,
    /// How long the load and the faults go on.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// The schedule's seed; a seed replays the same schedule. Random by default.
    #[arg(long)]
    seed: Option<u64>,
    /// Clients that write, each to keys of its own.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Clients that read random keys of all writers.
    #[arg(long, default_value_t = 8)]
    readers: usize,
    /// Keys per writer.
    #[arg(long, default_value_t = 16)]
    keys: usize,
}

/// The front-servers' deadline; a request may take it plus [`ALLOWANCE`], and no more.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const ALLOWANCE: Duration = Duration::from_secs(2);
/// How long the system may take to serve writes again after a fault has ended.
const HEAL_WITHIN: Duration = Duration::from_secs(30);

/// The faults the schedule picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillBack,
    CloseConnections,
    RestartBroker,
    DiskAlarm,
    FreezeBack,
    FreezeFront,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::KillBack,
        Fault::CloseConnections,
        Fault::RestartBroker,
        Fault::DiskAlarm,
        Fault::FreezeBack,
        Fault::FreezeFront,
    ];

    fn describe(self) -> &'static str {
        match self {
            Fault::KillBack => "back-server killed (-9) and restarted 1-3 s later",
            Fault::CloseConnections => "RabbitMQ closes every connection of the servers",
            Fault::RestartBroker => {
                "RabbitMQ's application stopped for 2-5 s (stop_app, start_app)"
            }
            Fault::DiskAlarm => "disk alarm for 3-8 s",
            Fault::FreezeBack => "back-server frozen (SIGSTOP) for 2-6 s",
            Fault::FreezeFront => "one front-server frozen (SIGSTOP) for 1-1.5 s",
        }
    }
}

/// The running system.
struct System {
    settings: Settings,
    back: ServerProcess,
    fronts: Vec<(ServerProcess, String)>,
}

impl System {
    async fn start(settings: Settings) -> anyhow::Result<Self> {
        let back = system::start_back(&settings);
        let mut fronts = Vec::new();
        for _ in 0..2 {
            let (front, url) = system::start_front(&settings)?;
            system::wait_until_serving(&url, 1).await?;
            fronts.push((front, url));
        }
        Ok(Self {
            settings,
            back,
            fronts,
        })
    }

    fn urls(&self) -> Vec<String> {
        self.fronts.iter().map(|(_, url)| url.clone()).collect()
    }

    /// Injects `fault` and returns once it is over.
    async fn inject(&mut self, fault: Fault, rng: &mut Rng) {
        let pause = |low: u64, high: u64, rng: &mut Rng| {
            Duration::from_millis(low + rng.below((high - low) as usize) as u64)
        };
        match fault {
            Fault::KillBack => {
                self.back.kill().await;
                tokio::time::sleep(pause(1000, 3000, rng)).await;
                self.save_log(&self.back);
                self.back = system::start_back(&self.settings);
            }
            Fault::CloseConnections => {
                close_connections_of(self.settings.layout.base());
            }
            Fault::RestartBroker => {
                rabbitmqctl(&["stop_app"]);
                tokio::time::sleep(pause(2000, 5000, rng)).await;
                rabbitmqctl(&["start_app"]);
            }
            Fault::DiskAlarm => {
                let alarm = DiskAlarm::raise();
                tokio::time::sleep(pause(3000, 8000, rng)).await;
                alarm.clear();
            }
            Fault::FreezeBack => {
                self.back.signal("STOP");
                tokio::time::sleep(pause(2000, 6000, rng)).await;
                self.back.signal("CONT");
            }
            Fault::FreezeFront => {
                let (front, _) = &self.fronts[rng.below(self.fronts.len())];
                front.signal("STOP");
                tokio::time::sleep(pause(1000, 1500, rng)).await;
                front.signal("CONT");
            }
        }
    }

    /// How long until every front-server takes a write and answers a read again (a read needs
    /// the back-server too).
    async fn heal_time(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let http = reqwest::Client::new();
        for url in self.urls() {
            let write = || {
                http.post(format!("{url}/api"))
                    .header("Content-Type", "application/json")
                    .body(r#"{"soak.heal": 1}"#)
            };
            let read = || http.get(format!("{url}/api?key=soak.heal"));
            for request in [&write as &dyn Fn() -> reqwest::RequestBuilder, &read] {
                loop {
                    let answered = request().timeout(Duration::from_secs(10)).send().await;
                    if answered.is_ok_and(|response| response.status() == 200) {
                        break;
                    }
                    anyhow::ensure!(
                        started.elapsed() < HEAL_WITHIN,
                        "{url} did not serve within {HEAL_WITHIN:?} of the fault's end"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Ok(started.elapsed())
    }

    fn save_log(&self, server: &ServerProcess) {
        let path = self
            .settings
            .logs
            .join(format!("{}.{}.log", server.name(), server.pid()));
        let _ = std::fs::write(path, server.log());
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        for (front, _) in &mut self.fronts {
            front.stop(Duration::from_secs(30)).await?;
        }
        self.back.stop(Duration::from_secs(30)).await?;
        for (front, _) in &self.fronts {
            self.save_log(front);
        }
        self.save_log(&self.back);
        Ok(())
    }
}

/// The soak's queues, deleted however the soak ends (its logs and database stay in the work
/// directory).
struct Queues {
    amqp_url: String,
    names: Vec<String>,
}

impl Drop for Queues {
    fn drop(&mut self) {
        delete_queues_now(&self.amqp_url, std::mem::take(&mut self.names));
    }
}

/// What happened to one fault class.
#[derive(Default)]
struct Tally {
    injected: u32,
    slowest_heal: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |time| time.as_nanos() as u64)
    });
    let bin_dir = args.binaries.resolve()?;
    let work = tempfile::Builder::new()
        .prefix("kv-soak.")
        .tempdir()?
        .keep();
    let settings = Settings {
        bin_dir,
        amqp_url: args.broker.amqp_url.clone(),
        layout: system::default_layout(format!("kv.soak.{}", std::process::id())),
        db_path: work.join("kv.db"),
        logs: work.clone(),
    };
    eprintln!(
        "kv-soak: seed {seed}, {} min, {} writers and {} readers over 2 front-servers; logs and database in {}",
        args.minutes,
        args.writers,
        args.readers,
        work.display()
    );
    let (queue, amqp_url, db_path) = (
        settings.layout.base().to_owned(),
        settings.amqp_url.clone(),
        settings.db_path.clone(),
    );
    let _queues = Queues {
        amqp_url: amqp_url.clone(),
        names: vec![queue.clone(), kv_protocol::dead_letter_queue(&queue)],
    };
    // Tests of this machine wait while the soak takes RabbitMQ away, and the soak waits for them.
    let _broker = kv_e2e::app::lock_broker(kv_e2e::app::Lock::Exclusive);
    let mut system = System::start(settings).await?;
    let front_pids: Vec<u32> = system.fronts.iter().map(|(front, _)| front.pid()).collect();

    let stop = CancellationToken::new();
    let load = soak::start(
        &system.urls(),
        args.writers,
        args.readers,
        args.keys,
        seed,
        stop.clone(),
    );
    let sampler = sample_memory(front_pids, stop.clone());

    let mut rng = Rng(seed);
    let mut tallies: BTreeMap<Fault, Tally> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(args.minutes * 60);
    let mut outcome = Ok(());
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10_000 + rng.below(15_000) as u64)).await;
        let fault = *rng.pick(&Fault::ALL);
        eprintln!("kv-soak: {:?}", fault);
        system.inject(fault, &mut rng).await;
        match system.heal_time().await {
            Ok(healed) => {
                let tally = tallies.entry(fault).or_default();
                tally.injected += 1;
                tally.slowest_heal = tally.slowest_heal.max(healed);
            }
            Err(err) => {
                outcome = Err(err.context(format!("after {fault:?}")));
                break;
            }
        }
    }
    stop.cancel();
    let mut records: Vec<Record> = Vec::new();
    for task in load {
        records.extend(task.await?);
    }
    let samples = sampler.await?;

    // Let the back-server apply what is queued, then stop everything and look.
    let drained = Instant::now();
    while ready_messages(&amqp_url, &queue).await? > 0 && drained.elapsed() < HEAL_WITHIN {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    system.stop().await?;
    let left = ready_messages(&amqp_url, &queue).await?;
    let stored = read_table(&db_path)?;
    let findings = soak::audit(&records, &stored, RPC_TIMEOUT + ALLOWANCE);

    println!("kv-soak: seed {seed}, {} minutes", args.minutes);
    println!("| fault | injected | slowest return to service |");
    println!("|---|---|---|");
    for (fault, tally) in &tallies {
        println!(
            "| {} | {} | {:.2} s |",
            fault.describe(),
            tally.injected,
            tally.slowest_heal.as_secs_f64()
        );
    }
    println!(
        "requests: {} writes ({} acknowledged), {} reads ({} answered); by status: {:?}",
        findings.writes,
        findings.acked,
        findings.reads,
        findings.answered_reads,
        findings.by_status
    );
    println!(
        "slowest request: {:.2} s (allowed {:.0} s)",
        findings.slowest.as_secs_f64(),
        (RPC_TIMEOUT + ALLOWANCE).as_secs_f64()
    );
    let (first, second) = halves(&samples);
    println!(
        "front-servers' largest RSS: first half {:.1} MB, second half {:.1} MB",
        first as f64 / 1e6,
        second as f64 / 1e6
    );
    let flat = second <= first + first / 10;
    println!(
        "lost writes: {}; stale reads: {}; requests over the deadline: {}; messages left: {left}; memory flat: {flat}",
        findings.lost.len(),
        findings.stale.len(),
        findings.slow.len()
    );
    for finding in findings
        .lost
        .iter()
        .chain(&findings.stale)
        .chain(&findings.slow)
        .take(20)
    {
        println!("  {finding}");
    }
    outcome?;
    anyhow::ensure!(
        findings.is_clean() && left == 0 && flat,
        "the soak found problems"
    );
    Ok(())
}

/// Samples the front-servers' resident memory every second until `stop`.
fn sample_memory(pids: Vec<u32>, stop: CancellationToken) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.is_cancelled() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss: u64 = pids
                .iter()
                .filter_map(|pid| kv_e2e::server::memory_of(*pid).ok())
                .map(|memory| memory.rss)
                .max()
                .unwrap_or(0);
            samples.push(rss);
        }
        samples
    })
}

/// The largest sample of each half.
fn halves(samples: &[u64]) -> (u64, u64) {
    let (first, second) = samples.split_at(samples.len() / 2);
    let max = |half: &[u64]| half.iter().copied().max().unwrap_or(0);
    (max(first), max(second))
}

fn read_table(path: &std::path::Path) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let connection =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut statement = connection.prepare("SELECT key, value FROM kv")?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
