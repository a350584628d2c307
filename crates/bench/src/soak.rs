//! The chaos soak's load and its audit (`kv-soak`, run by `scripts/soak`). Writers and readers
//! run against the front-servers for the whole soak, and every request is recorded: what was
//! asked, what came back, when it started and ended. The audit then holds the records to the
//! contract's guarantees.

use kv_e2e::rng::Rng;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One request and how it ended.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    /// The value written, or read (`None`: not found, or no answer).
    pub value: Option<f64>,
    pub write: bool,
    /// The HTTP status, or 0 if the client got no answer at all.
    pub status: u16,
    pub started: Instant,
    pub took: Duration,
}

/// Starts `writers` writers and `readers` readers, spread over `fronts` (base URLs), until
/// `stop`. Writer `w` owns keys `w<w>.k<0..keys>` and writes each with ever larger values, one
/// request at a time; readers read random keys of all writers.
pub fn start(
    fronts: &[String],
    writers: usize,
    readers: usize,
    keys: usize,
    seed: u64,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<Vec<Record>>> {
    let http = reqwest::Client::builder()
        // Past any deadline of the servers': a request the servers never answer is a finding.
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client");
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (http, stop) = (http.clone(), stop.clone());
        let url = format!("{}/api", fronts[writer % fronts.len()]);
        tasks.push(tokio::spawn(async move {
            let mut records = Vec::new();
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let key = format!("w{writer}.k{}", n % keys as u64);
                let value = n as f64;
                let started = Instant::now();
                let status = http
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .body(serde_json::json!({ &key: value }).to_string())
                    .send()
                    .await
                    .map_or(0, |response| response.status().as_u16());
                records.push(Record {
                    key,
                    value: Some(value),
                    write: true,
                    status,
                    started,
                    took: started.elapsed(),
                });
                if status != 200 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
            }
            records
        }));
    }
    for reader in 0..readers {
        let (http, stop) = (http.clone(), stop.clone());
        let url = format!("{}/api", fronts[(reader + 1) % fronts.len()]);
        let mut rng = Rng(seed ^ (reader as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        tasks.push(tokio::spawn(async move {
            let mut records = Vec::new();
            while !stop.is_cancelled() {
                let key = format!("w{}.k{}", rng.below(writers), rng.below(keys));
                let started = Instant::now();
                let answer = async {
                    // Keys are `w<n>.k<m>`: nothing in them needs escaping.
                    let response = http.get(format!("{url}?key={key}")).send().await?;
                    let status = response.status().as_u16();
                    let body: serde_json::Value = response.json().await?;
                    Ok::<_, reqwest::Error>((status, body["data"].as_f64()))
                };
                let (status, value) = answer.await.unwrap_or((0, None));
                records.push(Record {
                    key,
                    value,
                    write: false,
                    status,
                    started,
                    took: started.elapsed(),
                });
                if !matches!(status, 200 | 404) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            records
        }));
    }
    tasks
}

/// What the audit found.
#[derive(Debug, Default)]
pub struct Findings {
    pub writes: usize,
    pub acked: usize,
    pub reads: usize,
    pub answered_reads: usize,
    pub by_status: HashMap<u16, usize>,
    /// Keys whose value in SQLite is older than their last acknowledged write, or was never
    /// written.
    pub lost: Vec<String>,
    /// Reads that returned an older value than one acknowledged before they started.
    pub stale: Vec<String>,
    /// Requests that took longer than the deadline plus the allowance.
    pub slow: Vec<String>,
    pub slowest: Duration,
}

impl Findings {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.stale.is_empty() && self.slow.is_empty()
    }
}

/// Holds the records to the guarantees: each key in `stored` (SQLite's contents) holds its last
/// acknowledged value or a later attempted one; no read answered with a value older than a
/// write acknowledged before the read began; no request took longer than `limit`.
pub fn audit(records: &[Record], stored: &HashMap<String, f64>, limit: Duration) -> Findings {
    let mut findings = Findings::default();
    // Per key: its acknowledged writes as (ended, value), and every value attempted.
    let mut acked: HashMap<&str, Vec<(Instant, f64)>> = HashMap::new();
    let mut attempted: HashMap<&str, Vec<f64>> = HashMap::new();
    for record in records {
        *findings.by_status.entry(record.status).or_default() += 1;
        findings.slowest = findings.slowest.max(record.took);
        if record.took > limit {
            findings.slow.push(format!("{record:?}"));
        }
        if record.write {
            findings.writes += 1;
            let value = record.value.expect("a write has a value");
            attempted.entry(&record.key).or_default().push(value);
            if record.status == 200 {
                findings.acked += 1;
                acked
                    .entry(&record.key)
                    .or_default()
                    .push((record.started + record.took, value));
            }
        } else {
            findings.reads += 1;
        }
    }
    for (key, writes) in &acked {
        let last = writes
            .iter()
            .map(|(_, value)| *value)
            .fold(f64::MIN, f64::max);
        let tried = &attempted[key];
        match stored.get(*key) {
            Some(held) if *held >= last && tried.contains(held) => {}
            held => findings
                .lost
                .push(format!("{key}: acknowledged {last}, SQLite holds {held:?}")),
        }
    }
    for read in records.iter().filter(|record| !record.write) {
        if !matches!(read.status, 200 | 404) {
            continue;
        }
        findings.answered_reads += 1;
        let newest_before = acked.get(read.key.as_str()).and_then(|writes| {
            writes
                .iter()
                .filter(|(ended, _)| *ended < read.started)
                .map(|(_, value)| *value)
                .reduce(f64::max)
        });
        if let Some(newest) = newest_before
            && read.value.is_none_or(|seen| seen < newest)
        {
            findings.stale.push(format!(
                "{}: read {:?} after {newest} was acknowledged",
                read.key, read.value
            ));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: Option<f64>, write: bool, status: u16, at: Instant) -> Record {
        Record {
            key: key.into(),
            value,
            write,
            status,
            started: at,
            took: Duration::from_millis(1),
        }
    }

    #[test]
    fn the_audit_finds_lost_writes_stale_reads_and_slow_requests() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let records = vec![
            record("a", Some(1.0), true, 200, t0),
            record("a", Some(2.0), true, 200, t0),
            record("b", Some(5.0), true, 200, t0),
            record("a", Some(1.0), false, 200, later),
            record("b", None, false, 404, later),
            Record {
                took: Duration::from_secs(9),
                ..record("c", Some(1.0), true, 503, t0)
            },
        ];
        let stored = HashMap::from([("a".to_owned(), 2.0)]);

        let findings = audit(&records, &stored, Duration::from_secs(7));

        assert_eq!(findings.lost.len(), 1, "{findings:?}");
        assert!(findings.lost[0].starts_with("b:"));
        assert_eq!(findings.stale.len(), 2, "{findings:?}");
        assert_eq!(findings.slow.len(), 1, "{findings:?}");
        assert_eq!((findings.acked, findings.answered_reads), (3, 2));
    }

    #[test]
    fn a_clean_run_is_clean() {
        let t0 = Instant::now();
        let records = vec![
            record("a", Some(1.0), true, 200, t0),
            record("a", Some(2.0), true, 503, t0),
            record("a", Some(2.0), false, 200, t0 + Duration::from_secs(1)),
        ];
        // A write answered 503 may still have been applied: a later value is fine.
        let stored = HashMap::from([("a".to_owned(), 2.0)]);
        assert!(audit(&records, &stored, Duration::from_secs(7)).is_clean());
    }
}
