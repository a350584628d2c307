//! RabbitMQ restarted under load. A test binary of its own, because it takes the shared broker
//! away: Cargo runs test binaries one after another, and the broker lock (see
//! [`kv_e2e::app::lock_broker`]) keeps concurrent test runs on this machine out of its way too.

use kv_e2e::app::{Lock, Options, json, rabbitmqctl, spawn_app_with};
use kv_e2e::writers::{Writers, assert_none_slower_than, audit};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_millis(5000);
const ROUNDS: u32 = 3;

#[tokio::test]
async fn both_servers_heal_after_rabbitmq_restarts_and_no_acknowledged_write_is_lost() {
    let mut app = spawn_app_with(Options {
        broker: Lock::Exclusive,
        ..Options::no_servers()
    })
    .await;
    let back = app.start_back_process(&[]).await;
    back.wait_for_log("consuming").await;
    let deadline = DEADLINE.as_millis().to_string();
    let _front = app
        .start_front_process(&[("RPC_TIMEOUT_MS", &deadline)])
        .await;
    app.put("check", 1.0).await;
    let writers = Writers::start(&app.address, 4, 8, usize::MAX);
    writers.wait_for_acked(300).await;

    // Several rounds: how a link dies depends on what each server was doing at that moment.
    for round in 1..=ROUNDS {
        let broker = StoppedBroker::stop();
        let started = Instant::now();
        let (write_status, read_status) = (
            app.post_json(r#"{"check": 2}"#).await.status().as_u16(),
            app.get_key("check").await.status().as_u16(),
        );
        let answered_in = started.elapsed();
        let (ready, _) = json(app.get_raw("/ready").await).await;
        broker.start();
        let back_at = Instant::now();
        // Serving again means both: the front takes writes and the back answers reads.
        let healed_in = loop {
            let write = app
                .post_json(&format!(r#"{{"check": {round}}}"#))
                .await
                .status();
            let (read, body) = json(app.get_key("check").await).await;
            if write == 200 && read == 200 && body["data"] == f64::from(round) {
                break back_at.elapsed();
            }
            assert!(
                back_at.elapsed() < Duration::from_secs(20),
                "round {round}, not healed: {write} {read} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let at = writers.acked();
        writers.wait_for_acked(at + 300).await;

        assert_eq!(
            (write_status, read_status, ready),
            (503, 503, 503),
            "round {round}"
        );
        assert!(
            answered_in < Duration::from_secs(1),
            "round {round}: 503s took {answered_in:?}"
        );
        assert!(
            healed_in < Duration::from_secs(10),
            "round {round}: healed in {healed_in:?}"
        );
        eprintln!(
            "round {round}: 503 in {answered_in:?}, healed {healed_in:?} after the broker returned"
        );
    }
    let attempts = writers.stop().await;

    for attempt in attempts.iter().filter(|attempt| !attempt.acked()) {
        assert_eq!(attempt.outcome, Ok(503), "{attempt:?}");
    }
    assert_none_slower_than(&attempts, DEADLINE + Duration::from_secs(2));
    let acked = audit(&app, &attempts).await;
    eprintln!("{acked} writes acknowledged across {ROUNDS} restarts, all in SQLite");
}

/// RabbitMQ with its application stopped (the node stays up, as after `rabbitmqctl stop_app`).
/// Started again when dropped, even by a failing test: the broker is shared.
struct StoppedBroker {
    started: bool,
}

impl StoppedBroker {
    fn stop() -> Self {
        rabbitmqctl(&["stop_app"]);
        Self { started: false }
    }

    fn start(mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
        self.started = true;
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        if !self.started {
            let _ = std::process::Command::new("rabbitmqctl")
                .arg("start_app")
                .status();
        }
    }
}
