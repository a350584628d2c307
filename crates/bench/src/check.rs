//! The benchmark's checks that nothing was lost: every acknowledged write is in SQLite with its
//! value (in its own partition's database when there are several), and the request queues are
//! empty at the end.

use crate::load::Run;
use rusqlite::{OpenFlags, OptionalExtension};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How the acknowledged writes of some runs compare with the database.
#[derive(Debug, Default)]
pub struct Audit {
    pub acknowledged: u64,
    pub missing: u64,
    pub wrong_value: u64,
    /// A few of the keys that are missing or wrong, for the report.
    pub examples: Vec<String>,
}

impl Audit {
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.wrong_value == 0
    }
}

/// Prints each audit and each count of messages left behind (`left` says where), as `ok` or
/// `FAILED`, under "Nothing lost:".
pub fn print_data_checks(audits: &[(String, Audit)], queues_left: &[(String, u32)], left: &str) {
    println!("Nothing lost:");
    for (name, audit) in audits {
        let verdict = if audit.is_clean() { "ok" } else { "FAILED" };
        println!(
            "  {verdict}: {name}: {} acknowledged writes, {} missing from SQLite, {} with a wrong value {:?}",
            audit.acknowledged, audit.missing, audit.wrong_value, audit.examples
        );
    }
    for (name, messages) in queues_left {
        let verdict = if *messages == 0 { "ok" } else { "FAILED" };
        println!("  {verdict}: {name}: {messages} messages left {left}");
    }
}

/// Looks up every acknowledged write of `runs` in the database of its partition: `dbs[i]` is
/// partition `i`'s of `dbs.len()`. A key in some other partition's database counts as missing,
/// since reads would never find it there.
pub fn audit(dbs: &[PathBuf], runs: &[&Run]) -> anyhow::Result<Audit> {
    anyhow::ensure!(!dbs.is_empty(), "an audit needs at least one database");
    let connections = dbs
        .iter()
        .map(|db| rusqlite::Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY))
        .collect::<Result<Vec<_>, _>>()?;
    let mut selects = connections
        .iter()
        .map(|db| db.prepare("SELECT value FROM kv WHERE key = ?1"))
        .collect::<Result<Vec<_>, _>>()?;
    let partitions = u32::try_from(dbs.len())?;
    let mut audit = Audit::default();
    for writes in runs.iter().flat_map(|run| &run.writes) {
        for (key, value) in writes.acknowledged() {
            audit.acknowledged += 1;
            let select = &mut selects[kv_protocol::partition_of(&key, partitions) as usize];
            let stored: Option<f64> = select.query_row([&key], |row| row.get(0)).optional()?;
            let problem = match stored {
                None => {
                    audit.missing += 1;
                    "missing"
                }
                Some(stored) if stored != value => {
                    audit.wrong_value += 1;
                    "wrong value"
                }
                Some(_) => continue,
            };
            if audit.examples.len() < 5 {
                audit.examples.push(format!("{key} ({problem})"));
            }
        }
    }
    Ok(audit)
}

/// Audits until nothing is missing or `patience` runs out: the back-servers may still be working
/// through writes that RabbitMQ confirmed a moment ago.
pub async fn audit_when_applied(
    dbs: &[PathBuf],
    runs: &[&Run],
    patience: Duration,
) -> anyhow::Result<Audit> {
    let started = Instant::now();
    loop {
        let audit = audit(dbs, runs)?;
        if audit.is_clean() || started.elapsed() > patience {
            return Ok(audit);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
