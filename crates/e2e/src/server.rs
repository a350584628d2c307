//! The servers as real processes, for the tests that kill, stop or starve them and for the
//! benchmark. Each process's stderr is kept so that a test can await a log line; a process still
//! running when its handle is dropped is killed, so a failing test leaves none behind.

use crate::PATIENCE;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The debug binaries of both servers, the back-server's with fault injection compiled in
/// (`FAILPOINTS`). Cargo builds a package's tests with only that package's binaries, so these are
/// built once per test run, by cargo itself; when nothing changed this takes a fraction of a
/// second. The release binaries never have fault injection: only this build asks for it.
///
/// Async, so that a build (long in a fresh checkout) never blocks a test's runtime: a server
/// running in that runtime would stop sending heartbeats, and RabbitMQ would close its connection.
pub async fn binaries() -> &'static Binaries {
    static BINARIES: tokio::sync::OnceCell<Binaries> = tokio::sync::OnceCell::const_new();
    BINARIES
        .get_or_init(|| async {
            let output = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--package",
                    "front-server",
                    "--package",
                    "back-server",
                ])
                .args(["--bins", "--features", "back-server/failpoints"])
                .arg("--message-format=json")
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stderr(Stdio::inherit())
                .output()
                .await
                .expect("run cargo build");
            assert!(output.status.success(), "cargo build of the servers failed");
            let executable = |name: &str| -> PathBuf {
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                    .find(|message| message["target"]["name"] == name)
                    .and_then(|message| Some(message["executable"].as_str()?.into()))
                    .unwrap_or_else(|| panic!("cargo reports no {name} executable"))
            };
            Binaries {
                front: executable("front-server"),
                back: executable("back-server"),
            }
        })
        .await
}

/// Where [`binaries`] are.
pub struct Binaries {
    pub front: PathBuf,
    pub back: PathBuf,
}

pub struct ServerProcess {
    name: &'static str,
    /// Kept apart from `child`, which forgets it once the process has been waited for.
    pid: u32,
    child: Child,
    log: watch::Receiver<Vec<String>>,
    /// Copies stderr into `log` until the process closes it.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `binary` with `env` added to this process's environment, logging at `info` unless
    /// `env` sets `RUST_LOG`.
    pub fn start(name: &'static str, binary: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary)
            // Tests pass every setting they depend on; a settings file named in the developer's
            // shell would quietly fill in the rest (a smaller body limit, say).
            .env_remove("CONFIG_FILE")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", binary.display()));
        let (lines, log) = watch::channel(Vec::new());
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                lines.send_modify(|lines| lines.push(line));
            }
        });
        let pid = child.id().expect("a process just started has an id");
        Self {
            name,
            pid,
            child,
            log,
            reader: Some(reader),
        }
    }

    /// The name it was started with, for messages about it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for a log line containing `needle` and returns it.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let mut log = self.log.clone();
        let found = tokio::time::timeout(
            PATIENCE,
            log.wait_for(|lines| lines.iter().any(|line| line.contains(needle))),
        )
        .await;
        match found {
            Ok(Ok(lines)) => lines.iter().find(|l| l.contains(needle)).unwrap().clone(),
            _ => panic!("{} never logged {needle:?}:\n{}", self.name, self.log()),
        }
    }

    /// Waits for the log line containing `needle` and returns the `address` it names, in text
    /// (`address=…`) or JSON (`"address":"…"`) format.
    pub async fn wait_for_address(&self, needle: &str) -> String {
        let line = self.wait_for_log(needle).await;
        line.split("address=")
            .nth(1)
            .or_else(|| line.split(r#""address":""#).nth(1))
            .and_then(|rest| rest.split([' ', '"']).next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned()
    }

    /// The log's lines, each parsed as a JSON object (`LOG_FORMAT=json`); fails on any other line.
    pub fn json_log(&self) -> Vec<serde_json::Value> {
        self.log
            .borrow()
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|_| {
                    panic!("{}: a log line that is not JSON: {line}", self.name)
                })
            })
            .collect()
    }

    /// Resident memory now and at its peak, from the kernel's own accounting.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid())
    }

    /// Total CPU time the process has used so far, user and system.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time_of(self.pid())
    }

    pub fn log(&self) -> String {
        self.log.borrow().join("\n")
    }

    /// Sends `signal` (a name such as `TERM`, `KILL`, `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {}", self.pid());
    }

    /// Stops the process as an operator would (SIGTERM) and checks that it exits 0 within
    /// `within`.
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        self.signal("TERM");
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| {
                format!("{} did not stop within {within:?} of SIGTERM", self.name)
            })??;
        self.read_to_the_end().await;
        anyhow::ensure!(status.success(), "{} exited with {status}", self.name);
        Ok(())
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("{} still runs after {within:?}:\n{}", self.name, self.log()),
        };
        self.read_to_the_end().await;
        status
    }

    /// Once the process has exited: waits until its last lines are in the log, which the reader
    /// may still be copying when the exit is seen.
    async fn read_to_the_end(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(PATIENCE, reader).await;
        }
    }

    /// `kill -9`: no shutdown, no goodbye to RabbitMQ, nothing flushed.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}

/// Total CPU time process `pid` has used so far, user and system, from `/proc/<pid>/stat`: for
/// our servers and for processes we did not start, such as the broker's Erlang VM.
pub fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
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

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Now (`VmRSS`).
    pub rss: u64,
    /// The most it ever had (`VmHWM`).
    pub peak: u64,
}

/// Resident memory of process `pid` now and at its peak, from `/proc/<pid>/status`.
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

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
