//! Hostile input against the real `front-server` binary: ten thousand generated requests that
//! must each get the contract's JSON answer, and slow, idle and half-closed connections that
//! must not exhaust the server.
//!
//! The binary runs as a child process, as in production, so that its memory can be read from
//! `/proc` and a crash shows as an exit. The back-server runs in this process, on the queue and
//! database [`spawn_app_with`] makes for the test and cleans up after it.
//!
//! Requests are raw bytes over TCP, because the interesting ones (duplicate `Content-Length`,
//! broken chunks, lowercase methods) are those an HTTP client library refuses to send. Each
//! connection writes its bytes, closes its sending half and reads until the server closes, so a
//! request that leaves the server waiting ends at once instead of at a timeout. The generator is
//! seeded and prints its seed; `HOSTILE_SEED=<seed>` replays a run.
//!
//! This file holds the tests and the workers that drive the run; [`generate`] makes the requests,
//! [`case`] says what each must get, [`wire`] sends them and parses the answers, and [`judge`]
//! checks those answers.

mod case;
mod generate;
mod judge;
mod wire;

use generate::{Req, Rng, generate, key_pool};
use judge::{Ledger, judge_case};
use kv_e2e::app::{Options, PATIENCE, TestApp, spawn_app_with};
use kv_e2e::server::ServerProcess;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wire::{await_close, exchange, get_health, show, silent, slow_loris};

/// The back-server in this process, and the real front-server binary in front of it, which
/// requests go to; `settings` adds to or overrides the binary's environment.
async fn start_system(settings: &[(&str, &str)]) -> (TestApp, ServerProcess) {
    let options = Options {
        front_server: false,
        ..Options::default()
    };
    let mut app = spawn_app_with(options).await;
    let front = app.start_front_process(settings).await;
    (app, front)
}

/// How many requests went out and how they were answered: printed, so a run shows its mix.
#[derive(Default)]
struct Tally {
    requests: usize,
    statuses: BTreeMap<String, usize>,
}

/// What one worker found.
#[derive(Default)]
struct Report {
    ledger: Ledger,
    tally: Tally,
    failures: Vec<String>,
}

/// Sends `cases` generated cases, one connection at a time, and judges each.
async fn run_worker(
    address: SocketAddr,
    rng: &mut Rng,
    pool: &[String],
    cases: usize,
    report: &mut Report,
) {
    for _ in 0..cases {
        let case = generate(rng, pool);
        report.tally.requests += case.parts.len();
        let answers = exchange(address, &case.bytes(), case.head()).await;
        let verdict = answers.and_then(|answers| {
            for answer in &answers {
                *report
                    .tally
                    .statuses
                    .entry(answer.status.to_string())
                    .or_default() += 1;
            }
            if answers.len() < case.parts.len() {
                *report
                    .tally
                    .statuses
                    .entry("unanswered".into())
                    .or_default() += case.parts.len() - answers.len();
            }
            judge_case(&case, &answers, &mut report.ledger)
        });
        if let Err(err) = verdict {
            report
                .failures
                .push(format!("{err}\n    {}", case.describe()));
        }
    }
}

