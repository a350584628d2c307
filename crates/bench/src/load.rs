//! Load from wrk: runs it with one of our Lua scripts and reads back what the script printed:
//! rates, latency percentiles, failures, and which writes were acknowledged.

use anyhow::{Context, bail};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The wrk scripts, compiled into the binary so that it runs from anywhere.
const SCRIPTS: [(&str, &str); 4] = [
    ("post.lua", include_str!("../lua/post.lua")),
    ("get.lua", include_str!("../lua/get.lua")),
    ("mixed.lua", include_str!("../lua/mixed.lua")),
    ("bare.lua", include_str!("../lua/bare.lua")),
];

#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// A POST of a new key per request; arguments: a key prefix unique to the run.
    Post,
    /// A GET of an existing key; arguments: a key prefix and the range of numbers after it.
    Get,
    /// POST then GET of the same key, for a fixed number of requests; arguments: a key prefix
    /// unique to the run and the requests per connection.
    Mixed,
    /// `GET /health`, which touches no broker: the front-server's bare HTTP rate; no arguments.
    Bare,
}

impl Script {
    fn file(self) -> &'static str {
        match self {
            Self::Post => SCRIPTS[0].0,
            Self::Get => SCRIPTS[1].0,
            Self::Mixed => SCRIPTS[2].0,
            Self::Bare => SCRIPTS[3].0,
        }
    }
}

/// What one wrk run measured.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub connections: usize,
    pub requests: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// Answers with a status of 400 or more.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
    /// Reads in a mixed run that did not return the value just written.
    pub stale_reads: u64,
    pub writes: Vec<Writes>,
}

impl Run {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

impl Run {
    /// Arguments of the GET script that read keys this POST run wrote: a run of acknowledged
    /// keys of its first thread. (Its key 1 may never have been sent: wrk calls the script once
    /// to check it.)
    pub fn read_back_args(&self) -> anyhow::Result<[String; 3]> {
        let first_writes = self.writes.first().context("the POST run wrote keys")?;
        let acknowledged = |n: &u64| !first_writes.unacknowledged.contains(n);
        let low = (1..=first_writes.sent)
            .find(acknowledged)
            .context("the POST run wrote nothing")?;
        let high = (low..=first_writes.sent)
            .take_while(acknowledged)
            .last()
            .unwrap_or(low);
        Ok([
            first_writes.prefix.clone(),
            low.to_string(),
            high.to_string(),
        ])
    }
}

/// The writes of one wrk thread: keys `<prefix><n>` with value `n`, for `n` in `1..=sent`,
/// of which all but `unacknowledged` got a 200.
#[derive(Debug, Clone)]
pub struct Writes {
    pub prefix: String,
    pub sent: u64,
    pub ok: u64,
    pub unacknowledged: HashSet<u64>,
}

impl Writes {
    /// Every write that got a 200, as (key, value).
    pub fn acknowledged(&self) -> impl Iterator<Item = (String, f64)> + '_ {
        (1..=self.sent)
            .filter(|n| !self.unacknowledged.contains(n))
            .map(|n| (format!("{}{n}", self.prefix), n as f64))
    }
}

pub struct Wrk {
    scripts: PathBuf,
    url: String,
}

impl Wrk {
    /// Writes the scripts into `dir` and aims wrk at `url`.
    pub fn new(dir: &Path, url: &str) -> anyhow::Result<Self> {
        for (name, text) in SCRIPTS {
            std::fs::write(dir.join(name), text)?;
        }
        Ok(Self {
            scripts: dir.to_owned(),
            url: url.to_owned(),
        })
    }

