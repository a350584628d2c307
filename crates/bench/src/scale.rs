//! The scale-out matrix (`kv-bench --scale`): POST then GET at one connection count for each
//! partition count and queue type on one broker, and with quorum queues on a cluster, each against
//! the broker's limits measured in the same run for that queue type and broker. Per configuration
//! it reports the CPU time per request of the front-server, of the back-servers (summed) and of
//! the broker's Erlang VMs (summed over a cluster's nodes): on a small machine where everything
//! shares the cores, throughput stops growing with partitions once the CPU is spent, and CPU per
//! request per component is what says what N partitions on N machines would carry.

use crate::check::{self, Audit};
use crate::load::{Run, Script, Wrk};
use crate::probe::{self, Limits};
use crate::system::{self, MachineCpu, Settings};
use anyhow::Context;
use kv_e2e::queues::{delete_queues, ready_messages};
use kv_e2e::server::{ServerProcess, cpu_time_of};
use kv_protocol::{Layout, QueueType, dead_letter_queue};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a server may take to stop, and the back-servers to apply what RabbitMQ confirmed.
const PATIENCE: Duration = Duration::from_secs(60);

/// A broker the matrix runs on.
#[derive(Debug, Clone)]
pub struct Broker {
    /// "1 node" or "3-node cluster", for the table.
    pub name: String,
    /// One URL or a cluster's comma-separated list, as the servers take it.
    pub amqp_url: String,
    /// The OS pids of its Erlang VMs, whose CPU time is the broker's; empty if unknown.
    pub pids: Vec<u32>,
}

impl Broker {
    /// The broker at `amqp_url`, its VM's pid asked of `rabbitmqctl` (which names the local node).
    pub fn local(amqp_url: &str) -> Self {
        let pid = Command::new("rabbitmqctl")
            .args(["eval", "os:getpid()."])
            .output()
            .ok()
            .and_then(|output| parse_pid(&String::from_utf8_lossy(&output.stdout)));
        if pid.is_none() {
            eprintln!("kv-bench: no pid from `rabbitmqctl eval 'os:getpid().'`: no broker CPU");
        }
        Self {
            name: "1 node".into(),
            amqp_url: amqp_url.to_owned(),
            pids: pid.into_iter().collect(),
        }
    }

    /// The cluster at `urls`, each node's VM pid from `<script> pid N` (`scripts/cluster`).
    pub fn cluster(urls: &str, script: &Path) -> anyhow::Result<Self> {
        let nodes = urls.split(',').count();
        let pids = (1..=nodes)
            .map(|node| {
                let output = Command::new(script)
                    .args(["pid", &node.to_string()])
                    .output()
                    .with_context(|| format!("run {} pid {node}", script.display()))?;
                parse_pid(&String::from_utf8_lossy(&output.stdout))
                    .with_context(|| format!("{} pid {node} names no pid", script.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            name: format!("{nodes}-node cluster"),
            amqp_url: urls.to_owned(),
            pids,
        })
    }

    fn cpu_time(&self) -> anyhow::Result<Duration> {
        self.pids.iter().map(|&pid| cpu_time_of(pid)).sum()
    }
}

/// The first number in `text`: `rabbitmqctl eval` prints the pid as an Erlang string, `"123"`.
fn parse_pid(text: &str) -> Option<u32> {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|word| !word.is_empty())?
        .parse()
        .ok()
}

pub struct Matrix<'a> {
    pub bin_dir: &'a Path,
    pub work: &'a Path,
    pub connections: usize,
    pub measured: Duration,
    pub warmup: Duration,
    pub probe: Duration,
    pub partitions: &'a [u32],
    /// (broker, queue type) pairs, in the order they run.
    pub brokers: Vec<(Broker, QueueType)>,
}

/// One configuration's measured POST and GET.
pub struct Row {
    pub broker: String,
    pub queue_type: QueueType,
    pub partitions: u32,
    pub method: &'static str,
    pub run: Run,
    pub limit: f64,
    pub cpu: Cpu,
}

/// CPU time spent during a run, by whom.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub front: Duration,
    pub backs: Duration,
    /// `None` when the broker's pids are unknown.
    pub broker: Option<Duration>,
    /// Every core's busy time (`/proc/stat`), whoever used it: wrk and anything else running.
    pub machine: Duration,
}

pub struct Report {
    pub limits: Vec<(String, QueueType, Limits)>,
    pub rows: Vec<Row>,
    pub audits: Vec<(String, Audit)>,
    pub queues_left: Vec<(String, u32)>,
}

impl Report {
    pub fn data_checks_pass(&self) -> bool {
        self.audits.iter().all(|(_, audit)| audit.is_clean())
            && self.queues_left.iter().all(|(_, left)| *left == 0)
    }
}