fn seed() -> u64 {
    match std::env::var("HOSTILE_SEED") {
        Ok(seed) => seed.parse().expect("HOSTILE_SEED is a number"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

const WORKERS: usize = 16;
const WARM_UP_CASES: usize = 64;
const CASES: usize = 576;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_hostile_requests_get_json_4xx_and_only_valid_writes_are_stored() {
    let seed = seed();
    eprintln!("hostile: seed {seed} (HOSTILE_SEED={seed} replays this run)");
    let (app, mut front) = start_system(&[]).await;
    let address = app.socket_address();
    let started = Instant::now();

    // Each worker has its own generator and keys, so a seed replays the same cases per worker.
    let mut workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let mut rng = Rng(seed ^ (worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let pool = key_pool(&mut rng, worker);
            (rng, pool, Report::default())
        })
        .collect();
    let mut rss = Vec::new();
    for cases in [WARM_UP_CASES, CASES] {
        let tasks: Vec<_> = workers
            .into_iter()
            .map(|(mut rng, pool, mut report)| {
                tokio::spawn(async move {
                    run_worker(address, &mut rng, &pool, cases, &mut report).await;
                    (rng, pool, report)
                })
            })
            .collect();
        workers = Vec::new();
        for task in tasks {
            workers.push(task.await.expect("a worker panicked"));
        }
        assert!(front.is_running(), "front-server died:\n{}", front.log());
        rss.push(front.memory().expect("read the front-server's memory").rss / 1024);
    }
    let elapsed = started.elapsed();

    let mut ledger = Ledger::default();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for (_, _, report) in workers {
        ledger.0.extend(report.ledger.0);
        tally.requests += report.tally.requests;
        for (status, count) in report.tally.statuses {
            *tally.statuses.entry(status).or_default() += count;
        }
        failures.extend(report.failures);
    }
    let cases = WORKERS * (WARM_UP_CASES + CASES);
    eprintln!(
        "hostile: {cases} connections, {} requests in {elapsed:?}; answers {:?}; RSS {} KiB after warm-up, {} KiB at the end",
        tally.requests, tally.statuses, rss[0], rss[1]
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {cases} connections went wrong, the first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(30)].join("\n")
    );
    assert!(tally.requests >= 10_000);

    // Still serving, and a read through the queue ends after every write acknowledged before it.
    let probe = br#"{"hostile:last": 42.5}"#;
    let request = Req::new("POST", "/api")
        .header("Content-Type", "application/json")
        .sized(probe);
    let answers = exchange(address, &request, None).await.expect("answered");
    assert_eq!(answers.first().map(|a| a.status), Some(200), "{answers:?}");
    let read = Req::new("GET", "/api?key=hostile%3Alast").finish();
    let answers = exchange(address, &read, None).await.expect("answered");
    let data = answers
        .first()
        .and_then(|a| a.json.as_ref()?["data"].as_f64());
    assert_eq!(data, Some(42.5), "{answers:?}");
    ledger.acknowledged("hostile:last", 42.5);

    // The database holds exactly what valid requests wrote: the last value per key.
    let rows = app.db_values();
    for (key, value) in &rows {
        let candidates = ledger.0.get(key);
        assert!(
            candidates.is_some_and(|c| c.contains(&Some(*value))),
            "seed {seed}: the database holds {key:?} = {value}, which no valid request wrote last \
             (candidates {candidates:?})"
        );
    }
    for (key, candidates) in &ledger.0 {
        assert!(
            rows.contains_key(key) || candidates.contains(&None),
            "seed {seed}: {key:?} was acknowledged as {candidates:?} but is not in the database"
        );
    }

    // Memory: flat after warm-up, and small in absolute terms.
    let (warm, end) = (rss[0], rss[1]);
    assert!(end < 256 * 1024, "RSS {end} KiB at the end");
    assert!(
        end < warm + 64 * 1024,
        "RSS grew from {warm} KiB to {end} KiB"
    );

    // SIGTERM, as `docker stop` sends it: after all that, still a clean exit.
    front.signal("TERM");
    let status = front.exit_within(PATIENCE).await;
    assert!(status.success(), "{status}:\n{}", front.log());
}

// ---------------------------------------------------------------------------------------------
// Slow, idle and half-closed connections

#[tokio::test]
async fn slow_silent_and_idle_connections_are_closed_at_the_header_read_timeout() {
    let timeout = Duration::from_millis(500);
    let (app, mut front) = start_system(&[("HEADER_READ_TIMEOUT_MS", "500")]).await;
    let address = app.socket_address();
    let opened = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(slow_loris(address).await);
        clients.push(silent(address).await);
    }
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let answer = get_health(&mut stream).await;
        assert_eq!(answer, (200, serde_json::json!({"status": "ok"})));
        idle.push(tokio::spawn(await_close(stream)));
    }

    // Meanwhile, a normal client is served as usual.
    let mut stream = TcpStream::connect(address).await.unwrap();
    assert_eq!(get_health(&mut stream).await.0, 200);
    drop(stream);

    for client in clients.into_iter().chain(idle) {
        let (closed, received) = client.await.unwrap();
        assert!(
            received.is_empty(),
            "an answer to a request never finished: {}",
            show(&received)
        );
        assert!(closed - opened >= timeout, "closed before the timeout");
    }
    assert!(front.is_running());
}