    /// Runs wrk for `duration`, with no more threads than cores: on a small machine, a thread
    /// per connection costs the system under test more CPU than the requests themselves.
    pub fn run(
        &self,
        script: Script,
        connections: usize,
        duration: Duration,
        args: &[&str],
    ) -> anyhow::Result<Run> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = connections.min(cores);
        let wrk = self.spawn(script, connections, threads, duration, args)?;
        self.finish(wrk.wait_with_output()?, connections)
    }

    /// Runs the mixed script until each connection has made `per_connection` requests. Each
    /// connection has a thread of its own, which the script needs to check its reads.
    pub fn run_mixed(&self, connections: usize, per_connection: u64) -> anyhow::Result<Run> {
        let finished = tempfile::tempdir_in(&self.scripts)?;
        let dir = finished.path().display().to_string();
        let per_connection = per_connection.to_string();
        let args = ["mixed", per_connection.as_str(), dir.as_str()];
        let mut wrk = self.spawn(
            Script::Mixed,
            connections,
            connections,
            Duration::from_secs(24 * 3600),
            &args,
        )?;
        // wrk's main thread sleeps for the whole duration even once its threads have stopped;
        // SIGINT ends the sleep, and wrk then reports as usual.
        loop {
            if let Some(status) = wrk.try_wait()? {
                bail!("wrk stopped early ({status})");
            }
            if std::fs::read_dir(finished.path())?.count() >= connections {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Command::new("kill")
            .args(["-INT", &wrk.id().to_string()])
            .status()?;
        self.finish(wrk.wait_with_output()?, connections)
    }

    fn spawn(
        &self,
        script: Script,
        connections: usize,
        threads: usize,
        duration: Duration,
        args: &[&str],
    ) -> anyhow::Result<std::process::Child> {
        Command::new("wrk")
            .arg(format!("--threads={threads}"))
            .arg(format!("--connections={connections}"))
            .arg(format!("--duration={}s", duration.as_secs().max(1)))
            .arg("--timeout=10s")
            .arg(format!(
                "--script={}",
                self.scripts.join(script.file()).display()
            ))
            .arg(&self.url)
            .arg("--")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("run wrk (scripts/bench installs it)")
    }

    fn finish(&self, output: std::process::Output, connections: usize) -> anyhow::Result<Run> {
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "wrk failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse(&stdout, connections).with_context(|| format!("read wrk's output:\n{stdout}"))
    }
}

fn parse(stdout: &str, connections: usize) -> anyhow::Result<Run> {
    let mut run = Run {
        connections,
        ..Run::default()
    };
    let mut summary = false;
    for line in stdout.lines() {
        let mut fields = line.split_whitespace();
        let number =
            |field: Option<&str>| -> anyhow::Result<u64> { Ok(field.context("a field")?.parse()?) };
        match fields.next() {
            Some("KV-SUMMARY") => {
                run.elapsed = Duration::from_micros(number(fields.next())?);
                run.requests = number(fields.next())?;
                run.p50 = Duration::from_micros(number(fields.next())?);
                run.p99 = Duration::from_micros(number(fields.next())?);
                run.non_2xx = number(fields.next())?;
                run.socket_errors = number(fields.next())?;
                summary = true;
            }
            Some("KV-THREAD") => {
                let prefix = fields.next().context("a prefix")?.to_owned();
                let sent = number(fields.next())?;
                let ok = number(fields.next())?;
                let unacknowledged = fields
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
                run.writes.push(Writes {
                    prefix,
                    sent,
                    ok,
                    unacknowledged,
                });
            }
            Some("KV-STALE") => run.stale_reads = number(fields.next())?,
            _ => {}
        }
    }
    anyhow::ensure!(summary, "no KV-SUMMARY line");
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_scripts_print() {
        let stdout = "Running 10s test @ http://127.0.0.1:8080\n\
                      KV-THREAD post-0- 5 3 2,5\n\
                      KV-THREAD post-1- 2 2 \n\
                      KV-STALE 0\n\
                      KV-SUMMARY 10000000 7 650 2500 1 0\n";

        let run = parse(stdout, 2).unwrap();

        assert_eq!(run.requests, 7);
        assert_eq!(run.elapsed, Duration::from_secs(10));
        assert_eq!(
            (run.p50, run.p99),
            (Duration::from_micros(650), Duration::from_micros(2500))
        );
        assert_eq!((run.non_2xx, run.socket_errors), (1, 0));
        let acknowledged: Vec<_> = run.writes.iter().flat_map(Writes::acknowledged).collect();
        assert_eq!(
            acknowledged,
            [
                ("post-0-1".to_owned(), 1.0),
                ("post-0-3".to_owned(), 3.0),
                ("post-0-4".to_owned(), 4.0),
                ("post-1-1".to_owned(), 1.0),
                ("post-1-2".to_owned(), 2.0),
            ]
        );
    }

    #[test]
    fn output_without_a_summary_is_an_error() {
        assert!(parse("wrk: unable to connect\n", 1).is_err());
    }
}
