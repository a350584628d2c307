//! Faults that RabbitMQ inflicts: connections it closes, and faults of the broker as a whole,
//! raised by tests and always undone, even when a test fails: a resource alarm, and a broker
//! frozen in place. Those affect every client of the broker, so the tests that raise them hold
//! the broker lock exclusively ([`Lock::Exclusive`](crate::app::Lock)) and run in a test binary
//! of their own.

use crate::app::rabbitmqctl;

/// Closes, from the broker's side, every connection of a server on `queue` (named
/// `<server>-server (<queue>)`, the back-server's publishing one aside); returns how many.
pub fn close_connections_of(queue: &str) -> usize {
    let listing = rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "--no-table-headers",
        "-q",
    ]);
    let ours: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(&format!("server ({queue})\"")))
        .filter_map(|line| line.split('\t').next())
        .collect();
    for pid in &ours {
        rabbitmqctl(&["close_connection", pid, "closed by a fault-injection test"]);
    }
    ours.len()
}

/// RabbitMQ's free-disk limit on this machine, restored when a disk alarm ends.
const DISK_FREE_LIMIT: &str = "50MB";

/// A disk alarm on the local RabbitMQ for as long as this lives: RabbitMQ blocks every
/// connection that publishes (it says so when a connection next publishes).
pub struct DiskAlarm(());

impl DiskAlarm {
    /// Raises the alarm by asking for more free disk than any machine has.
    pub fn raise() -> Self {
        rabbitmqctl(&["set_disk_free_limit", "1000000GB"]);
        Self(())
    }

    /// Clears the alarm now.
    pub fn clear(self) {}
}

impl Drop for DiskAlarm {
    fn drop(&mut self) {
        rabbitmqctl(&["set_disk_free_limit", DISK_FREE_LIMIT]);
    }
}

/// The local RabbitMQ frozen with SIGSTOP for as long as this lives: its connections stay open
/// and nothing answers, as with a broker that hangs or a network that stops forwarding.
pub struct FrozenBroker {
    pids: Vec<String>,
}

impl FrozenBroker {
    pub fn freeze() -> Self {
        let output = std::process::Command::new("pgrep")
            .args(["-f", "beam.smp"])
            .output()
            .expect("run pgrep");
        let pids: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert!(!pids.is_empty(), "no RabbitMQ process (beam.smp) found");
        signal("STOP", &pids);
        Self { pids }
    }

    /// Lets it run again now.
    pub fn thaw(self) {}
}

impl Drop for FrozenBroker {
    fn drop(&mut self) {
        signal("CONT", &self.pids);
    }
}

fn signal(name: &str, pids: &[String]) {
    let status = std::process::Command::new("kill")
        .arg("-s")
        .arg(name)
        .args(pids)
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {pids:?}");
}