#[tokio::test]
async fn at_the_connection_limit_a_new_client_waits_and_is_served_once_slow_ones_are_cut() {
    let timeout = Duration::from_millis(1000);
    let settings = [("HEADER_READ_TIMEOUT_MS", "1000"), ("MAX_CONNECTIONS", "4")];
    let (app, mut front) = start_system(&settings).await;
    let address = app.socket_address();
    let opened = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(slow_loris(address).await);
        slow.push(silent(address).await);
    }

    // Every slot is taken: the kernel completes the handshake, the server does not accept yet.
    let mut stream = TcpStream::connect(address).await.unwrap();
    let answer = get_health(&mut stream).await;
    let answered = Instant::now();

    assert_eq!(answer, (200, serde_json::json!({"status": "ok"})));
    // A slot frees only when the server cuts a slow client, at the header read timeout.
    assert!(
        answered - opened >= timeout,
        "answered after {:?}, while every slot was held",
        answered - opened
    );
    for client in slow {
        let (_, received) = client.await.unwrap();
        assert!(received.is_empty());
    }
    assert!(front.is_running());
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let (app, mut front) = start_system(&[("HEADER_READ_TIMEOUT_MS", "10000")]).await;
    let address = app.socket_address();
    let write = Req::new("POST", "/api")
        .header("Content-Type", "application/json")
        .sized(br#"{"half-closed": 7}"#);

    // `exchange` sends, shuts down its sending half, then reads.
    let answers = exchange(address, &write, None).await.unwrap();
    let read = Req::new("GET", "/api?key=half-closed").finish();
    let read_answers = exchange(address, &read, None).await.unwrap();
    // Half a head, then the half-close: the server must not wait for the rest.
    let started = Instant::now();
    let partial = exchange(address, b"GET /api?key=half-closed HTTP/1.1\r\nHo", None).await;

    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status, 200, "{answers:?}");
    assert_eq!(read_answers[0].json.as_ref().unwrap()["data"], 7.0);
    assert!(partial.unwrap().is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the header timeout"
    );
    assert!(front.is_running());
}

#[tokio::test]
async fn a_body_that_trickles_in_gets_408_at_the_body_read_timeout() {
    let timeout = Duration::from_millis(500);
    let (app, mut front) = start_system(&[("BODY_READ_TIMEOUT_MS", "500")]).await;
    let stream = TcpStream::connect(app.socket_address()).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let head = "POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"slow\": ";
    writer.write_all(head.as_bytes()).await.unwrap();
    // A byte every 100 ms: each chunk is prompt, the whole body never arrives.
    let trickle = tokio::spawn(async move {
        while writer.write_all(b" ").await.is_ok() && started.elapsed() < PATIENCE {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let (closed, received) = await_close(reader).await;
    trickle.abort();

    let answers = wire::parse_answers(&received, None).expect("an HTTP answer");
    let [answer] = answers.as_slice() else {
        panic!("one answer expected: {}", show(&received))
    };
    assert_eq!(answer.status, 408);
    let message = "The request body did not arrive within 500 ms";
    assert_eq!(
        answer.json,
        Some(serde_json::json!({"success": false, "message": message}))
    );
    assert!(
        closed - started >= timeout,
        "closed after {:?}",
        closed - started
    );
    assert!(front.is_running());
    assert!(app.db_values().is_empty());
}