impl Matrix<'_> {
    pub async fn run(&self) -> anyhow::Result<Report> {
        let id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis();
        let mut report = Report {
            limits: Vec::new(),
            rows: Vec::new(),
            audits: Vec::new(),
            queues_left: Vec::new(),
        };
        for (broker, queue_type) in &self.brokers {
            eprintln!(
                "kv-bench: probing {} with {queue_type} queues ({} s each)…",
                broker.name,
                self.probe.as_secs()
            );
            let limits =
                probe::measure(&broker.amqp_url, self.probe, self.connections, *queue_type).await?;
            report
                .limits
                .push((broker.name.clone(), *queue_type, limits));
            for &partitions in self.partitions {
                let name = format!("{}, {queue_type}, {partitions} partition(s)", broker.name);
                eprintln!("kv-bench: {name}…");
                let dir_name = format!(
                    "{}-{queue_type}-p{partitions}",
                    broker.name.replace(' ', "-")
                );
                let layout = Layout::new(
                    format!("kv.bench.{}.{id}.{dir_name}", std::process::id()),
                    partitions,
                    *queue_type,
                );
                let system =
                    Scaled::start(self.bin_dir, self.work, &dir_name, broker, layout).await?;
                let post = system.measure(
                    broker,
                    || {
                        system.wrk.run(
                            Script::Post,
                            self.connections,
                            self.warmup,
                            &[&format!("warm-{dir_name}")],
                        )
                    },
                    || {
                        system
                            .wrk
                            .run(Script::Post, self.connections, self.measured, &["post"])
                    },
                )?;
                let get_args = post.1.read_back_args()?;
                let get_args = get_args.each_ref().map(String::as_str);
                let get = system.measure(
                    broker,
                    || {
                        system
                            .wrk
                            .run(Script::Get, self.connections, self.warmup, &get_args)
                    },
                    || {
                        system
                            .wrk
                            .run(Script::Get, self.connections, self.measured, &get_args)
                    },
                )?;
                // The warm-up's writes are acknowledged writes too: audit them with the rest.
                let audit =
                    check::audit_when_applied(&system.db_paths, &[&post.1, &post.2], PATIENCE)
                        .await?;
                report.audits.push((name.clone(), audit));
                let left = system.stop().await?;
                report.queues_left.push((name, left));
                for (method, (cpu, run, _), limit) in [
                    ("POST", post, limits.durable_writes_per_sec),
                    ("GET", get, limits.round_trips_per_sec),
                ] {
                    report.rows.push(Row {
                        broker: broker.name.clone(),
                        queue_type: *queue_type,
                        partitions,
                        method,
                        run,
                        limit,
                        cpu,
                    });
                }
            }
        }
        Ok(report)
    }
}

/// A running partitioned system: a back-server per partition and one front-server.
struct Scaled {
    front: ServerProcess,
    backs: Vec<ServerProcess>,
    wrk: Wrk,
    logs: PathBuf,
    db_paths: Vec<PathBuf>,
    layout: Layout,
    amqp_url: String,
    /// Whether [`Scaled::stop`] deleted the queues; otherwise dropping it does.
    queues_deleted: bool,
}

impl Scaled {
    async fn start(
        bin_dir: &Path,
        work: &Path,
        name: &str,
        broker: &Broker,
        layout: Layout,
    ) -> anyhow::Result<Self> {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir)?;
        let settings = Settings {
            bin_dir: bin_dir.to_owned(),
            amqp_url: broker.amqp_url.clone(),
            layout,
            db_path: dir.join("kv.db"),
            logs: dir,
        };
        let backs = (0..settings.layout.partitions())
            .map(|partition| system::start_back_of(&settings, partition))
            .collect();
        let (front, url) = system::start_front(&settings)?;
        let wrk = Wrk::new(&settings.logs, &url)?;
        let system = Self {
            front,
            backs,
            wrk,
            db_paths: settings.db_paths(),
            logs: settings.logs,
            layout: settings.layout,
            amqp_url: settings.amqp_url,
            queues_deleted: false,
        };
        system::wait_until_serving(&url, system.layout.partitions()).await?;
        Ok(system)
    }

    /// Runs `warmup`, then `load`, noting the CPU time each component spent during `load`.
    /// Returns that, the run, and the warm-up's run, whose writes the audit checks too.
    fn measure(
        &self,
        broker: &Broker,
        warmup: impl FnOnce() -> anyhow::Result<Run>,
        load: impl FnOnce() -> anyhow::Result<Run>,
    ) -> anyhow::Result<(Cpu, Run, Run)> {
        let warm = warmup()?;
        let before = self.cpu(broker)?;
        let run = load()?;
        let after = self.cpu(broker)?;
        let cpu = Cpu {
            front: after.front - before.front,
            backs: after.backs - before.backs,
            broker: after.broker.zip(before.broker).map(|(a, b)| a - b),
            machine: after.machine - before.machine,
        };
        Ok((cpu, run, warm))
    }

    /// Each component's CPU time so far.
    fn cpu(&self, broker: &Broker) -> anyhow::Result<Cpu> {
        Ok(Cpu {
            front: self.front.cpu_time()?,
            backs: self
                .backs
                .iter()
                .map(ServerProcess::cpu_time)
                .sum::<anyhow::Result<Duration>>()?,
            broker: if broker.pids.is_empty() {
                None
            } else {
                Some(broker.cpu_time()?)
            },
            machine: MachineCpu::now()?.busy,
        })
    }

    /// Stops every server with SIGTERM (each must exit 0), then counts what is left in every
    /// partition's request queue and deletes the queues.
    async fn stop(mut self) -> anyhow::Result<u32> {
        self.front.stop(PATIENCE).await?;
        for back in &mut self.backs {
            back.stop(PATIENCE).await?;
        }
        let url = probe::first_node(&self.amqp_url);
        let mut left = 0;
        for queue in self.layout.queues() {
            left += ready_messages(url, &queue).await?;
        }
        delete_queues(url, &self.queues()).await?;
        self.queues_deleted = true;
        Ok(left)
    }

    /// Every partition's request queue and dead-letter queue.
    fn queues(&self) -> Vec<String> {
        self.layout
            .queues()
            .flat_map(|queue| [dead_letter_queue(&queue), queue])
            .collect()
    }
}

