//! The servers as real processes, for the tests that kill, stop or starve them. Each process's
//! stderr is kept so tests can await a log line; a process still running when its handle is
//! dropped is killed, so a failing test leaves none behind.

use crate::helpers::PATIENCE;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub fn front_server_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_front-server"))
}

/// The back-server binary with fault injection compiled in (`FAILPOINTS`). It belongs to another
/// package, so Cargo does not build it for this one's tests: build it once per test run. Cargo's
/// build lock is free while tests run, and when nothing changed this takes a fraction of a second.
///
/// Async, so that a build (long in a fresh checkout) never blocks a test's runtime: a server
/// running in that runtime would stop sending heartbeats, and RabbitMQ would close its connection.
pub async fn back_server_binary() -> &'static Path {
    static BINARY: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    BINARY
        .get_or_init(|| async {
            let output = Command::new(env!("CARGO"))
                .args(["build", "--package", "back-server", "--bin", "back-server"])
                .args(["--features", "failpoints", "--message-format=json"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stderr(Stdio::inherit())
                .output()
                .await
                .expect("run cargo build");
            assert!(output.status.success(), "cargo build of back-server failed");
            String::from_utf8(output.stdout)
                .unwrap()
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find_map(|message| Some(message["executable"].as_str()?.into()))
                .expect("cargo reports the back-server executable")
        })
        .await
}

pub struct ServerProcess {
    name: &'static str,
    child: Child,
    log: watch::Receiver<Vec<String>>,
}

impl ServerProcess {
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
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                lines.send_modify(|lines| lines.push(line));
            }
        });
        Self { name, child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process runs")
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

    /// Waits for the log line containing `needle` that reports a bound address
    /// (`address=127.0.0.1:PORT`) and returns that address.
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

    /// Resident memory in KiB, from the kernel's own accounting (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {path}: {err}"));
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .expect("VmRSS is reported");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
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

    /// Waits for the process to exit, at most `within`.
    pub async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("{} still runs after {within:?}:\n{}", self.name, self.log()),
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