impl Drop for Scaled {
    /// Saves the servers' logs; after a failed run, also stops the servers and deletes the
    /// queues, which would otherwise be left on a broker others use.
    fn drop(&mut self) {
        for (i, server) in std::iter::once(&self.front).chain(&self.backs).enumerate() {
            let path = self.logs.join(format!("{}-{i}.log", server.name()));
            if let Err(err) = std::fs::write(&path, server.log()) {
                eprintln!("kv-bench: cannot save {}: {err}", path.display());
            }
        }
        if !self.queues_deleted {
            let queues = self.queues();
            let servers = std::iter::once(&mut self.front).chain(&mut self.backs);
            system::abandon(servers, probe::first_node(&self.amqp_url), queues);
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Microseconds of `cpu` per request of `run`.
fn per_request(cpu: Duration, run: &Run) -> f64 {
    cpu.as_secs_f64() * 1e6 / run.requests.max(1) as f64
}

impl Report {
    pub fn print(&self, connections: usize) {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        println!();
        println!("RabbitMQ limits, measured in this run:");
        for (broker, queue_type, limits) in &self.limits {
            println!(
                "  {broker}, {queue_type}: durable writes {:.0} msg/s; request/reply with {} in flight {:.0} round trips/s",
                limits.durable_writes_per_sec, limits.in_flight, limits.round_trips_per_sec
            );
        }
        println!();
        println!(
            "At {connections} connections. CPU µs per request: front-server, back-servers (sum), RabbitMQ (sum of its nodes), machine (all {cores} cores, wrk and anything else included). Capacity: {cores} cores ÷ (front + back + broker) CPU per request, what one {cores}-core machine per partition would carry without the load generator."
        );
        println!();
        println!(
            "| {:<16} | {:<7} | {:>5} | {:<6} | {:>7} | {:>7} | {:>7} | {:>8} | {:>6} | {:>5} | {:>6} | {:>6} | {:>7} | {:>8} |",
            "broker",
            "queues",
            "parts",
            "method",
            "req/s",
            "p50 ms",
            "p99 ms",
            "of limit",
            "non2xx",
            "front",
            "backs",
            "broker",
            "machine",
            "capacity"
        );
        println!(
            "|{:-<18}|{:-<9}|{:->7}|{:-<8}|{:->9}|{:->9}|{:->9}|{:->10}|{:->8}|{:->7}|{:->8}|{:->8}|{:->9}|{:->10}|",
            "", "", "", "", "", "", "", "", "", "", "", "", "", ""
        );
        for row in &self.rows {
            let run = &row.run;
            let front = per_request(row.cpu.front, run);
            let backs = per_request(row.cpu.backs, run);
            let broker = row.cpu.broker.map(|cpu| per_request(cpu, run));
            let capacity = broker
                .map(|broker| format!("{:.0}", cores as f64 * 1e6 / (front + backs + broker)))
                .unwrap_or_else(|| "-".into());
            println!(
                "| {:<16} | {:<7} | {:>5} | {:<6} | {:>7.0} | {:>7.2} | {:>7.2} | {:>8.2} | {:>6} | {:>5.1} | {:>6.1} | {:>6} | {:>7.1} | {:>8} |",
                row.broker,
                row.queue_type.as_str(),
                row.partitions,
                row.method,
                run.per_second(),
                ms(run.p50),
                ms(run.p99),
                run.per_second() / row.limit,
                run.non_2xx + run.socket_errors,
                front,
                backs,
                broker.map_or_else(|| "-".into(), |b| format!("{b:.1}")),
                per_request(row.cpu.machine, run),
                capacity,
            );
        }
        println!();
        crate::check::print_data_checks(
            &self.audits,
            &self.queues_left,
            "in the request queues after every server stopped",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pid_rabbitmqctl_prints() {
        assert_eq!(parse_pid("\"2966\"\n"), Some(2966));
        assert_eq!(parse_pid("23159\n"), Some(23159));
        assert_eq!(parse_pid("Error: unable to perform an operation"), None);
    }
}
